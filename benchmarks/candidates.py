"""Product changes under trial, applied by patching flax while the project's step is traced.

They are measured here (train_step variants `dot_weight_grad`, `fused_bn`) before anyone edits
resnet_jax/models.py; BENCHMARKS.md gives the one-line change that would adopt each.

- `dot_weight_grad`: a convolution whose kernel gradient is one matrix product of image patches
  with the output gradient. XLA CPU computes that gradient as a convolution over a transposed
  (C, H, W, N) copy of every activation; in the profile of the ResNet-20 step those transposes
  (`transpose_copy_fusion`) are ~29% of the time. Forward and input gradient stay XLA's own.
- `fused_bn`: BatchNorm with a hand-written backward pass (two reductions and one elementwise
  pass) instead of autodiff through the mean and variance.
"""

import contextlib
import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _conv(x, w, strides, pads):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_2d(x, w, strides, pads):
  return _conv(x, w, strides, pads)


def _conv_fwd(x, w, strides, pads):
  return _conv(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, residuals, dy):
  x, w = residuals
  dx = jax.vjp(lambda x_: _conv(x_, w, strides, pads), x)[1](dy)[0]
  kh, kw, cin, cout = w.shape
  padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  (sh, sw), (oh, ow) = strides, dy.shape[1:3]
  # Patches in (kh, kw, cin) order, the HWIO kernel's own: dW = patches^T . dy over all pixels.
  patches = jnp.concatenate([padded[:, i:i + sh * (oh - 1) + 1:sh, j:j + sw * (ow - 1) + 1:sw, :]
                             for i in range(kh) for j in range(kw)], axis=-1)
  dw = lax.dot_general(patches.reshape(-1, kh * kw * cin), dy.reshape(-1, cout), (((0,), (0,)), ((), ())),
                       preferred_element_type=jnp.float32)
  return dx, dw.reshape(w.shape).astype(w.dtype)


conv_2d.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
                         dimension_numbers=None, feature_group_count=1, precision=None, **unused):
  """Drop-in for lax.conv_general_dilated in flax's nn.Conv (NHWC, no dilation, no groups)."""
  del dimension_numbers, precision, unused  # flax's 2-D convs are NHWC/HWIO
  if any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ())) or feature_group_count != 1:
    raise NotImplementedError('dilated or grouped convolutions')
  pads = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding) if isinstance(padding, str) else padding
  return conv_2d(lhs, rhs, tuple(window_strides), tuple(tuple(p) for p in pads))


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
  """Within the block, flax's nn.Conv / nn.BatchNorm (as the project's models look them up) are
  the candidates named: 'dot_weight_grad', 'fused_bn'."""
  saved = nn.Conv, nn.BatchNorm
  try:
    if 'dot_weight_grad' in names:
      nn.Conv = functools.partial(saved[0], conv_general_dilated=conv_general_dilated)
    if 'fused_bn' in names:
      nn.BatchNorm = BatchNorm
    yield
  finally:
    nn.Conv, nn.BatchNorm = saved
