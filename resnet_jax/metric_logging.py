"""Metrics to TensorBoard (CLU writers) and to `metrics.jsonl`, one JSON object per logged step.

`metrics.jsonl` lets sweeps and notebooks read results without TensorFlow. Only process 0 writes.
"""

import json

import jax
from clu import metric_writers
from etils import epath


class MetricLogger:

  def __init__(self, workdir):
    self.is_writer = jax.process_index() == 0
    self.writer = metric_writers.create_default_writer(
        str(workdir), just_logging=not self.is_writer, asynchronous=True
    )
    self.jsonl_path = epath.Path(workdir) / 'metrics.jsonl'

  def write(self, step: int, scalars: dict[str, float]) -> None:
    self.writer.write_scalars(step, scalars)
    if self.is_writer:
      record = {'step': step, **{k: float(v) for k, v in scalars.items()}}
      with self.jsonl_path.open('a') as f:
        f.write(json.dumps(record) + '\n')

  def close(self) -> None:
    self.writer.flush()
    self.writer.close()


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
