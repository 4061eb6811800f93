"""Parameter and multiply-add counts of any model, from shapes alone (no compilation, no FLOP run).

Multiply-adds are counted as the paper's Table 1 counts them: every conv and fully-connected layer,
output elements x kernel fan-in. BatchNorm, ReLU, pooling and additions are left out, as there.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class ModelStats:
  params: int
  batch_stats: int
  multiply_adds: int  # per image, forward pass


def init_variables(model: nn.Module, image_shape, *, seed: int = 0, batch_size: int = 1):
  """Real initialisation: {'params': ..., 'batch_stats': ...} for images of shape (H, W, C)."""
  images = jnp.zeros((batch_size, *image_shape), jnp.float32)
  return model.init(jax.random.key(seed), images, train=False)


def abstract_variables(model: nn.Module, image_shape):
  """Shape-only initialisation (ShapeDtypeStructs): instant even for ResNet-1202."""
  return jax.eval_shape(lambda: init_variables(model, image_shape))


def count(tree) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def multiply_adds(model: nn.Module, image_shape) -> int:
  """Conv and dense multiply-adds for one image, traced abstractly through the real model."""
  total = 0

  def interceptor(next_fun, args, kwargs, context):
    nonlocal total
    out = next_fun(*args, **kwargs)
    module = context.module
    if context.method_name == '__call__' and isinstance(module, (nn.Conv, nn.Dense)):
      kernel = module.variables['params']['kernel']
      fan_in = int(np.prod(kernel.shape[:-1]))  # kh * kw * c_in for a conv, c_in for dense
      total += int(np.prod(out.shape[1:])) * fan_in  # output elements of one image x fan-in
    return out

  variables = abstract_variables(model, image_shape)
  images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  with nn.intercept_methods(interceptor):
    jax.eval_shape(lambda v, x: model.apply(v, x, train=False), variables, images)
  return total


def model_stats(model: nn.Module, image_shape) -> ModelStats:
  variables = abstract_variables(model, image_shape)
  return ModelStats(
      params=count(variables['params']),
      batch_stats=count(variables.get('batch_stats', {})),
      multiply_adds=multiply_adds(model, image_shape),
  )
