"""What a crash, a full disk or a diverging run leaves behind, in-process (through the CLI:
test_reliability.py)."""

import errno
import json

import pytest

from experiments import plot
from resnet_jax.common import jsonl
from resnet_jax.workdir import metrics as metric_logging, record as run_record
from resnet_jax.training import loop as train
from resnet_jax.workdir.workdir import Workdir, WriteError

ROWS = [{'step': s, 'train_loss': 1.0 / s, 'train_learning_rate': 0.1} for s in (2, 4, 6)]
FULL = ''.join(json.dumps(r) + '\n' for r in ROWS)


def torn_files():
  """FULL cut at every instant of its last append: (text, the rows a reader keeps, torn lines)."""
  start = FULL.rindex('{')
  cases = []
  for cut in range(start, len(FULL) + 1):
    complete = cut >= len(FULL) - 1  # all but the newline written: the row is whole
    cases.append((FULL[:cut], ROWS if complete else ROWS[:2], int(start < cut < len(FULL) - 1)))
  return cases


def test_a_resume_drops_a_torn_last_line_of_metrics_at_every_instant_of_the_append(tmp_path):
  path = tmp_path / 'metrics.jsonl'
  for text, kept, torn in torn_files():
    path.write_text(text)
    assert metric_logging.read_metrics(tmp_path) == kept, repr(text)
    assert metric_logging.drop_rows_after(tmp_path, 100) == torn, repr(text)
    assert path.read_text() == ''.join(json.dumps(r) + '\n' for r in kept), repr(text)


def test_history_appends_after_a_torn_line_start_on_a_line_of_their_own(tmp_path):
  path = tmp_path / 'history.jsonl'
  for text, kept, torn in torn_files():
    path.write_text(text)
    assert run_record.append_history(tmp_path, from_step=6, changes=[]) == torn
    records, unreadable = jsonl.read(path)
    assert unreadable == 0 and records[:-1] == kept and records[-1]['from_step'] == 6, repr(text)


def test_a_torn_config_json_is_no_record_and_is_written_again(tmp_path):
  (tmp_path / 'config.json').write_text('{"seed": 0, "model": {"na')
  assert run_record.read_first_config(tmp_path) is None
  from configs import digits
  from resnet_jax.config import resolve

  config = resolve.config_json(digits.get_config('resnet8'))
  run_record.write_first_config(tmp_path, config, trained=True)  # torn: written though trained
  assert run_record.read_first_config(tmp_path)['model']['name'] == 'resnet8'


def test_plot_skips_a_torn_line_and_says_so(tmp_path, capsys):
  (tmp_path / 'metrics.jsonl').write_text(FULL[:-10])
  assert plot.main(['--workdir', str(tmp_path)]) == 0
  assert 'skipped 1 torn line(s)' in capsys.readouterr().err
  assert (tmp_path / 'curves.png').exists()


class _Checkpoints:
  """What check_finite and stop_on_failed_write read of a run's checkpoints."""

  directory = '/w/checkpoints'

  def __init__(self, latest=None):
    self.latest = latest

  def wait(self):
    pass

  def latest_step(self):
    return self.latest


def _fetched(nonfinite_at: int, learning_rate: float) -> list[dict]:
  return [
      {
          'skipped_steps': float(i >= nonfinite_at),
          'nonfinite': float(i == nonfinite_at),
          'learning_rate': learning_rate,
      }
      for i in range(nonfinite_at + 1)
  ]


def test_the_nan_guard_names_the_real_flag_the_checkpoint_and_the_likely_cause():
  with pytest.raises(train.NonFiniteError) as diverged:
    train.check_finite(_fetched(1, 1e6), 1, 0, Workdir('/w', _Checkpoints()))
  message = str(diverged.value)
  assert message.startswith(
      'the loss or gradients became non-finite at step 2 (learning rate 1e+06)'
  )
  assert 'no checkpoint was saved yet' in message and 'None' not in message
  assert 'Lower --config.schedule.base_lr' in message
  assert message.endswith('--config.train.max_skipped_steps=N') and '--run.' not in message
  # Non-finite at the first step, before any update: not the learning rate's doing.
  with pytest.raises(train.NonFiniteError) as at_once:
    train.check_finite(_fetched(0, 0.1), 1, 0, Workdir('/w', _Checkpoints(latest=40)))
  message = str(at_once.value)
  assert 'the last good checkpoint is step 40 in /w/checkpoints' in message
  assert 'the learning rate is not the cause' in message and '--config.dataset.std' in message
  assert 'Lower --config.schedule.base_lr' not in message


def test_a_full_disk_while_writing_metrics_is_one_line_naming_the_last_checkpoint():
  with pytest.raises(WriteError) as failed:
    with Workdir('/w', _Checkpoints(latest=20)).stop_on_failed_write('metrics to /w'):
      raise OSError(errno.ENOSPC, 'No space left on device')
  assert str(failed.value) == (
      'writing metrics to /w failed (No space left on device); the last good checkpoint is step'
      ' 20 in /w/checkpoints. Free space or fix the directory, then run the same command to resume'
  )


def test_tensorboard_failures_come_back_as_one_error(tmp_path):
  logger = metric_logging.MetricLogger(tmp_path)
  if logger.writer is None:
    pytest.skip('no TensorBoard writer here (TensorFlow is not installed)')

  def fail(**kwargs):
    raise OSError(errno.ENOSPC, 'No space left on device')

  logger.writer._writer.write_scalars = fail  # pylint: disable=protected-access  (TF's writer)
  logger.write(1, {'train_loss': 1.0})  # the background write fails ...
  with pytest.raises(metric_logging.SummaryWriteError, match='TensorBoard: .*No space left'):
    logger.close()  # ... and is raised where the loop waits for it
  assert metric_logging.read_metrics(tmp_path) == [{'step': 1, 'train_loss': 1.0}]


def test_a_tensorflow_write_error_is_told_by_its_reason_not_its_op_names():
  # What TensorBoard's writer raised on a full tmpfs in the suite (shortened).
  error = RuntimeError(
      '{{function_node'
      ' __wrapped__WriteSummary_device_/job:localhost/replica:0/task:0/device:CPU:0}}'
      ' /tmp/run/events.out.tfevents.1.host; No space left on device [Op:WriteSummary]'
  )
  assert metric_logging._tensorflow_cause(error) == 'No space left on device'
  assert metric_logging._tensorflow_cause(ValueError('odd')) == 'odd'
