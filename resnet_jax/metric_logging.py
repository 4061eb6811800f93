"""Metrics to `metrics.jsonl`, one JSON object per logged step, and to TensorBoard (CLU writers).

`metrics.jsonl` lets sweeps and notebooks read results without TensorFlow. Only process 0 writes.
CLU's writers import TensorFlow for their TensorBoard summaries: where it is not installed (a GPU
machine with JAX alone), the run says so once and writes metrics.jsonl and the log only.
"""

import json
import time

import jax
from absl import logging
from etils import epath

try:
  from clu import metric_writers, periodic_actions
except ImportError:  # no TensorFlow (or no CLU): no TensorBoard summaries
  metric_writers = periodic_actions = None


class MetricLogger:

  def __init__(self, workdir):
    self.is_writer = jax.process_index() == 0
    if metric_writers is not None:
      self.writer = metric_writers.create_default_writer(
          str(workdir), just_logging=not self.is_writer, asynchronous=True
      )
    else:
      if self.is_writer:
        logging.warning(
            'TensorBoard summaries are off (CLU or TensorFlow is not installed); every logged'
            ' value is in %s/metrics.jsonl.',
            workdir,
        )
      self.writer = _LoggingWriter()
    self.jsonl_path = epath.Path(workdir) / 'metrics.jsonl'

  def write(self, step: int, scalars: dict[str, float]) -> None:
    self.writer.write_scalars(step, scalars)
    if self.is_writer:
      record = {'step': step, **{k: float(v) for k, v in scalars.items()}}
      with self.jsonl_path.open('a') as f:
        f.write(json.dumps(record) + '\n')

  def report_progress(self, num_steps: int, every_secs: float):
    """A callable of the step that logs steps/s and the time left every `every_secs` seconds."""
    if periodic_actions is not None:
      return periodic_actions.ReportProgress(
          num_train_steps=num_steps, writer=self.writer, every_secs=every_secs
      )
    return _Progress(num_steps, every_secs)

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()


class _LoggingWriter:
  """The part of CLU's writer interface the loop uses, to the log (CLU's LoggingWriter, without
  CLU)."""

  def write_scalars(self, step: int, scalars: dict[str, float]) -> None:
    logging.info('[%d] %s', step, ', '.join(f'{k}={float(v):.6g}' for k, v in scalars.items()))

  def flush(self) -> None:
    pass

  def close(self) -> None:
    pass


class _Progress:
  """Steps/s and the time left, logged every `every_secs` seconds (CLU's ReportProgress, without
  CLU)."""

  def __init__(self, num_steps: int, every_secs: float):
    self.num_steps, self.every_secs = num_steps, every_secs
    self.last_time, self.last_step = None, None

  def __call__(self, step: int) -> None:
    now = time.monotonic()
    if self.last_time is None:
      self.last_time, self.last_step = now, step
    elif now - self.last_time >= self.every_secs:
      rate = (step - self.last_step) / (now - self.last_time)
      left = (self.num_steps - step) / rate / 60 if rate > 0 else float('inf')
      logging.info('step %d/%d: %.2f steps/s, %.1f min left', step, self.num_steps, rate, left)
      self.last_time, self.last_step = now, step


def read_metrics(workdir) -> list[dict]:
  path = epath.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return []
  return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def drop_rows_after(workdir, step: int) -> None:
  """Removes the rows of steps after `step` from metrics.jsonl: a run resumed from its checkpoint
  at `step` trains and logs them again, so curves stay continuous, one row a step. (TensorBoard
  drops its own orphaned events when the steps start again lower.)"""
  path = epath.Path(workdir) / 'metrics.jsonl'
  if not path.exists():
    return
  lines = path.read_text().splitlines()
  kept = [line for line in lines if line.strip() and json.loads(line)['step'] <= step]
  if len(kept) != len(lines):
    staged = path.parent / (path.name + '.tmp')
    staged.write_text(''.join(line + '\n' for line in kept))
    staged.replace(path)  # atomic: a crash leaves the old or the new file, never half of one
