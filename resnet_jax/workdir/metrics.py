"""Metrics to `metrics.jsonl`, one JSON object per logged step, and to TensorBoard (CLU writers).

`metrics.jsonl` (flat keys: train_loss, eval_top1_error, ...) lets sweeps and notebooks read results
without TensorFlow. TensorBoard groups the same values by tag, `train/`, `eval/` and
`diagnostics/`, and holds the run's config as text and as hyperparameters, so that the runs of a
sweep compare side by side. CLU's writers import TensorFlow: where it is not installed (a GPU
machine with JAX alone), the run says so once and writes metrics.jsonl only. Only process 0 writes.
"""

import contextlib
import errno
import json
import os

import jax
from absl import logging
from etils import epath

from resnet_jax.common import errors, jsonl, library_noise
from resnet_jax.workdir import record as run_record

_DIAGNOSTICS = ('grad_norm', 'residual_ratio', 'nonfinite', 'skipped_steps')


def tensorboard_tag(key: str) -> str:
  """`eval_top1_error` -> `eval/top1_error`, `train_grad_norm_stem` -> `diagnostics/grad_norm_stem`,
  `train_loss` -> `train/loss`, `images_per_second` -> `train/images_per_second`."""
  group, _, name = key.partition('_')
  if group == 'eval':
    return f'eval/{name}'
  if group == 'train':
    return f'{"diagnostics" if name.startswith(_DIAGNOSTICS) else "train"}/{name}'
  return f'train/{key}'


def _hparams(config_json: dict) -> dict:
  """The config's fields as TensorBoard hyperparameters (numbers, strings and booleans)."""
  return {
      field: value if isinstance(value, (bool, int, float, str)) else str(value)
      for field, value in run_record.flatten(config_json).items()
  }


# What a failed write comes down to, found inside TensorFlow's long op messages.
_OS_REASONS = [os.strerror(c) for c in (errno.ENOSPC, errno.EACCES, errno.EROFS, errno.EDQUOT)]


def _tensorflow_cause(e: BaseException) -> str:
  """The reason a TensorFlow write failed, without its op names and paths ("{{function_node
  __wrapped__WriteSummary_device_/job:localhost/...}} /path...: No space left on device [Op:...]").
  """
  text = str(list(errors.causes(e))[-1])
  return next((reason for reason in _OS_REASONS if reason in text), text)


class SummaryWriteError(Exception):
  """TensorBoard's events could not be written (TensorFlow's writer raises its own errors, from a
  background thread); Workdir.stop_on_failed_write turns it into one line."""


class MetricLogger:
  """metrics.jsonl and TensorBoard's events of process 0. A write that fails raises OSError
  (metrics.jsonl) or SummaryWriteError (TensorBoard)."""

  def __init__(self, workdir, config_json: dict | None = None):
    """`config_json`: the run's config (its record's), shown in TensorBoard as text and hparams."""
    self.is_writer = jax.process_index() == 0
    self.jsonl_path = epath.Path(workdir) / 'metrics.jsonl'
    self.writer = None
    if not self.is_writer:
      return
    try:
      with library_noise.silenced():
        from clu import metric_writers  # pylint: disable=import-outside-toplevel
    except ImportError:
      logging.warning(
          'TensorBoard summaries are off (CLU or TensorFlow is not installed); every logged'
          ' value is in %s.',
          self.jsonl_path,
      )
      return
    with self._summaries():
      self.writer = metric_writers.AsyncWriter(metric_writers.SummaryWriter(str(workdir)))
      if config_json is not None:
        self.writer.write_hparams(_hparams(config_json))
        self.writer.write_texts(0, {'config': f'```\n{json.dumps(config_json, indent=2)}\n```'})

  @contextlib.contextmanager
  def _summaries(self):
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except  (TensorFlow's errors, of many types)
      raise SummaryWriteError(f'TensorBoard: {_tensorflow_cause(e)}') from e

  def write(self, step: int, scalars: dict[str, float | str]) -> None:
    """Numbers go to TensorBoard and metrics.jsonl; strings (the eval protocol's name) to
    metrics.jsonl only (TensorBoard holds the config's text)."""
    if not self.is_writer:
      return
    record = {k: v if isinstance(v, str) else float(v) for k, v in scalars.items()}
    if self.writer is not None:
      numbers = {tensorboard_tag(k): v for k, v in record.items() if not isinstance(v, str)}
      with self._summaries():
        self.writer.write_scalars(step, numbers)
    jsonl.append(self.jsonl_path, {'step': step, **record})

  def close(self, *, quietly: bool = False) -> None:
    """Flushes and closes TensorBoard's writer; `quietly`: a failure is dropped (the run is
    already ending with another error)."""
    if self.writer is None:
      return
    writer, self.writer = self.writer, None
    try:
      with self._summaries():
        writer.close()  # flushes first
    except SummaryWriteError:
      if not quietly:
        raise


def read_metrics(workdir) -> list[dict]:
  """The rows of metrics.jsonl; a torn line (a run killed while writing it) is skipped."""
  return jsonl.read(epath.Path(workdir) / 'metrics.jsonl')[0]


def drop_rows_after(workdir, step: int) -> int:
  """Removes the rows of steps after `step` from metrics.jsonl, and a torn last line; returns the
  number of torn lines dropped. A run resumed from its checkpoint at `step` trains and logs those
  steps again, so curves stay continuous, one row a step. (TensorBoard drops its own orphaned
  events when the steps start again lower.)"""
  return jsonl.repair(
      epath.Path(workdir) / 'metrics.jsonl', keep=lambda r: r.get('step', 0) <= step
  )
