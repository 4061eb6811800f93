"""The learning-rate schedule and the optax optimizer, from the config."""

import jax
import jax.numpy as jnp
import ml_collections
import optax

from resnet_jax.errors import UserError


def learning_rate_schedule(
    config: ml_collections.ConfigDict, *, steps_per_epoch: int, num_steps: int
) -> optax.Schedule:
  sched = config.schedule
  base_lr = sched.base_lr
  if sched.scale_lr_by_batch:
    base_lr *= config.train.batch_size / sched.scale_lr_by_batch
  if sched.name == 'piecewise':
    boundaries = sched.boundaries
    if sched.boundaries_epochs is not None:
      boundaries = [round(e * steps_per_epoch) for e in sched.boundaries_epochs]
    return optax.piecewise_constant_schedule(
        base_lr, {int(b): sched.decay_factor for b in boundaries}
    )
  if sched.name == 'cosine':
    warmup = sched.warmup_steps or round(sched.warmup_epochs * steps_per_epoch)
    return optax.warmup_cosine_decay_schedule(0.0, base_lr, warmup, max(num_steps, warmup + 1))
  raise UserError(f"unknown schedule {sched.name!r}; use 'piecewise' or 'cosine'")


def _kernels_only(params):
  return jax.tree.map(
      lambda p: p.ndim > 1, params
  )  # conv and dense kernels; not BN scales or biases


def create_optimizer(config: ml_collections.ConfigDict) -> optax.GradientTransformation:
  """SGD with momentum and weight decay; the learning rate is a hyperparameter set by the train step.

  Coupled decay adds wd * w to the gradient before momentum (L2 in the loss, as the paper);
  decoupled decay adds it after momentum (SGDW, Loshchilov & Hutter).
  """
  opt = config.optimizer
  mask = None if opt.weight_decay_on_all_params else _kernels_only
  decay = optax.add_decayed_weights(opt.weight_decay, mask=mask)
  momentum = optax.trace(decay=opt.momentum, nesterov=opt.nesterov)

  def sgd(learning_rate):
    order = (momentum, decay) if opt.decoupled_weight_decay else (decay, momentum)
    return optax.chain(*order, optax.scale_by_learning_rate(learning_rate))

  return optax.inject_hyperparams(sgd)(learning_rate=0.0)


def set_learning_rate(opt_state, learning_rate: jax.Array):
  """The optimizer state with this step's learning rate (inject_hyperparams keeps it in the state)."""
  hyperparams = {**opt_state.hyperparams, 'learning_rate': jnp.asarray(learning_rate, jnp.float32)}
  return opt_state._replace(hyperparams=hyperparams)
