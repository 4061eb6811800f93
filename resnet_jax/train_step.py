"""The train state, the train step and the eval step: pure functions, the same for jit and pmap."""

from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from resnet_jax import optim


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  # The paper's ResNet-110 warm-up (section 4.2): lr stays at warmup_lr until this turns True.
  warmed_up: jax.Array


def create_train_state(rng, *, model: nn.Module, tx: optax.GradientTransformation, image_shape,
                       warmup: bool) -> TrainState:
  variables = model.init(rng, jnp.zeros((1, *image_shape), jnp.float32), train=False)
  return TrainState(step=jnp.zeros((), jnp.int32), params=variables['params'],
                    batch_stats=variables['batch_stats'], opt_state=tx.init(variables['params']),
                    warmed_up=jnp.asarray(not warmup))


def cross_entropy(logits, labels, label_smoothing: float = 0.0):
  targets = optax.smooth_labels(jax.nn.one_hot(labels, logits.shape[-1]), label_smoothing)
  return optax.softmax_cross_entropy(logits, targets)


def train_step(state: TrainState, batch, *, model: nn.Module, tx: optax.GradientTransformation,
               schedule: optax.Schedule, warmup_lr: float = 0.0, warmup_until_error: float = 0.8,
               label_smoothing: float = 0.0, axis_name: str | None = None):
  """One SGD step. Under pmap, `axis_name` names the device axis to average gradients over;
  under jit the batch is one global array and XLA inserts the reductions itself."""

  def loss_fn(params):
    logits, updates = model.apply({'params': params, 'batch_stats': state.batch_stats},
                                  batch['image'], train=True, mutable=['batch_stats'])
    loss = cross_entropy(logits, batch['label'], label_smoothing).mean()
    return loss, (logits, updates['batch_stats'])

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  error = jnp.mean(jnp.argmax(logits, -1) != batch['label'])
  if axis_name is not None:
    grads, loss, error = jax.lax.pmean((grads, loss, error), axis_name)

  learning_rate = jnp.where(state.warmed_up, schedule(state.step), warmup_lr)
  opt_state = optim.set_learning_rate(state.opt_state, learning_rate)
  updates, opt_state = tx.update(grads, opt_state, state.params)
  new_state = state.replace(
      step=state.step + 1,
      params=optax.apply_updates(state.params, updates),
      batch_stats=batch_stats,
      opt_state=opt_state,
      warmed_up=state.warmed_up | (error < warmup_until_error),
  )
  metrics = {'loss': loss, 'error': error, 'learning_rate': learning_rate,
             'grad_norm': optax.tree.norm(grads)}
  return new_state, metrics


def eval_step(state: TrainState, batch, *, model: nn.Module, axis_name: str | None = None):
  """Sums over the real (mask == 1) examples of the batch, so that padding counts for nothing."""
  logits = model.apply({'params': state.params, 'batch_stats': state.batch_stats},
                       batch['image'], train=False)
  mask = batch['mask']
  labels = batch['label']
  top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
  sums = {
      'loss': jnp.sum(cross_entropy(logits, labels) * mask),
      'top1_errors': jnp.sum((jnp.argmax(logits, -1) != labels) * mask),
      'top5_errors': jnp.sum(jnp.all(top5 != labels[:, None], axis=-1) * mask),
      'count': jnp.sum(mask),
  }
  if axis_name is not None:
    sums = jax.lax.psum(sums, axis_name)
  return sums
