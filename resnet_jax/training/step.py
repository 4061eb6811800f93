"""The train state, the train step and the eval step: pure functions, the same for jit and pmap."""

import functools
import re
from typing import Any, Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from resnet_jax import models
from resnet_jax.training import optim
from resnet_jax.config.run import Run


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # The paper's ResNet-110 warm-up (section 4.2): lr stays at warmup_lr until this turns True.
  warmed_up: jax.Array
  # Steps whose loss or gradients were not finite; their updates were not applied.
  skipped_steps: jax.Array


def create_train_state(
    rng, *, model: nn.Module, tx: optax.GradientTransformation, image_shape, warmup: bool
) -> TrainState:
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return TrainState(
      step=jnp.zeros((), jnp.int32),
      params=variables['params'],
      batch_stats=variables['batch_stats'],
      opt_state=tx.init(variables['params']),
      warmed_up=jnp.asarray(not warmup),
      skipped_steps=jnp.zeros((), jnp.int32),
  )


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def grad_norms_by_stage(grads) -> dict[str, jax.Array]:
  """Gradient norm of the stem, of each stage and of the head: vanishing gradients in deep plain
  nets show in the first stage's."""
  groups = {}
  for name, subtree in grads.items():
    group = re.match(r'stem|stage\d+', name)
    groups.setdefault(group[0] if group else 'head', []).append(subtree)
  return {f'grad_norm_{group}': optax.tree.norm(trees) for group, trees in groups.items()}


def residual_ratios(squared_norms) -> dict[str, jax.Array]:
  """||F(x)|| / ||x|| of every block, as `residual_ratio_stage1_block1`, ..."""
  return {
      f'residual_ratio_{block}': jnp.sqrt(norms[0] / (norms[1] + 1e-20))
      for block, norms in squared_norms.items()
  }


def train_step(
    state: TrainState,
    batch,
    *,
    model: nn.Module,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    warmup_lr: float = 0.0,
    warmup_until_error: float = 0.8,
    label_smoothing: float = 0.0,
    diagnostics: bool = False,
    axis_name: str | None = None,
):
  """One SGD step. Under pmap or shard_map, `axis_name` names the device axis that gradients,
  metrics and BatchNorm running averages are averaged over; under plain jit the batch is one global
  array and XLA inserts the reductions itself."""
  mutable = ['batch_stats', 'diagnostics'] if diagnostics else ['batch_stats']

  def loss_fn(params):
    logits, updates = model.apply(
        {'params': params, 'batch_stats': state.batch_stats},
        batch['image'],
        train=True,
        mutable=mutable,
    )
    loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
    return loss, (logits, updates)

  (loss, (logits, updates)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  batch_stats = updates['batch_stats']
  metrics = {'loss': loss, 'error': jnp.mean(jnp.argmax(logits, -1) != batch['label'])}
  squared_norms = models.block_squared_norms(updates.get('diagnostics', {}))
  if axis_name is not None:
    grads, metrics, batch_stats, squared_norms = jax.lax.pmean(
        (grads, metrics, batch_stats, squared_norms), axis_name
    )
  metrics.update(residual_ratios(squared_norms))

  learning_rate = jnp.where(state.warmed_up, schedule(state.step), warmup_lr)
  opt_state = optim.set_learning_rate(state.opt_state, learning_rate)
  updates, opt_state = tx.update(grads, opt_state, state.params)
  grad_norm = optax.tree.norm(grads)
  updated = state.replace(
      params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats,
      opt_state=opt_state,
      warmed_up=state.warmed_up | (metrics['error'] < warmup_until_error),
  )
  # A non-finite loss or gradient leaves the state as it was, so no checkpoint ever holds NaNs;
  # the loop decides (train.max_skipped_steps) whether to go on or stop.
  finite = jnp.isfinite(metrics['loss']) & jnp.isfinite(grad_norm)
  new_state = jax.tree.map(lambda new, old: jnp.where(finite, new, old), updated, state)
  new_state = new_state.replace(
      step=state.step + 1, skipped_steps=state.skipped_steps + (~finite).astype(jnp.int32)
  )
  metrics.update(
      learning_rate=learning_rate,
      grad_norm=grad_norm,
      nonfinite=(~finite).astype(jnp.float32),
      skipped_steps=new_state.skipped_steps.astype(jnp.float32),
  )
  if diagnostics:
    metrics.update(grad_norms_by_stage(grads))
  return new_state, metrics


def make_train_step(
    run: Run, *, model: nn.Module, tx: optax.GradientTransformation
) -> Callable[..., tuple[TrainState, dict]]:
  """A run's step, `(state, batch, axis_name=None) -> (state, metrics)`: `train_step` with the
  run's schedule, warm-up, label smoothing and diagnostics. The trainer, the benchmarks and the
  tests all build their step here, so they run the same one."""
  return functools.partial(
      train_step,
      model=model,
      tx=tx,
      schedule=optim.learning_rate_schedule(run.schedule),
      warmup_lr=run.schedule.warmup_lr,
      warmup_until_error=run.schedule.warmup_until_error,
      label_smoothing=run.loop.label_smoothing,
      diagnostics=run.loop.log_diagnostics,
  )


def masked_sums(losses, scores, labels, mask) -> dict[str, jax.Array]:
  """Loss, top-1 and top-5 errors and count, summed over the examples of mask 1; `scores` rank the
  classes (logits, or probabilities averaged over views)."""
  top5 = jax.lax.top_k(scores, min(5, scores.shape[-1]))[1]
  return {
      'loss': jnp.sum(losses * mask),
      'top1_errors': jnp.sum((jnp.argmax(scores, -1) != labels) * mask),
      'top5_errors': jnp.sum(jnp.all(top5 != labels[:, None], axis=-1) * mask),
      'count': jnp.sum(mask),
  }


def eval_step(state: TrainState, batch, *, model: nn.Module, axis_name: str | None = None):
  """Sums over the real (mask == 1) examples of the batch, so that padding counts for nothing."""
  logits = model.apply(
      {'params': state.params, 'batch_stats': state.batch_stats}, batch['image'], train=False
  )
  losses = cross_entropy(logits, batch['label'])
  sums = masked_sums(losses, logits, batch['label'], batch['mask'])
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums
