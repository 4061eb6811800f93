"""`python -m resnet_jax.main` end to end, through the real CLI in subprocesses.

Elsewhere through the CLI: exact eval over 8 devices (test_console.py), fine-tuning
(test_interop.py), refused resumes of another model or config and bit-exact resumes
(test_reliability.py).
"""

import json

import pytest

from tests.cli import check, read_jsonl, run_main

# A small net and few steps: the behaviour under test does not depend on size.
SMALL = [
    '--config.model.name=resnet8',
    '--config.train.batch_size=16',
    '--config.train.eval_batch_size=16',
]


@pytest.fixture(scope='module')
def digits_data(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


@pytest.mark.slow
def test_cifar10_on_mock_data_over_8_devices_writes_checkpoints_events_and_metrics(tmp_path):
  check(
      run_main(
          '--config=configs/cifar10.py:resnet20',
          f'--workdir={tmp_path}',
          *SMALL,
          '--config.train.num_steps=4',
          '--config.train.log_every_steps=2',
          '--config.train.eval_every_steps=2',
          '--config.train.checkpoint_every_steps=2',
          mock_examples=40,
      )
  )
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()) == [
      '2',
      '4',
  ]
  assert list(tmp_path.glob('events.out.tfevents.*'))
  records = read_jsonl(tmp_path / 'metrics.jsonl')
  assert [r['step'] for r in records] == [2, 4]
  assert {
      'train_loss',
      'train_error',
      'train_learning_rate',
      'images_per_second',
      'eval_loss',
      'eval_top1_error',
      'eval_top5_error',
  } <= records[-1].keys()
  assert json.loads((tmp_path / 'config.json').read_text())['model']['name'] == 'resnet8'

  result = check(
      run_main(
          '--config=configs/cifar10.py:resnet20',
          f'--workdir={tmp_path}',
          *SMALL,
          '--mode=eval',
          mock_examples=40,
      )
  )
  metrics = json.loads(result.stdout.strip().splitlines()[-1])
  assert metrics['step'] == 4 and metrics['eval_examples'] == 40
  assert metrics['eval_top1_error'] == pytest.approx(records[-1]['eval_top1_error'])


@pytest.mark.slow
def test_imagenet_on_mock_data_over_8_devices(tmp_path):
  check(
      run_main(
          '--config=configs/imagenet.py:resnet18',
          f'--workdir={tmp_path}',
          *SMALL,
          '--config.model.name=resnet18',
          '--config.dataset.image_size=32',  # the ImageNet stem and pipeline; size does not matter
          '--config.train.num_steps=2',
          '--config.train.num_epochs=0',
          '--config.train.log_every_steps=1',
          '--config.train.eval_every_steps=2',
          '--config.train.checkpoint_every_steps=2',
          mock_examples=24,
      )
  )
  records = read_jsonl(tmp_path / 'metrics.jsonl')
  assert records[-1]['step'] == 2 and records[-1]['eval_examples'] == 24
  assert (tmp_path / 'checkpoints' / '2').is_dir()


@pytest.mark.slow
def test_resnet20_learns_real_digits(tmp_path, digits_data):
  """The offline default on real images, shortened to fit CI (150 of its 1,500 steps, the same
  schedule's shape): over 95% test accuracy (97.8% on the Zen 3; chance is 10%)."""
  check(
      run_main(
          '--config=configs/digits.py:resnet20',
          f'--workdir={tmp_path}',
          f'--config.dataset.data_dir={digits_data}',
          '--config.train.num_steps=150',
          '--config.schedule.boundaries=(90,125)',
          devices=1,
      )
  )
  final = read_jsonl(tmp_path / 'metrics.jsonl')[-1]
  assert final['step'] == 150 and final['eval_examples'] == 359
  assert final['eval_top1_error'] < 0.05
