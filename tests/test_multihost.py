"""A real multi-process job here: 2 processes x 4 CPU devices, gloo collectives on 127.0.0.1."""

import signal
import subprocess
import time

import numpy as np
import pytest

from tests.cli import check, read_jsonl, restored_state, run_main, start_processes, wait_all

# Two data shards fix the global batches, so 1 process and 2 processes see the same data.
RUN = [
    '--config=configs/digits.py:resnet8',
    '--config.train.batch_size=16',
    '--config.train.eval_batch_size=16',
    '--config.dataset.num_shards=2',
    '--config.train.log_every_steps=2',
    '--config.train.eval_every_steps=4',
    '--config.train.checkpoint_every_steps=2',
]


def assert_close(a, b, rtol=1e-5, atol=1e-6):
  from orbax.checkpoint import tree

  flat_a, flat_b = tree.to_flat_dict(a), tree.to_flat_dict(b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_allclose(
        np.asarray(flat_a[key]), np.asarray(flat_b[key]), rtol=rtol, atol=atol, err_msg=str(key)
    )


@pytest.fixture(scope='module')
def runs(tmp_path_factory):
  root = tmp_path_factory.mktemp('multihost')
  data = f'--config.dataset.data_dir={root / "tfds"}'
  check(
      run_main(*RUN, data, f'--workdir={root / "single"}', '--config.train.num_steps=6', devices=8)
  )
  for result in wait_all(
      start_processes(*RUN, data, f'--workdir={root / "multi"}', '--config.train.num_steps=4')
  ):
    check(result)
  return root, data


@pytest.mark.slow
def test_two_processes_compute_what_one_process_computes(runs):
  root, _ = runs
  single, multi = restored_state(root / 'single', 4), restored_state(root / 'multi', 4)
  assert_close(single['params'], multi['params'])
  assert_close(single['batch_stats'], multi['batch_stats'])
  single_metrics = {r['step']: r for r in read_jsonl(root / 'single' / 'metrics.jsonl')}
  multi_metrics = read_jsonl(
      root / 'multi' / 'metrics.jsonl'
  )  # written by process 0 only: one record a step
  assert [r['step'] for r in multi_metrics] == [2, 4]
  for record in multi_metrics:
    for key in ('train_loss', 'train_error', 'eval_top1_error', 'eval_loss', 'eval_examples'):
      if key in record:
        assert record[key] == pytest.approx(single_metrics[record['step']][key], rel=1e-4), key
  assert multi_metrics[-1]['eval_examples'] == 359  # every test image once, over both processes


@pytest.mark.slow
def test_a_two_process_checkpoint_resumes_in_one_process(runs):
  root, data = runs
  check(
      run_main(*RUN, data, f'--workdir={root / "multi"}', '--config.train.num_steps=6', devices=8)
  )
  assert_close(
      restored_state(root / 'single', 6)['params'], restored_state(root / 'multi', 6)['params']
  )


@pytest.mark.slow
def test_when_one_process_dies_the_other_stops_with_a_clear_error(tmp_path, runs):
  _, data = runs
  processes = start_processes(
      *RUN,
      data,
      f'--workdir={tmp_path}',
      '--config.train.num_steps=100000',
      '--heartbeat_timeout=20',  # a dead peer is found by missing heartbeats on CPU (gloo)
  )
  survivor, victim = processes
  deadline = time.monotonic() + 300

  def has_checkpoint():
    folder = tmp_path / 'checkpoints'
    return folder.exists() and any(p.name.isdigit() for p in folder.iterdir())

  while not has_checkpoint():  # training is under way and a checkpoint is complete
    assert time.monotonic() < deadline and survivor.poll() is None, survivor.output()[1][-3000:]
    time.sleep(1)
  victim.send_signal(signal.SIGKILL)
  started = time.monotonic()
  try:
    _, stderr = survivor.communicate(timeout=120)
  except subprocess.TimeoutExpired:
    survivor.kill()
    pytest.fail('the surviving process hung after its peer died')
  assert survivor.returncode != 0
  assert (
      time.monotonic() - started < 120
  )  # the collective fails at once; heartbeats catch a silent hang
  # Three endings race, and which comes first is up to the libraries: usually a collective fails
  # and main prints its one line; when the runtime's error polling wins, JAX terminates the process
  # with its own message; when gloo's TCP transport sees the reset inside a collective, gloo throws
  # from its own thread and the C++ runtime aborts the process (SIGABRT) before Python can act.
  # What a user can rely on in every case is what follows: exit non-zero, in time, with the last
  # complete checkpoint intact (README, "When something goes wrong").
  endings = (
      'error: process 0 lost contact with the rest of the job',
      'Terminating process because the JAX distributed service detected fatal errors',
      "terminate called after throwing an instance of 'gloo::EnforceNotMet'",
  )
  assert any(ending in stderr for ending in endings), stderr[-3000:]
  # The last complete checkpoint is intact and restores.
  steps = sorted(int(p.name) for p in (tmp_path / 'checkpoints').iterdir() if p.name.isdigit())
  assert steps and restored_state(tmp_path, steps[-1])['step'] == steps[-1]
