"""`python -m experiments.plot`: one run's curves from its metrics.jsonl."""

import json

from PIL import Image

from experiments import plot
from resnet_jax.workdir import curves


def test_curves_from_a_synthetic_run(tmp_path):
  records = [
      {
          'step': step,
          'train_loss': 2.3 / step**0.5,
          'train_error': 0.9 / step**0.5,
          'train_learning_rate': 0.1 if step <= 60 else 0.01,
      }
      for step in range(10, 101, 10)
  ]
  for record in records[4::5]:  # evaluated at steps 50 and 100
    record.update(eval_loss=record['train_loss'] * 1.1, eval_top1_error=0.2)
  (tmp_path / 'metrics.jsonl').write_text(''.join(json.dumps(r) + '\n' for r in records))
  path = curves.plot_run(tmp_path)
  assert path == tmp_path / 'curves.png'
  assert path.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
  with Image.open(path) as image:
    width, height = image.size
  assert 1000 <= width <= 2500 and 300 <= height <= 800


def test_a_workdir_without_metrics_is_one_line(tmp_path, capsys):
  assert plot.main(['--workdir', str(tmp_path)]) == 2
  assert capsys.readouterr().err.startswith('error: ')
  assert not (tmp_path / 'curves.png').exists()
