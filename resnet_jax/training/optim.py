"""The learning-rate schedule and the optax optimizer, from a resolved run
(resnet_jax/config/resolve.py)."""

import jax
import jax.numpy as jnp
import optax

from resnet_jax.config.run import OptimizerSpec, ScheduleSpec


def learning_rate_schedule(schedule: ScheduleSpec) -> optax.Schedule:
  """The step -> learning rate function of a resolved schedule (run.ScheduleSpec)."""
  if schedule.name == 'piecewise':
    return optax.piecewise_constant_schedule(
        schedule.base_lr, {b: schedule.decay_factor for b in schedule.boundaries}
    )
  warmup = schedule.warmup_steps  # 'cosine'
  return optax.warmup_cosine_decay_schedule(
      0.0, schedule.base_lr, warmup, max(schedule.num_steps, warmup + 1)
  )


def _kernels_only(params):
  # conv and dense kernels; not BN scales or biases
  return jax.tree.map(lambda p: p.ndim > 1, params)


def create_optimizer(opt: OptimizerSpec) -> optax.GradientTransformation:
  """SGD with momentum and weight decay.

  The learning rate is a hyperparameter set by the train step.

  Coupled decay adds wd * w to the gradient before momentum (L2 in the loss, as the paper);
  decoupled decay adds it after momentum (SGDW, Loshchilov & Hutter).
  """
  mask = None if opt.weight_decay_on_all_params else _kernels_only
  decay = optax.add_decayed_weights(opt.weight_decay, mask=mask)
  momentum = optax.trace(decay=opt.momentum, nesterov=opt.nesterov)

  def sgd(learning_rate):
    order = (momentum, decay) if opt.decoupled_weight_decay else (decay, momentum)
    return optax.chain(*order, optax.scale_by_learning_rate(learning_rate))

  return optax.inject_hyperparams(sgd)(learning_rate=0.0)


def set_learning_rate(opt_state, learning_rate: jax.Array):
  """The optimizer state with this step's learning rate.

  inject_hyperparams keeps it in the state.
  """
  hyperparams = {**opt_state.hyperparams, 'learning_rate': jnp.asarray(learning_rate, jnp.float32)}
  return opt_state._replace(hyperparams=hyperparams)
