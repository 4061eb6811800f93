"""Preemption, crashes, bad numbers and bad input, done for real to the CLI in subprocesses."""

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from resnet_jax.training.preemption import EXIT_STATUS
from tests.cli import (
    REPO,
    ServedProcess,
    assert_trees_equal,
    check,
    read_jsonl,
    restored_state,
    run_main,
    run_mains,
)

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
  return ServedProcess([*RUN, data, f'--workdir={workdir}', *extra], devices=1)


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
  # A first run that crashed before any checkpoint left another config and a torn history line:
  # neither holds the workdir.
  crashed = json.loads((uninterrupted / 'config.json').read_text())
  crashed['train']['batch_size'] = 64
  (tmp_path / 'config.json').write_text(json.dumps(crashed))
  (tmp_path / 'history.jsonl').write_text('{"time": "2026-12-01T21:00:00+00:00", "comm')
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
  for name in ('metrics.jsonl', 'history.jsonl'):  # what a kill during an append leaves
    with (tmp_path / name).open('a') as f:
      f.write('\n{"step": 99, "train_lo')
  # The dead run's lock file still names it; its flock died with it, so the resume takes over.
  assert json.loads((tmp_path / 'lock.json').read_text())['pid'] == process.pid
  # A half-written checkpoint beyond the last complete one must be ignored, and must not replace it.
  partial = tmp_path / 'checkpoints' / f'{steps[-1] + 1}.orbax-checkpoint-tmp'
  shutil.copytree(tmp_path / 'checkpoints' / str(steps[-1]), partial, dirs_exist_ok=True)
  shutil.rmtree(partial / 'state')

  result = check(
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
  # The steps logged after the restored checkpoint were trained again: each logged once.
  assert [r['step'] for r in read_jsonl(tmp_path / 'metrics.jsonl')] == list(range(2, 31, 2))
  # The torn lines were dropped, and said so; one history line per invocation.
  for name in ('metrics.jsonl', 'history.jsonl'):  # 1, or 2 had the kill torn one too
    assert re.search(f'{name}: dropped [12] torn line', result.stdout), result.stdout
  history = read_jsonl(tmp_path / 'history.jsonl')
  assert len(history) == 2 and 'train.batch_size 64 -> 16' in history[0]['changes']
  assert json.loads((tmp_path / 'config.json').read_text())['train']['batch_size'] == 16


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
      for p in (workdir / 'checkpoints' / '30' / 'state').rglob('*')
      if p.is_file() and 'd' == p.parent.name
  ]
  for path in data_files:
    path.write_bytes(path.read_bytes()[: len(path.read_bytes()) // 3])


def _foreign_checkpoint(workdir):
  (workdir / 'checkpoints' / '2').mkdir(parents=True)
  (workdir / 'checkpoints' / '2' / 'model.pt').write_bytes(b'\x80\x04not an orbax checkpoint')


# Bad input (flags, data, workdirs, damaged checkpoints) for a short run: (args, prepare, message).
BAD_INPUT = [
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
    (['--workdir='], None, '--workdir is empty'),
    (['--config.init_from={tmp}/typo'], None, 'init_from={tmp}/typo does not exist'),
    (['--mode=eval', '--workdir={tmp}/typo'], None, "{tmp}/typo is not a run's workdir"),
    ([], _truncate_a_checkpoint, 'checkpoint'),
    ([], _foreign_checkpoint, 'cannot be read'),
    (
        ['--config.init_from={tmp}/run', '--workdir={tmp}/fresh'],
        _foreign_checkpoint,
        'checkpoint {tmp}/run/checkpoints/2 cannot be read',
    ),
]

# Configs that cannot be built: (config, override, message).
BAD_CONFIGS = [
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
]


@pytest.fixture(scope='module')
def refused(tmp_path_factory, data, uninterrupted):
  """Every case of BAD_INPUT and BAD_CONFIGS through the CLI, from one process that imported what
  main imports once (tests/cli.py, run_mains): {'input'|'config': [(tmp, before, result)]}, `before`
  the checkpoints of a prepared workdir."""
  cases, prepared = [], []
  for i, (args, prepare, _) in enumerate(BAD_INPUT):
    tmp = tmp_path_factory.mktemp(f'input{i}')
    workdir = tmp / 'run'
    if prepare is not None:  # a workdir with checkpoints, then damaged
      if prepare is _truncate_a_checkpoint:
        shutil.copytree(uninterrupted, workdir)
      prepare(workdir)
    prepared.append(
        (tmp, sorted(p.name for p in (workdir / 'checkpoints').iterdir()) if prepare else None)
    )
    command = [*RUN, data, f'--workdir={workdir}', '--config.train.num_steps=4'] + [
        a.format(tmp=tmp) for a in args
    ]
    if args and args[0].startswith('--config='):
      command = [args[0], *command[1:]]
    cases.append(command)
  for i, (config, override, _) in enumerate(BAD_CONFIGS):
    tmp = tmp_path_factory.mktemp(f'config{i}')
    (tmp / 'broken.py').write_text('def get_config(:\n  pass\n')
    # A field set inside a config file that the base config does not have: refused, not kept.
    (tmp / 'typo.py').write_text(
        'from configs import digits\n\n\ndef get_config():\n  config = digits.get_config()\n'
        '  config.train.batch_sise = 3\n  return config\n'
    )
    prepared.append((tmp, None))
    cases.append([
        f'--config={config.format(tmp=tmp)}',
        f'--workdir={tmp / "run"}',
        *([override] if override else []),
    ])
  results = [(*p, r) for p, r in zip(prepared, run_mains(cases))]
  return {'input': results[: len(BAD_INPUT)], 'config': results[len(BAD_INPUT) :]}


@pytest.mark.slow
@pytest.mark.parametrize('index', range(len(BAD_INPUT)), ids=[m for _, _, m in BAD_INPUT])
def test_bad_input_is_one_clear_line_and_loses_nothing(refused, index):
  _, prepare, message = BAD_INPUT[index]
  tmp_path, before, result = refused['input'][index]
  workdir = tmp_path / 'run'
  assert result.returncode == 2, result.stderr[-2000:]
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith('error: ') and message.format(tmp=tmp_path) in last_line, last_line
  assert not (tmp_path / 'typo').exists()
  if prepare is not None:
    assert sorted(p.name for p in (workdir / 'checkpoints').iterdir()) == before
  else:  # nothing is created: no workdir, no empty dataset folders
    assert not workdir.exists() and not (tmp_path / 'empty').exists()
  assert not (tmp_path / 'fresh').exists()


@pytest.mark.parametrize('index', range(len(BAD_CONFIGS)), ids=[m for _, _, m in BAD_CONFIGS])
def test_a_config_that_cannot_be_built_is_one_line_exit_2(refused, index):
  message = BAD_CONFIGS[index][2]
  tmp_path, _, result = refused['config'][index]
  assert result.returncode == 2, result.stderr[-2000:]
  last_line = result.stderr.strip().splitlines()[-1]
  assert last_line.startswith('error: ') and message in last_line, last_line
  assert 'Traceback' not in result.stderr
  assert not (tmp_path / 'run').exists()


def snapshot(workdir) -> dict[str, bytes]:
  """Every file of a workdir's record (the lock file says only who holds it now)."""
  return {
      str(p.relative_to(workdir)): p.read_bytes()
      for p in sorted(workdir.rglob('*'))
      if p.is_file() and p.name != 'lock.json'
  }


@pytest.mark.slow
def test_a_second_run_on_a_busy_workdir_is_refused_and_the_first_goes_on(tmp_path, data):
  first = start(tmp_path, data, '--config.train.num_steps=100000')
  wait_for_training(tmp_path, first)
  second = run_main(*RUN, data, f'--workdir={tmp_path}', '--config.seed=1', devices=1, timeout=120)
  assert second.returncode == 2, second.stderr[-2000:]
  message = second.stderr.strip().splitlines()[-1]
  assert message.startswith(f'error: --workdir {tmp_path} is being written by the run of pid')
  assert f'pid {first.pid} on host' in message
  assert json.loads((tmp_path / 'config.json').read_text())['seed'] == 0
  assert len(read_jsonl(tmp_path / 'history.jsonl')) == 1
  assert first.poll() is None  # untouched, still training
  first.send_signal(signal.SIGTERM)
  first.communicate(timeout=60)
  assert first.returncode == EXIT_STATUS
  restored_state(tmp_path, checkpoint_steps(tmp_path)[-1])  # its last checkpoint is whole


@pytest.fixture
def finished_copy(tmp_path, uninterrupted):
  """A copy of the 30-step run, to resume."""
  workdir = tmp_path / 'run'
  shutil.copytree(uninterrupted, workdir)
  return workdir


@pytest.mark.slow
def test_a_resume_that_changes_what_is_trained_is_refused_and_writes_nothing(finished_copy, data):
  before = snapshot(finished_copy)
  changes = [
      '--config.train.batch_size=32',
      '--config.model.name=resnet14',
      '--config.model.shortcut=none',
      '--config.seed=1',
  ]
  result = run_main(
      *RUN, data, f'--workdir={finished_copy}', '--config.train.num_steps=40', *changes, devices=1
  )
  assert result.returncode == 2, result.stderr[-2000:]
  message = result.stderr.strip().splitlines()[-1]
  assert message.startswith(f'error: checkpoint {finished_copy}/checkpoints/30 was trained by')
  listed = [
      'model.name "resnet8" -> "resnet14"',
      'model.shortcut "" -> "none"',
      'seed 0 -> 1',
      'train.batch_size 16 -> 32',
  ]
  assert '; '.join(listed) in message  # each field, old -> new; the flag that accepts them
  assert message.endswith('--accept_changes=model.name,model.shortcut,seed,train.batch_size')
  assert snapshot(finished_copy) == before


@pytest.mark.slow
def test_a_resume_with_more_steps_continues_and_records_the_invocation(finished_copy, data):
  first_config = (finished_copy / 'config.json').read_text()
  check(
      run_main(
          *RUN,
          data,
          f'--workdir={finished_copy}',
          '--config.train.num_steps=34',
          '--config.train.checkpoint_every_steps=10',
          devices=1,
      )
  )
  assert checkpoint_steps(finished_copy)[-1] == 34
  assert (finished_copy / 'config.json').read_text() == first_config  # the first run's, kept
  history = read_jsonl(finished_copy / 'history.jsonl')
  assert [h['from_step'] for h in history] == [0, 30]
  assert history[1]['changes'] == ['train.num_steps 30 -> 34']
  assert [r['step'] for r in read_jsonl(finished_copy / 'metrics.jsonl')] == list(range(2, 35, 2))


def _in_private_tmpfs(script: str, *, timeout: int) -> subprocess.CompletedProcess:
  """`script` run by sh in a private mount namespace, where it may mount a small tmpfs (exit 77
  when it cannot); the test is skipped where that is not permitted."""
  result = subprocess.run(
      ['unshare', '--mount', '--map-root-user', 'sh', '-c', script],
      cwd=REPO,
      env={**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1'},
      capture_output=True,
      text=True,
      timeout=timeout,
  )
  if result.returncode == 77 or 'unshare' in result.stderr.split(':')[0]:
    pytest.skip(f'cannot mount a private tmpfs here: {result.stderr.strip()[:200]}')
  return result


@pytest.mark.slow
def test_a_full_disk_stops_the_run_at_the_failed_save_and_keeps_the_last_good_one(tmp_path, data):
  """A 1.8 MB tmpfs, private to the run's mount namespace: room for two checkpoints of resnet8."""
  mount, kept = tmp_path / 'disk', tmp_path / 'kept'
  mount.mkdir()
  main = ' '.join([
      sys.executable,
      '-m',
      'resnet_jax.main',
      *RUN,
      data,
      f'--workdir={mount}/run',
      '--config.train.num_steps=30',
      '--config.train.checkpoint_every_steps=2',
  ])
  script = (
      f'mount -t tmpfs -o size=1800k tmpfs {mount} || exit 77; {main}; status=$?;'
      f' cp -r {mount}/run {kept}; exit $status'
  )
  result = _in_private_tmpfs(script, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  message = result.stderr.strip().splitlines()[-1]
  last_good = checkpoint_steps(kept)[-1]
  assert message.startswith('error: saving checkpoint') and 'No space left on device' in message
  assert f'the last good checkpoint is step {last_good}' in message
  assert 'Traceback' not in result.stderr
  assert int(restored_state(kept, last_good)['step']) == last_good


def _fill_history_page(workdir, page=4096):
  """Pads history.jsonl with a valid line to just under a page: on a full tmpfs the next entry
  then needs a page that is not there (an entry that fits the page's slack would just be written).
  """
  path = workdir / 'history.jsonl'
  size = len(path.read_bytes())
  pad = (page - 10 - size - len('{"pad": ""}\n')) % page
  with path.open('a') as f:
    f.write(json.dumps({'pad': 'x' * pad}) + '\n')


@pytest.mark.slow
def test_a_full_disk_outside_checkpoint_saves_is_one_line_and_loses_nothing(
    tmp_path, data, uninterrupted
):
  """The 30-step run on a private tmpfs: resumed on a full disk (its history.jsonl cannot grow),
  resumed again and the disk filled while it logs (metrics.jsonl and TensorBoard's events; no
  checkpoint is due), then resumed with the space freed."""
  mount, kept, workdir = tmp_path / 'disk', tmp_path / 'kept', tmp_path / 'run'
  mount.mkdir()
  kept.mkdir()
  shutil.copytree(uninterrupted, workdir)
  _fill_history_page(workdir)
  before = snapshot(workdir)
  main = [sys.executable, '-m', 'resnet_jax.main', *RUN, data, f'--workdir={mount}/run']
  resume = ' '.join([*main, '--config.train.num_steps=34'])
  logging = ' '.join([*main, '--config.train.num_steps=5000', '--config.train.log_every_steps=1'])
  fill = f'dd if=/dev/zero of={mount}/filler bs=64k 2>/dev/null'
  script = f"""
mount -t tmpfs -o size=8m tmpfs {mount} || exit 77
cp -r {workdir} {mount}/run
{fill}; {resume} 2> {kept}/history.err; echo $? > {kept}/history.status
cp -r {mount}/run {kept}/history; rm {mount}/filler
{logging} 2> {kept}/metrics.err & pid=$!
while [ $(grep -c . {mount}/run/metrics.jsonl) -lt 17 ] && kill -0 $pid; do sleep 0.05; done
{fill}; wait $pid; echo $? > {kept}/metrics.status
cp -r {mount}/run {kept}/metrics; rm {mount}/filler
{resume} 2> {kept}/resumed.err; echo $? > {kept}/resumed.status
cp -r {mount}/run {kept}/resumed
"""
  _in_private_tmpfs(script, timeout=400)  # its phases write their statuses into kept
  for phase, what in (('history', 'the record'), ('metrics', 'metrics')):
    stderr = (kept / f'{phase}.err').read_text()
    assert (kept / f'{phase}.status').read_text().strip() == '2', stderr[-3000:]
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f'error: writing {what}'), lines
    assert 'No space left on device' in lines[0] and 'last good checkpoint is step 30' in lines[0]
    after = snapshot(kept / phase)
    for name, content in before.items():  # checkpoints, config and metrics as they were
      if name != 'history.jsonl' and name != 'metrics.jsonl' and 'events' not in name:
        assert after[name] == content, name
    assert after['history.jsonl'].startswith(before['history.jsonl'])
    assert after['metrics.jsonl'].startswith(before['metrics.jsonl'])
  assert (kept / 'resumed.status').read_text().strip() == '0', (kept / 'resumed.err').read_text()
  steps = [r['step'] for r in read_jsonl(kept / 'resumed' / 'metrics.jsonl')]
  assert steps == list(range(2, 31, 2)) + [32, 34]  # the failed runs' rows past step 30 dropped
  history = [h for h in read_jsonl(kept / 'resumed' / 'history.jsonl') if 'pad' not in h]
  assert [h['from_step'] for h in history] == [0, 30, 30]  # the refused start recorded nothing
  assert int(restored_state(kept / 'resumed', 34)['step']) == 34
