"""A run's workdir, the run's record: one object owns the lock, the resume check, config.json,
history.jsonl, the checkpoints, metrics.jsonl with TensorBoard, and curves.png.

  with Workdir.for_training(path, run) as workdir:   # created if new, locked, checked writable
    changes = workdir.check_same_run(accept)          # refuses to continue another run
    ...
  Workdir.read_only(path)                             # eval and predict: never writes or creates

A mistake at the start leaves nothing behind: a workdir that this invocation created and that holds
nothing but its lock is removed again.
"""

import contextlib

import jax
from absl import logging
from etils import epath

from resnet_jax.common import errors
from resnet_jax.common.errors import UserError
from resnet_jax.config.run import Run
from resnet_jax.workdir import checkpoints as checkpoints_lib
from resnet_jax.workdir import metrics, record
from resnet_jax.workdir.lock import FILE_NAME as LOCK_FILE
from resnet_jax.workdir.lock import WorkdirLock


class WorkdirError(UserError):
  pass


class WriteError(UserError):
  """A file of the workdir's record could not be written (a full disk, lost permissions)."""


def path_of(workdir) -> epath.Path:
  """--workdir as an absolute path; nothing is created."""
  if not str(workdir or '').strip():
    raise WorkdirError(
        '--workdir is empty; give the directory the run writes, e.g. --workdir runs/r56'
    )
  return checkpoints_lib.absolute_path(workdir)


def meta_of(run: Run) -> dict:
  """What a checkpoint holds beside the state: a resume or init_from is checked against it."""
  return {
      'model': run.model.name,
      'num_classes': run.dataset.num_classes,
      'image_shape': list(run.dataset.image_shape),
      'dataset': run.data.name,
      'record': run.record,
  }


class Workdir:
  """A training run's workdir (for_training), or a finished one read (read_only)."""

  def __init__(self, path: epath.Path, checkpoints, lock: WorkdirLock | None = None):
    self.path, self.checkpoints, self.lock = path, checkpoints, lock

  # ------------------------------------------------------------------------------ opening

  @classmethod
  @contextlib.contextmanager
  def for_training(cls, workdir, run: Run):
    """The workdir of a training run of `run`: created if new (checked writable), locked for the
    whole run, closed at the end (saves waited for)."""
    path = path_of(workdir)
    created = not path.exists()
    try:
      path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
      raise WorkdirError(
          f'cannot write to --workdir {path} ({e.strerror or e}); choose a writable directory'
      ) from e
    try:
      with WorkdirLock.acquire(path) as lock:
        checkpoints = checkpoints_lib.Checkpoints(
            path, keep=run.loop.keep_checkpoints, asynchronous=run.loop.async_checkpoints
        )
        workdir = cls(path, checkpoints, lock)
        try:
          yield workdir
        finally:
          checkpoints.wait()
          checkpoints.close()
    except UserError:
      if created and jax.process_index() == 0:
        _remove_if_unused(path)
      raise

  @classmethod
  def read_only(cls, workdir) -> 'Workdir':
    """The workdir of a finished or running training run, for eval and predict: it must hold
    checkpoints; nothing is created or written."""
    path = checkpoints_lib.absolute_path(workdir) if str(workdir or '').strip() else None
    if path is None or not (path / 'checkpoints').is_dir():
      raise WorkdirError(
          f"--workdir {path or repr(workdir)} is not a run's workdir (it has no checkpoints/);"
          ' give the --workdir a training run wrote'
      )
    return cls(path, checkpoints_lib.Checkpoints(path, read_only=True))

  def close(self) -> None:
    self.checkpoints.close()

  # ------------------------------------------------------------------------------ the record

  def config_of(self, step: int):
    """The config the checkpoint at `step` was trained with (older checkpoints: config.json)."""
    return record.config_of_checkpoint(self.checkpoints.read_meta(step), self.path)

  def check_same_run(self, run: Run, accept: frozenset[str]) -> list[str]:
    """The changes of config this training run makes to the workdir's run (field old -> new),
    or record.ChangedRunError if it would continue another run. Nothing has been written yet."""
    step = self.checkpoints.latest_step()
    if step is None:  # nothing trained yet: a first run that crashed does not pin its config
      first = record.read_first_config(self.path)
      return list(record.changes({'config': first or {}}, run.record).values())
    saved = self.checkpoints.read_meta(step).get('record')  # None: saved by an older version
    if not saved:
      return []
    where = f'checkpoint {self.checkpoints.directory / str(step)}'
    return record.check_resume(saved, run.record, accept=accept, where=where)

  def write_record(self, run: Run, changes: list[str], start_step: int) -> list[str]:
    """config.json, this invocation in history.jsonl and metrics.jsonl cut back to `start_step`
    (those steps are trained again); returns what was repaired, for the console."""
    with self.stop_on_failed_write(f'the record in {self.path}'):
      record.write_first_config(self.path, run.record['config'], trained=start_step > 0)
      torn = {
          'history.jsonl': record.append_history(self.path, from_step=start_step, changes=changes),
          'metrics.jsonl': metrics.drop_rows_after(self.path, start_step),
      }
    return [
        f'{name}: dropped {count} torn line(s) that a run stopped while writing left behind'
        for name, count in torn.items()
        if count
    ]

  # ------------------------------------------------------------------------------ writing

  def last_good_checkpoint(self) -> str:
    step = self.checkpoints.latest_step()
    if step is None:
      return 'no checkpoint was saved yet, so the run starts again from step 0'
    return f'the last good checkpoint is step {step} in {self.checkpoints.directory}'

  @contextlib.contextmanager
  def stop_on_failed_write(self, what):
    """A failed write of the metrics, TensorBoard events or the record stops the run with one
    line: nothing saved is lost, and the same command resumes."""
    try:
      yield
    except (OSError, metrics.SummaryWriteError) as e:
      cause = getattr(e, 'strerror', None) or errors.one_line(e, 160)
      raise WriteError(
          f'writing {what} failed ({cause}); {self.last_good_checkpoint()}. Free space or fix'
          ' the directory, then run the same command to resume'
      ) from e

  def metric_logger(self, run: Run) -> metrics.MetricLogger:
    with self.stop_on_failed_write(f'metrics to {self.path}'):
      return metrics.MetricLogger(self.path, run.record['config'])

  def save(self, step: int, state, run: Run, evaluated: dict) -> None:
    """Starts saving the global `state` at `step`, with the run's meta and this step's eval."""
    self.lock.check()  # never write over the checkpoints of a run that took the workdir over
    self.checkpoints.save(step, state, meta_of(run), evaluated)

  def curves(self):
    """workdir/curves.png of the run's metrics (None where matplotlib is not installed)."""
    try:
      from resnet_jax.workdir import curves  # pylint: disable=import-outside-toplevel
    except ImportError as e:
      logging.warning('No curves.png: %s', e)
      return None
    return curves.plot_run(self.path)


def _remove_if_unused(path: epath.Path) -> None:
  """A workdir this invocation created and that holds no file but its lock (a fine-tuning source
  that does not fit, a refused start): removed, so a mistake leaves nothing behind."""
  if all(name == LOCK_FILE for _, _, names in path.walk() for name in names):
    path.rmtree()
