"""Parameter and multiply-add counts of any model, from shapes alone (no compilation, no FLOP run).

Multiply-adds are counted as the paper's Table 1 counts them: every conv and fully-connected layer,
output elements x kernel fan-in. BatchNorm, ReLU, pooling and additions are left out, as there.
"""

import dataclasses

import flax.linen as nn
import jax
import jax.extend.core as jex
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
  """Shape-only initialisation (ShapeDtypeStructs), with the model's own variable layout."""
  return jax.eval_shape(lambda: init_variables(model, image_shape))


def count(tree) -> int:
  return int(sum(np.prod(leaf.shape) for leaf in jax.tree.leaves(tree)))


def _counting_twin(model: nn.Module) -> nn.Module:
  """The same network with each stage's repeated blocks as one scan: the same variables (stacked)
  and the same function, but traced once per stage instead of once per block, which turns the
  minute ResNet-1202 takes to trace into a tenth of a second."""
  return model.clone(scan_blocks=True) if hasattr(model, 'scan_blocks') else model


def _multiply_adds_of(jaxpr: jex.Jaxpr) -> int:
  """Conv and matmul multiply-adds of a traced program, scan bodies counted once per iteration."""
  total = 0
  for eqn in jaxpr.eqns:
    name = eqn.primitive.name
    if name in ('conv_general_dilated', 'dot_general'):
      out_elements = int(np.prod(eqn.outvars[0].aval.shape))
    if name == 'conv_general_dilated':
      kernel = eqn.invars[1].aval.shape
      out_channels = kernel[eqn.params['dimension_numbers'].rhs_spec[0]]
      total += out_elements * int(np.prod(kernel)) // out_channels  # x kh * kw * c_in / groups
    elif name == 'dot_general':
      (contracting, _), _ = eqn.params['dimension_numbers']
      lhs = eqn.invars[0].aval.shape
      total += out_elements * int(np.prod([lhs[axis] for axis in contracting]))
    repeats = eqn.params['length'] if name == 'scan' else 1
    for inner in jex.jaxprs_in_params(eqn.params):
      total += repeats * _multiply_adds_of(inner)
  return total


def multiply_adds(model: nn.Module, image_shape) -> int:
  """Conv and dense multiply-adds for one image: the forward pass traced (never compiled or run)
  on shapes alone and its convolutions and matrix products counted."""
  model = _counting_twin(model)
  variables = abstract_variables(model, image_shape)
  images = jax.ShapeDtypeStruct((1, *image_shape), jnp.float32)
  traced = jax.make_jaxpr(lambda v, x: model.apply(v, x, train=False))(variables, images)
  return _multiply_adds_of(traced.jaxpr)


def parameter_count(model: nn.Module, image_shape) -> int:
  return count(abstract_variables(_counting_twin(model), image_shape)['params'])


def model_stats(model: nn.Module, image_shape) -> ModelStats:
  variables = abstract_variables(_counting_twin(model), image_shape)
  return ModelStats(
      params=count(variables['params']),
      batch_stats=count(variables.get('batch_stats', {})),
      multiply_adds=multiply_adds(model, image_shape),
  )
