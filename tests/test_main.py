"""`python -m resnet_jax.main` end to end, through the real CLI in subprocesses."""

import json

import pytest

from tests.cli import assert_trees_equal, check, read_jsonl, restored_state, run_main

# A small net and few steps: the behaviour under test does not depend on size.
SMALL = [
    '--config.model.name=resnet8',
    '--config.train.batch_size=16',
    '--config.train.eval_batch_size=16',
]


@pytest.fixture(scope='module')
def digits_data(tmp_path_factory):
  return str(tmp_path_factory.mktemp('tfds'))


def digits_run(workdir, data_dir, *extra, devices=8):
  return run_main(
      '--config=configs/digits.py:resnet20',
      f'--workdir={workdir}',
      *SMALL,
      f'--config.dataset.data_dir={data_dir}',
      '--config.train.log_every_steps=2',
      '--config.train.eval_every_steps=100',
      '--config.train.checkpoint_every_steps=3',
      *extra,
      devices=devices,
  )


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
          '--config.dataset.image_size=64',
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
def test_exact_eval_over_8_devices_and_a_checkpoint_of_another_model_is_refused(
    tmp_path, digits_data
):
  # (Stopping and resuming bit for bit: tests/test_reliability.py.)
  check(digits_run(tmp_path, digits_data, '--config.train.num_steps=3'))
  # Eval over a split (359 images) that is no multiple of the batch (16) or devices (8): each once.
  assert read_jsonl(tmp_path / 'metrics.jsonl')[-1]['eval_examples'] == 359

  # A checkpoint of another model in the workdir: one clear line, nothing overwritten.
  result = digits_run(
      tmp_path, digits_data, '--config.train.num_steps=9', '--config.model.name=resnet14'
  )
  assert result.returncode == 2
  last = result.stderr.strip().splitlines()[-1]
  assert last.startswith('error: checkpoint') and 'resnet8' in last and 'resnet14' in last
  assert sorted(p.name for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit()) == ['3']


@pytest.mark.slow
def test_fine_tuning_keeps_the_body_and_reinitialises_a_head_of_another_size(tmp_path):
  source, target = tmp_path / 'source', tmp_path / 'target'
  common = [
      '--config=configs/cifar10.py:resnet8',
      *SMALL,
      '--config.train.checkpoint_every_steps=1',
  ]
  check(
      run_main(
          *common, f'--workdir={source}', '--config.train.num_steps=2', mock_examples=32, devices=1
      )
  )
  # lr 0: after one step the body must still be exactly the source's; only BN statistics move.
  check(
      run_main(
          *common,
          f'--workdir={target}',
          '--config.dataset.name=cifar100',
          f'--config.init_from={source}',
          '--config.schedule.base_lr=0',
          '--config.train.num_steps=1',
          mock_examples=32,
          devices=1,
      )
  )
  before, after = restored_state(source, 2)['params'], restored_state(target, 1)['params']
  assert after['head']['kernel'].shape == (64, 100) and before['head']['kernel'].shape == (64, 10)
  del before['head'], after['head']
  assert_trees_equal(before, after)


@pytest.mark.slow
def test_resnet20_learns_real_digits(tmp_path, digits_data):
  """The offline default on real images, shortened to fit CI: over 95% test accuracy."""
  check(
      run_main(
          '--config=configs/digits.py:resnet20',
          f'--workdir={tmp_path}',
          f'--config.dataset.data_dir={digits_data}',
          '--config.train.num_steps=400',
          '--config.schedule.boundaries=(250,350)',
          devices=1,
      )
  )
  final = read_jsonl(tmp_path / 'metrics.jsonl')[-1]
  assert final['step'] == 400 and final['eval_examples'] == 359
  assert final['eval_top1_error'] < 0.05
