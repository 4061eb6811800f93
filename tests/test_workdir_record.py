"""The workdir lock and the run record, in-process (their CLI behaviour: test_reliability)."""

import json
import time

import jax
import numpy as np
import pytest

from configs import digits
from resnet_jax.config import resolve as run_lib
from resnet_jax.workdir import checkpoints as checkpointing
from resnet_jax.workdir import lock as workdir_lock
from resnet_jax.workdir import metrics as metric_logging
from resnet_jax.workdir import record as run_record
from resnet_jax.workdir.lock import WorkdirBusyError, WorkdirLock


def test_a_second_lock_on_a_posix_workdir_is_refused_until_the_first_is_released(tmp_path):
  first = WorkdirLock.acquire(tmp_path)
  with pytest.raises(WorkdirBusyError, match=f"pid {first.record['pid']} on host"):
    WorkdirLock.acquire(tmp_path)
  first.check()  # still ours
  first.release()
  with WorkdirLock.acquire(tmp_path) as second:
    assert json.loads((tmp_path / 'lock.json').read_text())['run_id'] == second.record['run_id']


def test_a_run_whose_lock_file_was_replaced_stops_before_saving(tmp_path):
  with WorkdirLock.acquire(tmp_path) as lock:
    (tmp_path / 'lock.json').unlink()  # e.g. the workdir removed and a new run started in it
    (tmp_path / 'lock.json').write_text(json.dumps({'run_id': 'other', 'pid': 7, 'host': 'h'}))
    with pytest.raises(WorkdirBusyError, match='taken over by the run of pid 7 on host h'):
      lock.check()


def test_object_store_claims_refuse_a_live_holder_and_take_over_a_stale_one(tmp_path, monkeypatch):
  monkeypatch.setattr(workdir_lock, '_object_store', lambda path: True)
  monkeypatch.setattr(time, 'sleep', lambda seconds: None)
  first = WorkdirLock.acquire(tmp_path)
  assert first._fd is None and first._heartbeat is not None  # the claim protocol, not flock
  with pytest.raises(WorkdirBusyError, match='being written by'):
    WorkdirLock.acquire(tmp_path)
  # The holder died without releasing: its heartbeat stops, and after STALE_AFTER_SECONDS the
  # workdir can be claimed; the dead run, were it alive after all, would stop at its next save.
  first._stop.set()
  stale = {**first.read(), 'heartbeat': time.time() - workdir_lock.STALE_AFTER_SECONDS - 1}
  (tmp_path / 'lock.json').write_text(json.dumps(stale))
  with WorkdirLock.acquire(tmp_path) as second:
    with pytest.raises(WorkdirBusyError, match='taken over'):
      first.check()
    second.check()
  assert not (tmp_path / 'lock.json').exists()  # a released claim is removed


def _record(**changes):
  config = digits.get_config('resnet8')
  for key, value in changes.items():
    section, _, field = key.rpartition('.')
    (config[section] if section else config)[field] = value
  derived = {'num_classes': 10, 'image_shape': [8, 8, 1], 'num_train_examples': 1438}
  return {'config': run_lib.config_json(config), 'derived': derived}


def test_a_resume_accepts_cadence_and_length_changes_and_names_every_other_change():
  saved = _record()
  accepted = run_record.check_resume(
      saved,
      _record(**{'train.num_steps': 3000, 'train.log_every_steps': 10, 'parallelism.mode': 'pmap'}),
      accept=frozenset(),
      where='w',
  )
  assert accepted == [
      'parallelism.mode "jit" -> "pmap"',
      'train.log_every_steps 50 -> 10',
      'train.num_steps 1500 -> 3000',
  ]
  changed = _record(**{'train.batch_size': 64, 'model.shortcut': 'none', 'seed': 1})
  with pytest.raises(run_record.ChangedRunError) as refused:
    run_record.check_resume(saved, changed, accept=frozenset(), where='w')
  message = str(refused.value)
  assert 'model.shortcut "" -> "none"; seed 0 -> 1; train.batch_size 128 -> 64' in message
  assert message.endswith('--accept_changes=model.shortcut,seed,train.batch_size')
  # Accepted deliberately: the run goes on, the changes are recorded.
  assert (
      len(
          run_record.check_resume(
              saved,
              changed,
              accept=frozenset({'model.shortcut', 'seed', 'train.batch_size'}),
              where='w',
          )
      )
      == 3
  )


def test_per_device_batch_norm_refuses_another_device_count():
  saved, current = _record(), _record()
  saved['derived']['batch_norm_devices'], current['derived']['batch_norm_devices'] = 8, 4
  with pytest.raises(run_record.ChangedRunError, match='derived.batch_norm_devices 8 -> 4'):
    run_record.check_resume(saved, current, accept=frozenset(), where='w')


def test_a_saved_config_rebuilds_with_its_types():
  config = digits.get_config('resnet8')
  config.schedule.boundaries = (10, 20)
  rebuilt = run_record.config_from_record(json.loads(config.to_json_best_effort()))
  assert rebuilt.schedule.boundaries == (10, 20) and rebuilt.dataset.mean is None
  assert run_lib.config_json(rebuilt) == run_lib.config_json(config)


def test_rows_past_the_restored_step_are_dropped(tmp_path):
  (tmp_path / 'metrics.jsonl').write_text(
      ''.join(json.dumps({'step': s, 'train_loss': 1.0}) + '\n' for s in (2, 4, 6, 8))
  )
  metric_logging.drop_rows_after(tmp_path, 5)
  assert [r['step'] for r in metric_logging.read_metrics(tmp_path)] == [2, 4]


@pytest.mark.parametrize(
    'named,expected', [('', 2), ('/checkpoints/1', 1), ('/checkpoints/best', 1)]
)
def test_init_from_names_a_workdir_a_step_or_the_best(tmp_path, named, expected):
  checkpoints = checkpointing.Checkpoints(tmp_path, asynchronous=False)
  for step, error in ((1, 0.1), (2, 0.3)):  # step 1 evaluated best
    state = {'params': {'head': {'kernel': np.full((2, 3), step, np.float32)}}, 'batch_stats': {}}
    checkpoints.save(step, state, {}, {'eval_top1_error': error})
  checkpoints.close()
  ours = {'head': {'kernel': np.zeros((2, 3), np.float32)}}
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  params, _, step, _ = checkpointing.restore_for_fine_tuning(
      f'{tmp_path}{named}', ours, {}, sharding
  )
  assert step == expected and float(params['head']['kernel'][0, 0]) == expected


def _checkpoint(workdir, params, batch_stats=None):
  checkpoints = checkpointing.Checkpoints(workdir, asynchronous=False)
  checkpoints.save(1, {'params': params, 'batch_stats': batch_stats or {}}, {})
  checkpoints.close()


def test_fine_tuning_takes_exactly_what_matches_and_says_what_it_did(tmp_path):
  # A deeper source (stage1_block2), a block ours has and it lacks (stage2_block1), 10 classes for
  # our 5, grey images for our RGB ones.
  ones = lambda *shape: np.ones(shape, np.float32)  # noqa: E731
  _checkpoint(
      tmp_path,
      {
          'stem_conv': {'kernel': ones(3, 3, 1, 4)},
          'stage1_block1': {'kernel': ones(2) * 7},
          'stage1_block2': {'kernel': ones(2)},
          'head': {'kernel': ones(4, 10)},
      },
  )
  ours = {
      'stem_conv': {'kernel': np.zeros((3, 3, 3, 4), np.float32)},
      'stage1_block1': {'kernel': np.zeros(2, np.float32)},
      'stage2_block1': {'kernel': np.zeros(5, np.float32)},
      'head': {'kernel': np.zeros((4, 5), np.float32)},
  }
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  with pytest.raises(checkpointing.CheckpointMismatchError) as refused:
    checkpointing.restore_for_fine_tuning(tmp_path, ours, {}, sharding)
  message = str(refused.value)
  assert "lacks 1 of the model's arrays or holds them in another shape (stage2_block1)" in message
  assert '1 of its arrays are not in the model (stage1_block2)' in message
  assert message.endswith('--config.init_from_partial=True') and '\n' not in message
  params, _, step, report = checkpointing.restore_for_fine_tuning(
      tmp_path, ours, {}, sharding, partial=True
  )
  assert step == 1 and float(params['stage1_block1']['kernel'][0]) == 7
  assert not params['stage2_block1']['kernel'].any() and not params['head']['kernel'].any()
  np.testing.assert_allclose(params['stem_conv']['kernel'], np.full((3, 3, 3, 4), 1 / 3))
  assert report == [
      f'fine-tuning from {tmp_path}/checkpoints/1: loaded 1 of 4 arrays',
      '  re-initialised the classifier (head): another number of classes',
      '  adapted the stem (stem_conv) to another number of image channels',
      '  re-initialised 1 arrays it lacks or holds in another shape: stage2_block1',
      '  left out 1 of its arrays this model lacks: stage1_block2',
  ]


def test_best_is_the_earliest_of_equal_evaluations_for_orbax_and_the_summary(tmp_path):
  checkpoints = checkpointing.Checkpoints(tmp_path, keep=1, asynchronous=False)
  errors = {1: 0.2, 2: 0.1, 3: 0.1, 4: 0.3}  # steps 2 and 3 tie
  for step, error in errors.items():
    state = {'params': {'w': np.full(2, step, np.float32)}, 'batch_stats': {}}
    checkpoints.save(step, state, {}, {'eval_top1_error': error})
  assert checkpoints.find_step('best') == 2
  assert sorted(checkpoints.manager.all_steps()) == [2, 4]  # the best and the latest kept
  checkpoints.close()
  rows = [{'step': step, 'eval_top1_error': error} for step, error in errors.items()]
  assert min(rows, key=checkpointing.best_rank)['step'] == 2  # console.summary's best


def test_a_synthetic_runs_config_rebuilds_with_its_own_dataset_fields():
  from configs import synthetic

  config = synthetic.get_config('resnet20')
  rebuilt = run_record.config_from_record(json.loads(config.to_json_best_effort()))
  assert rebuilt.dataset.channels == 3 and rebuilt.dataset.num_eval_examples == 10_000
  assert run_lib.config_json(rebuilt) == run_lib.config_json(config)


def test_a_workdir_without_checkpoints_does_not_pin_the_config_its_crashed_run_wrote(tmp_path):
  crashed = digits.get_config('resnet8')
  crashed.dataset.image_size = 4
  crashed = run_lib.config_json(crashed)
  run_record.write_first_config(tmp_path, crashed, trained=False)
  corrected = run_lib.config_json(digits.get_config('resnet8'))
  run_record.write_first_config(tmp_path, corrected, trained=False)
  assert run_record.read_first_config(tmp_path)['dataset']['image_size'] is None
  run_record.write_first_config(tmp_path, crashed, trained=True)  # once trained: never rewritten
  assert run_record.read_first_config(tmp_path)['dataset']['image_size'] is None


def test_saving_state_replicated_over_8_cpu_devices_compiles_nothing_and_restores_it(tmp_path):
  # orbax's replica-parallel save compiled a slice program per array shape (161 for ResNet-20):
  # 6 s of a run's first save on 8 CPU devices (checkpoints._save_replicated_arrays_whole_on_cpu).
  mesh = jax.sharding.Mesh(np.asarray(jax.devices()), ('data',))
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  state = {
      'params': {
          f'w{n}': jax.device_put(np.arange(n * 8, dtype=np.float32), replicated)
          for n in range(1, 9)
      },
      'batch_stats': {},
      'step': jax.device_put(np.int32(3), replicated),
  }
  compiles = []

  def listener(event, *_, **__):
    if 'backend_compile' in event:
      compiles.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    checkpoints = checkpointing.Checkpoints(tmp_path, asynchronous=False)
    checkpoints.save(3, state, {})
    checkpoints.close()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert compiles == []
  assert (tmp_path / 'checkpoints/3/state/array_metadatas').is_dir()  # as orbax's default writes
  restored = checkpointing.Checkpoints(tmp_path, read_only=True).restore_as_saved(
      3, jax.sharding.SingleDeviceSharding(jax.devices()[0])
  )
  jax.tree.map(np.testing.assert_array_equal, jax.device_get(restored), jax.device_get(state))
