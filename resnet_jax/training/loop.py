"""train_and_evaluate: setup, data, model, optimizer, checkpoint, then the loop.

Reads top to bottom.
"""

import contextlib
import functools
import json
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from resnet_jax.workdir import checkpoints as checkpointing
from resnet_jax.training import cpu_backend, evaluation
from resnet_jax.common import errors
from resnet_jax.data import pipeline as input_pipeline
from resnet_jax.workdir import metrics as metric_logging
from resnet_jax.training import optim, parallel
from resnet_jax.workdir import record as run_record
from resnet_jax.config import resolve as run_lib
from resnet_jax.cli.console import Console, Throughput
from resnet_jax.common.errors import UserError
from resnet_jax.workdir.lock import FILE_NAME as WORKDIR_LOCK_FILE
from resnet_jax.workdir.lock import WorkdirLock
from resnet_jax.training.preemption import Stopped, StopRequests
from resnet_jax.training.step import create_train_state, eval_step, make_train_step


class WorkdirError(UserError):
  pass


def device_counts() -> dict[str, int]:
  return {'device_count': jax.device_count(), 'process_count': jax.process_count()}


def workdir_path(workdir) -> epath.Path:
  """The --workdir of a training run as a path; nothing is created."""
  if not str(workdir or '').strip():
    raise WorkdirError(
        '--workdir is empty; give the directory the run writes, e.g. --workdir runs/r56'
    )
  return checkpointing.absolute_path(workdir)


def create_workdir(workdir) -> epath.Path:
  """The --workdir of a training run, created if new; checked writable before any training."""
  path = workdir_path(workdir)
  try:
    path.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    raise WorkdirError(
        f'cannot write to --workdir {path} ({e.strerror or e}); choose a writable directory'
    ) from e
  return path


def existing_workdir(workdir) -> epath.Path:
  """The --workdir of an eval or prediction: it must hold checkpoints; nothing is created."""
  path = checkpointing.absolute_path(workdir) if str(workdir or '').strip() else None
  if path is None or not (path / 'checkpoints').is_dir():
    raise WorkdirError(
        f"--workdir {path or repr(workdir)} is not a run's workdir (it has no checkpoints/);"
        ' give the --workdir a training run wrote'
    )
  return path


def checkpoint_meta(run: run_lib.Run, data: run_lib.DataSpec) -> dict:
  """What a checkpoint holds, saved beside it: a resume or init_from is checked against it."""
  return {
      'model': run.model.name,
      'num_classes': run.dataset.num_classes,
      'image_shape': list(run.dataset.image_shape),
      'dataset': data.name,
  }


def resolve(config: ml_collections.ConfigDict, *, training: bool):
  """(the data spec, the run): the dataset made ready and read, the whole config resolved."""
  data = input_pipeline.resolve_data(config.dataset)
  run = run_lib.resolve(
      config, dataset=input_pipeline.dataset_facts(data), training=training, **device_counts()
  )
  return data, run


class Setup:
  """What a run needs before its first step, built from its resolved description (`self.run`):
  shared by training and eval-only. The config has passed run.check_without_data; `workdir`
  exists (create_workdir or existing_workdir)."""

  def __init__(
      self, config: ml_collections.ConfigDict, workdir: epath.Path, *, training: bool, resolved=None
  ):
    self.workdir = workdir
    # what the input pipeline reads, and the run
    self.data, self.run = resolved or resolve(config, training=training)
    self.data_parallel = parallel.DataParallel(
        self.run.parallelism.mode, self.run.parallelism.batch_norm
    )
    self.model = self.run.model.build(
        self.run.dataset.num_classes, bn_axis_name=self.data_parallel.bn_axis_name
    )
    self.tx = optim.create_optimizer(self.run.optimizer)
    self.meta = {
        **checkpoint_meta(self.run, self.data),
        'record': run_record.describe(config, self.run, jax.device_count()),
    }
    self.checkpoints = checkpointing.Checkpoints(
        self.workdir,
        keep=self.run.loop.keep_checkpoints,
        asynchronous=self.run.loop.async_checkpoints,
        read_only=not training,
    )
    # The CPU backend a train step of this signature was measured to run fastest on (or the
    # configured one); training measures it if it is not known yet (compile_train_step).
    self.backend = cpu_backend.lookup(self.run.parallelism.cpu_backend, self.signature())
    self._compile_eval_step()

  def signature(self) -> dict:
    return cpu_backend.step_signature(
        self.run, devices=jax.device_count(), processes=jax.process_count()
    )

  def _compile_eval_step(self):
    options = cpu_backend.options_for(self.backend.name)
    if self.run.evaluation.protocol == 'center':
      self.eval_step = self.data_parallel.compile_eval_step(
          functools.partial(eval_step, model=self.model), compiler_options=options
      )
    else:  # 10crop, multiscale: the views' averaged probabilities, in bounded memory
      self.eval_step = evaluation.Evaluator(
          self.run.evaluation,
          model=self.model,
          data_parallel=self.data_parallel,
          data=self.data,
          compiler_options=options,
      )

  def compile_train_step(self, state, batch):
    """The train step compiled for this machine: on a CPU with the backend cpu_backend.choose
    picks, measuring on copies of `state` and `batch` if needed; the eval step follows it."""
    step = self.data_parallel.compile_train_step(
        make_train_step(self.run, model=self.model, tx=self.tx)
    )
    self.backend, compiled = cpu_backend.choose(
        lambda: step.lower(state, batch),
        state,
        batch,
        configured=self.run.parallelism.cpu_backend,
        signature=self.signature(),
    )
    self._compile_eval_step()
    return compiled

  def check_same_run(self, accept: frozenset[str]) -> list[str]:
    """The changes of config this training run makes to the workdir's run (field old -> new),
    or ChangedRunError if it would continue another run. Nothing has been written yet."""
    step = self.checkpoints.latest_step()
    if step is None:  # nothing trained yet: a first run that crashed does not pin its config
      first = run_record.read_first_config(self.workdir)
      return run_record.changes({'config': first or {}}, self.meta['record'])
    saved = self.checkpoints.read_meta(step).get('record')  # None: saved by an older version
    if not saved:
      return []
    where = f'checkpoint {self.checkpoints.directory / str(step)}'
    return run_record.check_resume(saved, self.meta['record'], accept=accept, where=where)

  def initial_state(self, step: int | None = None):
    """A fresh state, or this workdir's checkpoint at `step` (default: latest)."""
    init = functools.partial(
        create_train_state,
        model=self.model,
        tx=self.tx,
        image_shape=self.run.dataset.image_shape,
        warmup=self.run.schedule.warmup_lr > 0,
    )
    state = jax.jit(init, out_shardings=self.data_parallel.replicated)(
        jax.random.key(self.run.seed)
    )
    if self.checkpoints.latest_step() is not None:
      abstract = jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state
      )
      state = self.checkpoints.restore(abstract, self.meta, step)
      logging.info('Resumed from %s at step %d.', self.checkpoints.directory, int(state.step))
    return state  # the global replicated form: parallel.to_devices gives the mode's own

  def starting_state(self) -> tuple[Any, list[str]]:
    """Training's first state (the latest checkpoint, or a fresh one that init_from fine-tunes),
    and the lines saying what fine-tuning loaded."""
    state = self.initial_state()
    if self.checkpoints.latest_step() is not None or not self.run.init_from:
      return state, []
    params, batch_stats, _, report = checkpointing.restore_for_fine_tuning(
        self.run.init_from,
        state.params,
        state.batch_stats,
        self.data_parallel.replicated,
        partial=self.run.init_from_partial,
    )
    return state.replace(params=params, batch_stats=batch_stats), report

  def evaluate(self, state) -> dict[str, float]:
    """Loss, top-1 and top-5 error over every example of the eval split, each counted once, by the
    run's evaluation protocol (named in the result, with the views averaged per image).

    `state` is in the global replicated form (parallel.to_global).
    """
    batches = input_pipeline.create_eval_iterator(
        self.data,
        local_batch_size=self.run.batch.eval_per_process,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
        eval_spec=self.run.evaluation,
    )
    totals = None
    for batch in batches:
      sums = self.eval_step(state, self.data_parallel.place_global_batch(batch))
      totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
    totals = jax.device_get(totals)
    count = float(totals['count'])
    return {
        'eval_loss': float(totals['loss']) / count,
        'eval_top1_error': float(totals['top1_errors']) / count,
        'eval_top5_error': float(totals['top5_errors']) / count,
        'eval_examples': count,
        'eval_protocol': self.run.evaluation.protocol,
        'eval_views': float(evaluation.num_views(self.run.evaluation, self.data.image_shape)),
    }


class NonFiniteError(UserError):
  pass


def last_good_checkpoint(checkpoints) -> str:
  step = checkpoints.latest_step()
  if step is None:
    return 'no checkpoint was saved yet, so the run starts again from step 0'
  return f'the last good checkpoint is step {step} in {checkpoints.directory}'


def _nonfinite_advice(fetched: list[dict], index: int, step: int) -> str:
  """What to change: the learning rate only when it can be the cause (a step after the first,
  with a learning rate above 0); else the inputs or the compute dtype."""
  learning_rate = float(fetched[index]['learning_rate'])
  if step > 1 and learning_rate > 0:
    return (
        f'Lower --config.schedule.base_lr (this step trained at {learning_rate:g}) or add a'
        ' warm-up (--config.schedule.warmup_lr)'
    )
  return (
      f'At step {step}, with learning rate {learning_rate:g}, the learning rate is not the cause:'
      ' check the inputs (--config.dataset.mean, --config.dataset.std) and'
      ' --config.model.dtype'
  )


def check_finite(fetched: list[dict], first_step: int, max_skipped: int, checkpoints) -> None:
  """Stops the run once more than `max_skipped` steps had a non-finite loss or gradient."""
  if fetched[-1]['skipped_steps'] <= max_skipped:
    return
  index = next(i for i, m in enumerate(fetched) if m['nonfinite'])
  step = first_step + index
  checkpoints.wait()
  raise NonFiniteError(
      f'the loss or gradients became non-finite at step {step} (learning rate'
      f' {float(fetched[index]["learning_rate"]):g}); {last_good_checkpoint(checkpoints)}.'
      f' {_nonfinite_advice(fetched, index, step)}; or let the run skip up to N such steps with'
      ' --config.train.max_skipped_steps=N'
  )


class WriteError(UserError):
  """A file of the workdir's record could not be written (a full disk, lost permissions)."""


@contextlib.contextmanager
def stop_on_failed_write(what, checkpoints):
  """A failed write of the metrics, TensorBoard events or the record stops the run with one line:
  nothing saved is lost, and the same command resumes."""
  try:
    yield
  except (OSError, metric_logging.SummaryWriteError) as e:
    cause = getattr(e, 'strerror', None) or errors.one_line(e, 160)
    raise WriteError(
        f'writing {what} failed ({cause}); {last_good_checkpoint(checkpoints)}. Free space or fix'
        ' the directory, then run the same command to resume'
    ) from e


def train_and_evaluate(
    config: ml_collections.ConfigDict, workdir, *, accept_changes: frozenset[str] = frozenset()
) -> dict[str, float]:
  """Trains `config` in `workdir` (resuming its run), holding the workdir's lock throughout.

  The config, init_from and the data are checked (the dataset made ready) before the workdir is
  created: a mistake there leaves nothing behind."""
  run_lib.check_without_data(config, **device_counts())
  path = workdir_path(workdir)
  if config.init_from and not (path / 'checkpoints').exists():
    checkpointing.fine_tuning_source(config.init_from)  # a missing folder, before the data
  resolved = resolve(config, training=True)
  created = not path.exists()
  workdir = create_workdir(workdir)
  try:
    with WorkdirLock.acquire(workdir) as lock:
      return _train(config, workdir, lock, accept_changes, resolved)
  except UserError:
    if created and jax.process_index() == 0:
      _remove_if_unused(workdir)
    raise


def _remove_if_unused(workdir: epath.Path) -> None:
  """A workdir this invocation created and that holds no file but its lock (a fine-tuning source
  that does not fit, a refused start): removed, so a mistake leaves nothing behind."""
  files = [name for _, _, names in workdir.walk() for name in names]
  if all(name == WORKDIR_LOCK_FILE for name in files):
    workdir.rmtree()


def _write_record(setup: Setup, config, changes: list[str], start_step: int) -> list[str]:
  """config.json, this invocation in history.jsonl and metrics.jsonl cut back to `start_step`
  (those steps are trained again); returns what was repaired, for the console."""
  workdir, notes = setup.workdir, []
  with stop_on_failed_write(f'the record in {workdir}', setup.checkpoints):
    run_record.write_first_config(workdir, config, trained=start_step > 0)
    for name, torn in (
        (
            'history.jsonl',
            run_record.append_history(workdir, from_step=start_step, changes=changes),
        ),
        ('metrics.jsonl', metric_logging.drop_rows_after(workdir, start_step)),
    ):
      if torn:
        notes.append(
            f'{name}: dropped {torn} torn line(s) that a run stopped while writing left behind'
        )
  return notes


def _train(
    config, workdir: epath.Path, lock: WorkdirLock, accept_changes, resolved
) -> dict[str, float]:
  # ---------------------------------------------------------------- setup
  setup = Setup(config, workdir, training=True, resolved=resolved)
  run, data_parallel = setup.run, setup.data_parallel
  changes = setup.check_same_run(accept_changes)  # refuses to continue another run
  state, fine_tuned = setup.starting_state()  # the record is written once it is restored
  start_step, num_steps = int(state.step), run.schedule.num_steps
  notes = _write_record(setup, config, changes, start_step) if jax.process_index() == 0 else []
  state = data_parallel.to_devices(state)
  console = Console(num_steps=num_steps, start_step=start_step)
  console.print(
      f'{run.model.name} on {setup.data.name}: {num_steps} steps of {run.batch.size} images on'
      f' {jax.device_count()} {jax.devices()[0].platform} device(s)'
      + (f' ({parallel.cpu_split[1]})' if jax.default_backend() == 'cpu' else '')
      + (f' in {jax.process_count()} processes' if jax.process_count() > 1 else '')
      + (f', resumed at step {start_step}' if start_step else '')
      + ''.join(f'; changed: {change}' for change in changes)
      + f' -> {workdir}'
  )
  for note in [*notes, *fine_tuned]:
    console.print(note)

  # ---------------------------------------------------------------- data
  train_batches = input_pipeline.device_train_batches(
      setup.data,
      run.batch,
      data_parallel,
      seed=run.seed,
      start_step=start_step,
      process_index=jax.process_index(),
  )

  # ---------------------------------------------------------------- the compiled step
  # Compiled on the first batch, which the loop then trains on; on a CPU the convolution backend
  # may be measured first (not counted as training time: throughput starts after the first step).
  first_batch = step_fn = None
  if start_step < num_steps:
    first_batch = next(train_batches)
    step_fn = setup.compile_train_step(state, first_batch)
  if setup.backend.describe():
    console.print(setup.backend.describe())

  # ---------------------------------------------------------------- the loop
  metrics_written = functools.partial(
      stop_on_failed_write, f'metrics to {workdir}', setup.checkpoints
  )
  with metrics_written():
    logger = metric_logging.MetricLogger(setup.workdir, config)
  stop_requests = StopRequests()
  pending_metrics = []  # device arrays: fetched only at log time, so the host never waits on a step
  throughput = Throughput(run.batch.size)
  eval_metrics, step = {}, start_step
  try:
    for step in range(start_step + 1, num_steps + 1):
      batch = next(train_batches) if first_batch is None else first_batch
      first_batch = None
      state, metrics = step_fn(state, batch)
      pending_metrics.append(metrics)
      if step == start_step + 1:
        jax.block_until_ready(state)  # the first step compiles: throughput is timed from here
        throughput.start(step)
      setup.checkpoints.check_for_errors()  # a failed background save stops the run at once
      console.advance()
      stopping = stop_requests.should_stop(step)
      is_last = step == num_steps or stopping
      scalars, evaluated = {}, {}
      if step % run.loop.log_every_steps == 0 or is_last:
        fetched = data_parallel.fetch(pending_metrics)
        check_finite(
            fetched, step - len(fetched) + 1, run.loop.max_skipped_steps, setup.checkpoints
        )
        pending_metrics = []
        scalars.update({f'train_{k}': float(np.mean([m[k] for m in fetched])) for k in fetched[0]})
        images_per_second = throughput.window(step)
        if images_per_second is not None:
          scalars['images_per_second'] = images_per_second
        console.train_line(step, scalars, float(fetched[-1]['learning_rate']), throughput)
      if step % run.loop.eval_every_steps == 0 or (is_last and not stopping):
        jax.block_until_ready(state)  # so the steps still in flight count as training time
        eval_start = time.perf_counter()
        evaluated = eval_metrics = setup.evaluate(data_parallel.to_global(state))
        scalars.update(eval_metrics)
        throughput.exclude(time.perf_counter() - eval_start)  # not training throughput
        console.eval_line(step, eval_metrics)
      if scalars:
        with metrics_written():
          logger.write(step, scalars)
      if step % run.loop.checkpoint_every_steps == 0 or is_last:
        lock.check()  # never write over the checkpoints of a run that took the workdir over
        setup.checkpoints.save(step, data_parallel.to_global(state), setup.meta, evaluated)
      if stopping:
        setup.checkpoints.wait()
        raise Stopped(
            f'stopped by {stop_requests.signal_name} after step {step}; checkpoint saved in '
            f'{setup.checkpoints.directory}. Run the same command to resume.'
        )
    if start_step >= num_steps:
      console.print(f'Already trained for {num_steps} steps; evaluating the last checkpoint.')
      eval_metrics = setup.evaluate(data_parallel.to_global(state))
      console.eval_line(start_step, eval_metrics)
  finally:
    console.close()
    stop_requests.close()
    train_batches.close()
    setup.checkpoints.wait()
    setup.checkpoints.close()
    with metrics_written():
      logger.close(quietly=sys.exc_info()[0] is not None)  # the first error is the one to say
  if jax.process_index() == 0:
    console.summary(
        workdir, step=step, images_per_second=throughput.mean(step), plot=_plot(workdir)
    )
  return eval_metrics


def _plot(workdir: epath.Path):
  """workdir/curves.png of the run's metrics (None where matplotlib is not installed)."""
  try:
    from resnet_jax.workdir import curves  # pylint: disable=import-outside-toplevel
  except ImportError as e:
    logging.warning('No curves.png: %s', e)
    return None
  return curves.plot_run(workdir)


def evaluate_checkpoint(
    config: ml_collections.ConfigDict | None,
    workdir,
    step: int | None = None,
    protocol: str | None = None,
) -> dict[str, float]:
  """Eval-only mode: the checkpoint at `step` (default: latest) of an existing workdir on the eval
  split, with `config`, or the config that checkpoint was trained with, by `protocol` (default:
  the config's evaluation.protocol). Writes nothing."""
  workdir = existing_workdir(workdir)
  checkpoints = checkpointing.Checkpoints(workdir, read_only=True)
  step = checkpoints.find_step(step)
  if config is None:
    config = run_record.config_of_checkpoint(checkpoints.read_meta(step), workdir)
  checkpoints.close()
  if protocol:
    config.evaluation.protocol = protocol
  run_lib.check_without_data(config, **device_counts())
  setup = Setup(config, workdir, training=False)
  state = setup.initial_state(step)
  metrics = {'step': int(state.step), **setup.evaluate(state)}
  setup.checkpoints.close()
  return metrics


def dumps(metrics: dict) -> str:
  return json.dumps(metrics, sort_keys=True)
