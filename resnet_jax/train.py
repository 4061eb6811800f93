"""train_and_evaluate: setup, data, model, optimizer, checkpoint, then the loop.

Reads top to bottom.
"""

import functools
import json
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import logging
from etils import epath

from resnet_jax import checkpointing, input_pipeline, optim, parallel
from resnet_jax import run as run_lib
from resnet_jax.errors import UserError
from resnet_jax.metric_logging import MetricLogger
from resnet_jax.preemption import Stopped, StopRequests
from resnet_jax.train_step import create_train_state, eval_step, make_train_step


class WorkdirError(UserError):
  pass


def prepare_workdir(workdir, config) -> epath.Path:
  """Checks the workdir can be written before any training starts, and saves the resolved config."""
  workdir = checkpointing.absolute_path(workdir)
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    if jax.process_index() == 0:
      (workdir / 'config.json').write_text(config.to_json_best_effort(indent=2))
  except OSError as e:
    raise WorkdirError(
        f'cannot write to --workdir {workdir} ({e.strerror or e}); choose a writable directory'
    ) from e
  return workdir


def checkpoint_meta(run: run_lib.Run, data: run_lib.DataSpec) -> dict:
  """What a checkpoint holds, saved beside it: a resume or init_from is checked against it."""
  return {
      'model': run.model.name,
      'num_classes': run.dataset.num_classes,
      'image_shape': list(run.dataset.image_shape),
      'dataset': data.name,
  }


class Setup:
  """What a run needs before its first step, built from its resolved description (`self.run`):
  shared by training and eval-only."""

  def __init__(self, config: ml_collections.ConfigDict, workdir, *, training: bool = True):
    counts = {'device_count': jax.device_count(), 'process_count': jax.process_count()}
    run_lib.check_without_data(config, **counts)  # mistakes are reported before any data is read
    self.workdir = prepare_workdir(workdir, config)
    self.data = input_pipeline.resolve_data(config.dataset)  # what the input pipeline reads
    self.run = run_lib.resolve(
        config, dataset=input_pipeline.dataset_facts(self.data), training=training, **counts
    )
    self.data_parallel = parallel.DataParallel(
        self.run.parallelism.mode, self.run.parallelism.batch_norm
    )
    self.model = self.run.model.build(
        self.run.dataset.num_classes, bn_axis_name=self.data_parallel.bn_axis_name
    )
    self.tx = optim.create_optimizer(self.run.optimizer)
    self.meta = checkpoint_meta(self.run, self.data)
    self.checkpoints = checkpointing.Checkpoints(
        self.workdir,
        keep=self.run.loop.keep_checkpoints,
        asynchronous=self.run.loop.async_checkpoints,
    )
    self.eval_step = self.data_parallel.compile_eval_step(
        functools.partial(eval_step, model=self.model)
    )

  def initial_state(self):
    """A fresh state, this workdir's latest checkpoint, or a fine-tuning start from init_from."""
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
      state = self.checkpoints.restore(abstract, self.meta)
      logging.info('Resumed from %s at step %d.', self.checkpoints.directory, int(state.step))
    elif self.run.init_from:
      params, batch_stats, step = checkpointing.restore_for_fine_tuning(
          self.run.init_from, state.params, state.batch_stats, self.data_parallel.replicated
      )
      state = state.replace(params=params, batch_stats=batch_stats)
      logging.info('Fine-tuning from %s (its step %d).', self.run.init_from, step)
    return state  # the global replicated form: parallel.to_devices gives the mode's own

  def evaluate(self, state) -> dict[str, float]:
    """Loss, top-1 and top-5 error over every example of the eval split, each counted once.

    `state` is in the global replicated form (parallel.to_global).
    """
    batches = input_pipeline.create_eval_iterator(
        self.data,
        local_batch_size=self.run.batch.eval_per_process,
        process_index=jax.process_index(),
        process_count=jax.process_count(),
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
    }


class NonFiniteError(UserError):
  pass


def check_finite(fetched: list[dict], first_step: int, max_skipped: int, checkpoints) -> None:
  """Stops the run once more than `max_skipped` steps had a non-finite loss or gradient."""
  if fetched[-1]['skipped_steps'] <= max_skipped:
    return
  index = next(i for i, m in enumerate(fetched) if m['nonfinite'])
  checkpoints.wait()
  raise NonFiniteError(
      f'the loss or gradients became non-finite at step {first_step + index} (learning rate'
      f' {float(fetched[index]["learning_rate"]):g}); the last good checkpoint is step'
      f' {checkpoints.latest_step()} in {checkpoints.directory}. Lower --config.schedule.base_lr,'
      ' or skip such steps with --run.loop.max_skipped_steps=N'
  )


def train_and_evaluate(config: ml_collections.ConfigDict, workdir) -> dict[str, float]:
  # ---------------------------------------------------------------- setup
  setup = Setup(config, workdir)
  run, data_parallel = setup.run, setup.data_parallel
  state = setup.initial_state()
  start_step, num_steps = int(state.step), run.schedule.num_steps
  state = data_parallel.to_devices(state)
  logging.info(
      '%s on %s: %d steps of %d images over %d devices (%d processes), from step %d.',
      run.model.name,
      setup.data.name,
      num_steps,
      run.batch.size,
      jax.device_count(),
      jax.process_count(),
      start_step,
  )

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
  step_fn = data_parallel.compile_train_step(make_train_step(run, model=setup.model, tx=setup.tx))

  # ---------------------------------------------------------------- the loop
  logger = MetricLogger(setup.workdir)
  progress = logger.report_progress(num_steps, every_secs=30)
  stop_requests = StopRequests()
  pending_metrics = []  # device arrays: fetched only at log time, so the host never waits on a step
  last_log_time, last_log_step = time.perf_counter(), start_step
  eval_metrics = {}
  try:
    for step in range(start_step + 1, num_steps + 1):
      state, metrics = step_fn(state, next(train_batches))
      pending_metrics.append(metrics)
      progress(step)
      stopping = stop_requests.should_stop(step)
      is_last = step == num_steps or stopping
      scalars = {}
      if step % run.loop.log_every_steps == 0 or is_last:
        fetched = data_parallel.fetch(pending_metrics)
        check_finite(
            fetched, step - len(fetched) + 1, run.loop.max_skipped_steps, setup.checkpoints
        )
        pending_metrics = []
        now = time.perf_counter()
        scalars.update({f'train_{k}': float(np.mean([m[k] for m in fetched])) for k in fetched[0]})
        scalars['images_per_second'] = (
            (step - last_log_step) * run.batch.size / (now - last_log_time)
        )
        last_log_time, last_log_step = now, step
      if step % run.loop.eval_every_steps == 0 or (is_last and not stopping):
        jax.block_until_ready(state)  # so the steps still in flight count as training time
        eval_start = time.perf_counter()
        eval_metrics = setup.evaluate(data_parallel.to_global(state))
        scalars.update(eval_metrics)
        last_log_time += time.perf_counter() - eval_start  # eval time is not training throughput
      if scalars:
        logger.write(step, scalars)
      if step % run.loop.checkpoint_every_steps == 0 or is_last:
        setup.checkpoints.save(step, data_parallel.to_global(state), setup.meta)
      if stopping:
        setup.checkpoints.wait()
        raise Stopped(
            f'stopped by {stop_requests.signal_name} after step {step}; checkpoint saved in '
            f'{setup.checkpoints.directory}. Run the same command to resume.'
        )
    if start_step >= num_steps:
      logging.info('Already trained for %d steps; evaluating the final checkpoint.', num_steps)
      eval_metrics = setup.evaluate(data_parallel.to_global(state))
  finally:
    stop_requests.close()
    train_batches.close()
    setup.checkpoints.wait()
    setup.checkpoints.close()
    logger.close()
  return eval_metrics


def evaluate_latest(config: ml_collections.ConfigDict, workdir) -> dict[str, float]:
  """Eval-only mode: the latest checkpoint of the workdir on the eval split."""
  setup = Setup(config, workdir, training=False)
  if setup.checkpoints.latest_step() is None:
    raise checkpointing.NoCheckpointError(
        f'no checkpoint in {setup.checkpoints.directory} to evaluate; train first'
    )
  state = setup.initial_state()
  metrics = {'step': int(state.step), **setup.evaluate(state)}
  setup.checkpoints.close()
  return metrics


def dumps(metrics: dict) -> str:
  return json.dumps(metrics, sort_keys=True)
