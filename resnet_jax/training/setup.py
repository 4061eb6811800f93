"""The one builder of what a run needs before its first step, from its resolved Run: the model, the
optimizer, the first state and the compiled train and eval steps.

Training and eval-only (loop.py), predict and convert (cli/), the benchmarks and the test fixtures
all build through `Setup`; nothing else makes a model, an optimizer or a state.
"""

import functools

import jax
import jax.numpy as jnp

from resnet_jax.config.run import Run
from resnet_jax.data import views
from resnet_jax.training import cpu_backend, evaluation, optim, parallel
from resnet_jax.training.step import TrainState, create_train_state, eval_step, make_train_step


class Setup:
  """A run's model, optimizer, states and compiled steps. `data_parallel` defaults to the run's
  parallelism over every device."""

  def __init__(self, run: Run, data_parallel: parallel.DataParallel | None = None):
    self.run = run
    self.data_parallel = data_parallel or parallel.DataParallel(
        run.parallelism.mode, run.parallelism.batch_norm
    )
    self.tx = optim.create_optimizer(run.optimizer)
    # The CPU backend a train step of this signature was measured to run fastest on (or the
    # configured one); compile_train_step measures it if it is not known yet.
    self.backend = cpu_backend.lookup(run.parallelism.cpu_backend, self.signature())
    self.model = self.model_for(self.backend.name)
    self._eval_step = None

  def model_for(self, backend: str):
    """The run's network, its convolutions on the kernels of CPU backend `backend`."""
    return self.run.model.build(
        self.run.dataset.num_classes,
        bn_axis_name=self.data_parallel.bn_axis_name,
        kernels=cpu_backend.kernels(backend),
    )

  def signature(self) -> dict:
    return cpu_backend.step_signature(
        self.run, devices=self.data_parallel.mesh.size, processes=jax.process_count()
    )

  # ------------------------------------------------------------------------------ states

  def init(self, rng) -> TrainState:
    """A fresh state from `rng` (pure: jax.eval_shape gives its shapes without computing it)."""
    return create_train_state(
        rng,
        model=self.model,
        tx=self.tx,
        image_shape=self.run.dataset.image_shape,
        warmup=self.run.schedule.warmup_lr > 0,
    )

  def fresh_state(self) -> TrainState:
    """The run's initial state (seeded by `seed`), replicated in the global form
    (DataParallel.to_devices gives the mode's own)."""
    init = jax.jit(self.init, out_shardings=self.data_parallel.replicated)
    return init(jax.random.key(self.run.seed))

  def abstract_state(self, state: TrainState | None = None):
    """Shapes, dtypes and shardings of a state, to restore a checkpoint into."""
    state = state if state is not None else jax.eval_shape(self.init, jax.random.key(0))
    sharding = self.data_parallel.replicated
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), state)

  # ------------------------------------------------------------------------------ steps

  def train_step_fn(self, model=None):
    """The train step as a pure function (step.make_train_step), not yet compiled."""
    return make_train_step(self.run, model=self.model if model is None else model, tx=self.tx)

  def compile_train_step(self, state, batch):
    """The train step compiled for this machine: on a CPU with the backend cpu_backend.choose
    picks, measuring on copies of `state` and `batch` if needed; the eval step follows it."""

    def lower(kernels: str):
      model = self.model.clone(kernels=kernels)
      step = self.data_parallel.compile_train_step(self.train_step_fn(model))
      return step.lower(state, batch)

    self.backend, compiled = cpu_backend.choose(
        lower,
        state,
        batch,
        configured=self.run.parallelism.cpu_backend,
        signature=self.signature(),
    )
    self.model = self.model_for(self.backend.name)
    self._eval_step = None  # compiled again with the chosen backend
    return compiled

  @property
  def eval_step(self):
    """`(global state, global batch) -> sums` by the run's evaluation protocol, compiled on first
    use with the train step's CPU backend."""
    if self._eval_step is None:
      options = cpu_backend.options_for(self.backend.name)
      if self.run.evaluation.protocol == 'center':
        self._eval_step = self.data_parallel.compile_eval_step(
            functools.partial(eval_step, model=self.model), compiler_options=options
        )
      else:  # 10crop, multiscale: the views' averaged probabilities, in bounded memory
        self._eval_step = evaluation.Evaluator(
            self.run.evaluation,
            model=self.model,
            data_parallel=self.data_parallel,
            data=self.run.data,
            compiler_options=options,
        )
    return self._eval_step

  def evaluate(self, state, batches) -> dict[str, float]:
    """Loss, top-1 and top-5 error over `batches` (the eval split's, each example once, padded
    with mask 0), by the run's evaluation protocol (named in the result, the views averaged per
    image). `state` is in the global replicated form (DataParallel.to_global)."""
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
        'eval_views': float(views.num_views(self.run.evaluation, self.run.dataset.image_shape)),
    }
