"""The package without TensorFlow: only the TFDS data source imports it
(resnet_jax/data/tfds_source.py).

A GPU machine may have JAX, flax, optax, orbax and PyTorch but no TensorFlow, tensorflow-datasets
(or CLU, whose writers import TensorFlow). There, a run on synthetic data must train, evaluate,
checkpoint and write metrics.jsonl. Run in a subprocess whose imports of TensorFlow fail.
"""

import json
import os
import pathlib
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]

# As if neither were installed: `import tensorflow` raises ModuleNotFoundError and
# importlib.util.find_spec('tensorflow') is None (etils and others look before they import).
BLOCK_TENSORFLOW = """
import sys
sys.modules.update(tensorflow=None, tensorflow_datasets=None)
"""

RUN = """
from absl import app
from resnet_jax.workdir import checkpoints as checkpointing  # noqa
from resnet_jax import main, models  # noqa
from resnet_jax.training import parallel, loop as train, step as train_step  # noqa

sys.argv = ['main', '--config=configs/synthetic.py:resnet8', '--workdir=' + sys.argv[1],
            '--config.dataset.image_size=8', '--config.dataset.num_eval_examples=40',
            '--config.train.batch_size=16', '--config.train.eval_batch_size=16',
            '--config.train.num_steps=4', '--config.train.log_every_steps=2',
            '--config.train.eval_every_steps=2', '--config.train.checkpoint_every_steps=2']
try:
  app.run(main.main, flags_parser=main.parse_flags)
except SystemExit as e:
  assert not e.code, e.code
loaded = sorted(m for m, module in sys.modules.items() if module and m.startswith('tensorflow'))
assert not loaded, loaded
print('trained without TensorFlow')
"""


def run_without_tensorflow(code: str, *args: str) -> subprocess.CompletedProcess:
  return subprocess.run(
      [sys.executable, '-c', BLOCK_TENSORFLOW + code, *args],
      cwd=ROOT,
      env=dict(
          os.environ,
          PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get('PYTHONPATH')])),
      ),
      capture_output=True,
      text=True,
      timeout=300,
  )


def test_the_blocker_blocks():
  result = run_without_tensorflow('import tensorflow')
  assert result.returncode != 0 and 'ModuleNotFoundError' in result.stderr


@pytest.mark.slow
def test_synthetic_run_trains_evaluates_and_checkpoints_without_tensorflow(tmp_path):
  result = run_without_tensorflow(RUN, str(tmp_path))
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'trained without TensorFlow' in result.stdout
  assert 'TensorBoard summaries are off' in result.stderr
  records = [json.loads(line) for line in (tmp_path / 'metrics.jsonl').read_text().splitlines()]
  assert [r['step'] for r in records if 'eval_top1_error' in r] == [2, 4]
  assert records[-1]['eval_examples'] == 40
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir()) == ['2', '4']
