"""Preemption, crashes, bad numbers and bad input, done for real to the CLI in subprocesses."""

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from resnet_jax.preemption import EXIT_STATUS
from tests.cli import REPO, assert_trees_equal, check, restored_state, run_main

RUN = [
    '--config=configs/digits.py:resnet8',
    '--config.train.batch_size=16',
    '--config.train.eval_batch_size=16',
    '--config.train.log_every_steps=2',
    '--config.train.eval_every_steps=1000',
]


@pytest.fixture(scope='module')
def data(tmp_path_factory):
  return f'--config.dataset.data_dir={tmp_path_factory.mktemp("tfds")}'


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory, data):
  """The reference: 30 steps in one go."""
  workdir = tmp_path_factory.mktemp('uninterrupted')
  check(
      run_main(
          *RUN,
          data,
          f'--workdir={workdir}',
          '--config.train.num_steps=30',
          '--config.train.checkpoint_every_steps=10',
          devices=1,
      )
  )
  return workdir


def start(workdir, data, *extra):
  env = {
      **os.environ,
      'XLA_FLAGS': '--xla_force_host_platform_device_count=1',
      'PYTHONPATH': str(REPO),
  }
  return subprocess.Popen(
      [sys.executable, '-m', 'resnet_jax.main', *RUN, data, f'--workdir={workdir}', *extra],
      cwd=REPO,
      env=env,
      stdout=subprocess.PIPE,
      stderr=subprocess.PIPE,
      text=True,
  )


def wait_for_training(workdir, process, timeout=300):
  deadline = time.monotonic() + timeout
  while not (workdir / 'metrics.jsonl').exists():
    assert process.poll() is None, process.communicate()[1][-3000:]
    assert time.monotonic() < deadline
    time.sleep(0.2)


def checkpoint_steps(workdir):
  return sorted(int(p.name) for p in (workdir / 'checkpoints').iterdir() if p.name.isdigit())


@pytest.mark.slow
def test_sigterm_saves_at_the_current_step_and_resume_ends_bit_for_bit_equal(
    tmp_path, data, uninterrupted
):
  process = start(
      tmp_path, data, '--config.train.num_steps=30', '--config.train.checkpoint_every_steps=10'
  )
  wait_for_training(tmp_path, process)
  process.send_signal(signal.SIGTERM)
  _, stderr = process.communicate(timeout=60)
  assert process.returncode == EXIT_STATUS
  message = stderr.strip().splitlines()[-1]
  assert (
      message.startswith('stopped by SIGTERM after step')
      and 'Run the same command to resume' in message
  )
  stopped_at = int(message.split('after step ')[1].split(';')[0])
  assert checkpoint_steps(tmp_path)[-1] == stopped_at < 30

  check(
      run_main(
          *RUN,
          data,
          f'--workdir={tmp_path}',
          '--config.train.num_steps=30',
          '--config.train.checkpoint_every_steps=10',
          devices=1,
      )
  )
  assert_trees_equal(restored_state(uninterrupted, 30), restored_state(tmp_path, 30))


@pytest.mark.slow
def test_kill_9_during_training_and_checkpoint_writes_resumes_from_a_complete_checkpoint(
    tmp_path, data, uninterrupted
):
  # A checkpoint every step, written in the background: the kill lands in or near a write.
  process = start(
      tmp_path, data, '--config.train.num_steps=30', '--config.train.checkpoint_every_steps=1'
  )
  wait_for_training(tmp_path, process)
  time.sleep(0.5)
  process.kill()
  process.communicate()
  steps = checkpoint_steps(tmp_path)
  assert steps and steps[-1] < 30
  # A half-written checkpoint beyond the last complete one must be ignored, and must not replace it.
  partial = tmp_path / 'checkpoints' / f'{steps[-1] + 1}.orbax-checkpoint-tmp'
  shutil.copytree(tmp_path / 'checkpoints' / str(steps[-1]), partial, dirs_exist_ok=True)
  shutil.rmtree(partial / 'state')

  check(
      run_main(
          *RUN,
          data,
          f'--workdir={tmp_path}',
          '--config.train.num_steps=30',
          '--config.train.checkpoint_every_steps=1',
          devices=1,
      )
  )
  assert_trees_equal(restored_state(uninterrupted, 30), restored_state(tmp_path, 30))


@pytest.mark.slow
def test_a_diverging_learning_rate_stops_clearly_and_keeps_the_last_good_checkpoint(tmp_path, data):
  result = run_main(
      *RUN,
      data,
      f'--workdir={tmp_path}',
      '--config.train.num_steps=200',
      '--config.schedule.base_lr=50',
      '--config.train.checkpoint_every_steps=2',
      devices=1,
  )
  assert result.returncode == 2
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith('error: the loss or gradients became non-finite at step')
  assert 'learning rate 50' in message
  last = checkpoint_steps(tmp_path)[-1]
  assert f'last good checkpoint is step {last}' in message
  state = restored_state(tmp_path, last)
  assert int(state['skipped_steps']) == 0
  import numpy as np

  assert all(np.isfinite(leaf).all() for leaf in __import__('jax').tree.leaves(state['params']))


def _truncate_a_checkpoint(workdir):
  data_files = [
      p
      for p in (workdir / 'checkpoints' / '2' / 'state').rglob('*')
      if p.is_file() and 'd' == p.parent.name
  ]
  for path in data_files:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


def _foreign_checkpoint(workdir):
  (workdir / 'checkpoints' / '2').mkdir(parents=True)
  (workdir / 'checkpoints' / '2' / 'model.pt').write_bytes(b'\x80\x04not an orbax checkpoint')


@pytest.mark.slow
@pytest.mark.parametrize(
    'args,prepare,message',
    [
        (
            ['--config=configs/cifar10.py:resnet57'],
            None,
            "unknown model 'resnet57' (depth 57 is neither 6n+2",
        ),
        (['--config=configs/cifar10.py:densenet121'], None, "unknown model 'densenet121'"),
        (['--config.dataset.name=cifar11'], None, 'cifar11'),
        (['--config.train.batch_size=abc'], None, 'batch_size=abc'),
        (['--config.schedule.base_lr=-0.1'], None, 'base_lr=-0.1 must not be negative'),
        (
            ['--config.train.batch_size=12'],
            None,
            'train.batch_size=12 does not divide over the 8 devices',
        ),
        (['--config.parallelism.mode=pjit'], None, "parallelism.mode='pjit' is not one of"),
        (
            ['--config.dataset.name=cifar10', '--config.dataset.data_dir={tmp}/empty'],
            None,
            "dataset 'cifar10' is not prepared",
        ),
        (
            ['--workdir=/proc/resnet_jax_run'],
            None,
            'cannot write to --workdir /proc/resnet_jax_run',
        ),
        ([], _truncate_a_checkpoint, 'checkpoint'),
        ([], _foreign_checkpoint, 'cannot be read'),
    ],
)
def test_bad_input_is_one_clear_line_and_loses_nothing(tmp_path, data, args, prepare, message):
  workdir = tmp_path / 'run'
  if prepare is not None:  # a workdir with a good checkpoint at step 2, then damaged
    if prepare is _truncate_a_checkpoint:
      check(run_main(*RUN, data, f'--workdir={workdir}', '--config.train.num_steps=2', devices=1))
    prepare(workdir)
  before = sorted(p.name for p in (workdir / 'checkpoints').iterdir()) if prepare else None
  command = [*RUN, data, f'--workdir={workdir}', '--config.train.num_steps=4'] + [
      a.format(tmp=tmp_path) for a in args
  ]
  if args and args[0].startswith('--config='):
    command = [args[0], *command[1:]]
  result = run_main(*command, timeout=120)
  assert result.returncode == 2, result.stderr[-2000:]
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith('error: ') and message in last_line, last_line
  if prepare is not None:
    assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == before


@pytest.mark.parametrize(
    'config,override,message',
    [
        ('configs/no_such_config.py', None, 'config file configs/no_such_config.py does not exist'),
        ('{tmp}/broken.py', None, 'broken.py line 1: invalid syntax'),
        ('{tmp}/typo.py', None, "no field 'batch_sise' (did you mean 'batch_size'?)"),
        (
            'configs/digits.py',
            '--config.train.num_step=20',
            "no field 'num_step' (did you mean 'num_steps'?)",
        ),
        (
            'configs/digits.py',
            '--config.trian.num_steps=20',
            "no field 'trian' (did you mean 'train'?)",
        ),
        (
            'configs/digits.py',
            '--config.schedule.boundaries=abc',
            "schedule.boundaries=('abc',) must be numbers",
        ),
    ],
)
def test_a_config_that_cannot_be_built_is_one_line_exit_2(tmp_path, config, override, message):
  (tmp_path / 'broken.py').write_text('def get_config(:\n  pass\n')
  # A field set inside a config file that the base config does not have: refused, not kept.
  (tmp_path / 'typo.py').write_text(
      'from configs import digits\n\n\ndef get_config():\n  config = digits.get_config()\n'
      '  config.train.batch_sise = 3\n  return config\n'
  )
  result = run_main(
      f'--config={config.format(tmp=tmp_path)}',
      f'--workdir={tmp_path / "run"}',
      *([override] if override else []),
      timeout=120,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith('error: ') and message in last_line, last_line
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()
