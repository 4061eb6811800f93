"""Training: `train_and_evaluate(run, workdir)` builds the run (setup.py), opens its workdir
(workdir/workdir.py), then runs the loop. Eval-only is `evaluate_checkpoint`.

Reads top to bottom: setup, data, the compiled step, the loop.
"""

import functools
import sys
import time

import jax
import numpy as np
from absl import logging

from resnet_jax.common import host_memory
from resnet_jax.common.errors import UserError
from resnet_jax.config.run import Fields, Run
from resnet_jax.data import pipeline as input_pipeline
from resnet_jax.training import parallel
from resnet_jax.training.preemption import Stopped, StopRequests
from resnet_jax.training.setup import Setup
from resnet_jax.cli.console import Console, Throughput
from resnet_jax.workdir import checkpoints as checkpointing
from resnet_jax.workdir.workdir import Workdir, meta_of, path_of


def device_counts() -> dict[str, int]:
  """What config/resolve.py's resolve needs to know of the job:
  resolve(config, **device_counts())."""
  return {'device_count': jax.device_count(), 'process_count': jax.process_count()}


def check_before_data(fields: Fields, workdir) -> None:
  """What a training run can be refused for before its data is read (which can take minutes):
  an empty --workdir, a fine-tuning source that is missing."""
  path = path_of(workdir)
  if fields.init_from and not (path / 'checkpoints').exists():
    checkpointing.fine_tuning_source(fields.init_from)


def _starting_state(setup: Setup, workdir: Workdir, step: int | None = None):
  """The workdir's checkpoint at `step` (default: latest), or a fresh state that init_from
  fine-tunes; and the lines saying what fine-tuning loaded. The global replicated form."""
  state, run = setup.fresh_state(), setup.run
  if workdir.checkpoints.latest_step() is not None:
    state = workdir.checkpoints.restore(setup.abstract_state(state), meta_of(run), step)
    logging.info('Resumed from %s at step %d.', workdir.checkpoints.directory, int(state.step))
    return state, []
  if not run.init_from:
    return state, []
  params, batch_stats, _, report = checkpointing.restore_for_fine_tuning(
      run.init_from,
      state.params,
      state.batch_stats,
      setup.data_parallel.replicated,
      partial=run.init_from_partial,
  )
  return state.replace(params=params, batch_stats=batch_stats), report


def _evaluate(setup: Setup, state) -> dict[str, float]:
  """The run's eval split scored by its protocol (Setup.evaluate), each example once."""
  run = setup.run
  batches = input_pipeline.create_eval_iterator(
      run.data,
      local_batch_size=run.batch.eval_per_process,
      process_index=jax.process_index(),
      process_count=jax.process_count(),
      eval_spec=run.evaluation,
  )
  return setup.evaluate(state, batches)


class NonFiniteError(UserError):
  pass


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


def check_finite(fetched: list[dict], first_step: int, max_skipped: int, workdir) -> None:
  """Stops the run once more than `max_skipped` steps had a non-finite loss or gradient."""
  if fetched[-1]['skipped_steps'] <= max_skipped:
    return
  index = next(i for i, m in enumerate(fetched) if m['nonfinite'])
  step = first_step + index
  workdir.checkpoints.wait()
  raise NonFiniteError(
      f'the loss or gradients became non-finite at step {step} (learning rate'
      f' {float(fetched[index]["learning_rate"]):g}); {workdir.last_good_checkpoint()}.'
      f' {_nonfinite_advice(fetched, index, step)}; or let the run skip up to N such steps with'
      ' --config.train.max_skipped_steps=N'
  )


def train_and_evaluate(
    run: Run, workdir, *, accept_changes: frozenset[str] = frozenset()
) -> dict[str, float]:
  """Trains `run` in `workdir` (resuming its run), holding the workdir's lock throughout. A
  start that is refused leaves no workdir behind (Workdir.for_training)."""
  with Workdir.for_training(workdir, run) as opened:
    return _train(run, opened, accept_changes)


def _train(run: Run, workdir: Workdir, accept_changes) -> dict[str, float]:
  # ---------------------------------------------------------------- setup
  setup = Setup(run)
  data_parallel = setup.data_parallel
  changes = workdir.check_same_run(run, accept_changes)  # refuses to continue another run
  state, fine_tuned = _starting_state(setup, workdir)  # the record is written once it is restored
  start_step, num_steps = int(state.step), run.schedule.num_steps
  notes = workdir.write_record(run, changes, start_step) if jax.process_index() == 0 else []
  state = data_parallel.to_devices(state)
  console = Console(num_steps=num_steps, start_step=start_step)
  console.print(
      f'{run.model.name} on {run.data.name}: {num_steps} steps of {run.batch.size} images on'
      f' {jax.device_count()} {jax.devices()[0].platform} device(s)'
      + (f' ({parallel.cpu_split[1]})' if jax.default_backend() == 'cpu' else '')
      + (f' in {jax.process_count()} processes' if jax.process_count() > 1 else '')
      + (f', resumed at step {start_step}' if start_step else '')
      + ''.join(f'; changed: {change}' for change in changes)
      + f' -> {workdir.path}'
  )
  for note in [*notes, *fine_tuned]:
    console.print(note)

  # ---------------------------------------------------------------- data
  train_batches = input_pipeline.device_train_batches(
      run.data,
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
  if setup.backend.describe():  # on a CPU: whose kernels, and how the host memory is kept
    console.print(f'{setup.backend.describe()}; {host_memory.describe()}')

  # ---------------------------------------------------------------- the loop
  metrics_written = functools.partial(workdir.stop_on_failed_write, f'metrics to {workdir.path}')
  logger = workdir.metric_logger(run)
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
      workdir.checkpoints.check_for_errors()  # a failed background save stops the run at once
      console.advance()
      stopping = stop_requests.should_stop(step)
      is_last = step == num_steps or stopping
      scalars, evaluated = {}, {}
      if step % run.loop.log_every_steps == 0 or is_last:
        fetched = data_parallel.fetch(pending_metrics)
        check_finite(fetched, step - len(fetched) + 1, run.loop.max_skipped_steps, workdir)
        pending_metrics = []
        scalars.update({f'train_{k}': float(np.mean([m[k] for m in fetched])) for k in fetched[0]})
        images_per_second = throughput.window(step)
        if images_per_second is not None:
          scalars['images_per_second'] = images_per_second
        console.train_line(step, scalars, float(fetched[-1]['learning_rate']), throughput)
      if step % run.loop.eval_every_steps == 0 or (is_last and not stopping):
        jax.block_until_ready(state)  # so the steps still in flight count as training time
        eval_start = time.perf_counter()
        evaluated = eval_metrics = _evaluate(setup, data_parallel.to_global(state))
        scalars.update(eval_metrics)
        throughput.exclude(time.perf_counter() - eval_start)  # not training throughput
        console.eval_line(step, eval_metrics)
      if scalars:
        with metrics_written():
          logger.write(step, scalars)
      if step % run.loop.checkpoint_every_steps == 0 or is_last:
        workdir.save(step, data_parallel.to_global(state), run, evaluated)
      if stopping:
        workdir.checkpoints.wait()
        raise Stopped(
            f'stopped by {stop_requests.signal_name} after step {step}; checkpoint saved in '
            f'{workdir.checkpoints.directory}. Run the same command to resume.'
        )
    if start_step >= num_steps:
      console.print(f'Already trained for {num_steps} steps; evaluating the last checkpoint.')
      eval_metrics = _evaluate(setup, data_parallel.to_global(state))
      console.eval_line(start_step, eval_metrics)
  finally:
    console.close()
    stop_requests.close()
    train_batches.close()
    workdir.checkpoints.wait()
    with metrics_written():
      logger.close(quietly=sys.exc_info()[0] is not None)  # the first error is the one to say
  if jax.process_index() == 0:
    console.summary(
        workdir.path, step=step, images_per_second=throughput.mean(step), plot=workdir.curves()
    )
  return eval_metrics


def evaluate_checkpoint(run: Run, workdir: Workdir, step: int) -> dict[str, float]:
  """Eval-only: the checkpoint at `step` of a read-only workdir on the eval split, by the run's
  evaluation protocol. Writes nothing."""
  setup = Setup(run)
  state, _ = _starting_state(setup, workdir, step)
  return {'step': int(state.step), **_evaluate(setup, state)}
