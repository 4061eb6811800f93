"""Product changes under trial, applied by patching flax while the project's step is traced.

They are measured here (train_step variant `fused_bn`) before anyone edits resnet_jax/models.py.
The kernel-gradient-as-matmul convolution started here and was adopted as
`model.conv_kernel_grad='matmul'` (resnet_jax/conv.py); BENCHMARKS.md has both verdicts.

- `fused_bn`: BatchNorm with a hand-written backward pass (two reductions and one elementwise
  pass) instead of autodiff through the mean and variance. Measured x0.94-1.08: dropped.
"""

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax


@functools.partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x, scale, bias, epsilon):
  return _bn_fwd(x, scale, bias, epsilon)[0]


def _bn_fwd(x, scale, bias, epsilon):
  axes = tuple(range(x.ndim - 1))
  x32 = x.astype(jnp.float32)
  mean = jnp.mean(x32, axes)
  var = jnp.maximum(jnp.mean(jnp.square(x32), axes) - jnp.square(mean), 0.0)
  inv = lax.rsqrt(var + epsilon)
  y = ((x32 - mean) * (inv * scale) + bias).astype(x.dtype)
  return (y, mean, var), (x, mean, inv, scale)


def _bn_bwd(epsilon, residuals, cotangents):
  del epsilon
  x, mean, inv, scale = residuals
  dy = cotangents[0].astype(jnp.float32)  # mean and var feed only the running averages
  axes = tuple(range(x.ndim - 1))
  count = x.size // x.shape[-1]
  xhat = (x.astype(jnp.float32) - mean) * inv
  dbias = jnp.sum(dy, axes)
  dscale = jnp.sum(dy * xhat, axes)
  dx = (scale * inv / count) * (count * dy - dbias - xhat * dscale)
  return dx.astype(x.dtype), dscale, dbias


batch_norm_train.defvjp(_bn_fwd, _bn_bwd)


class BatchNorm(nn.Module):
  """nn.BatchNorm's variables and running-average update, with batch_norm_train's backward pass.
  Named BatchNorm so that parameter paths (BatchNorm_0, ...) match the unpatched model's."""

  use_running_average: bool = False
  axis: int = -1
  momentum: float = 0.99
  epsilon: float = 1e-5
  dtype: object = None
  axis_name: str | None = None
  scale_init: object = nn.initializers.ones
  bias_init: object = nn.initializers.zeros

  @nn.compact
  def __call__(self, x):
    features = x.shape[-1]
    scale = self.param('scale', self.scale_init, (features,))
    bias = self.param('bias', self.bias_init, (features,))
    ra_mean = self.variable('batch_stats', 'mean', jnp.zeros, (features,))
    ra_var = self.variable('batch_stats', 'var', jnp.ones, (features,))
    if self.axis_name is not None:
      raise NotImplementedError('cross-device statistics (pmap): measured for the jit mode only')
    if self.use_running_average:
      inv = lax.rsqrt(ra_var.value + self.epsilon)
      return ((x - ra_mean.value) * (inv * scale) + bias).astype(self.dtype or x.dtype)
    y, mean, var = batch_norm_train(x, scale, bias, self.epsilon)
    if not self.is_initializing():
      ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
      ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
    return y.astype(self.dtype or x.dtype)


@contextlib.contextmanager
def patched(names: set[str]):
  """Within the block, flax's nn.BatchNorm (as the project's models look it up) is the candidate
  named: 'fused_bn'."""
  saved = nn.BatchNorm
  try:
    if 'fused_bn' in names:
      nn.BatchNorm = BatchNorm
    yield
  finally:
    nn.BatchNorm = saved
