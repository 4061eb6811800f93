"""A 2-D convolution whose kernel gradient is one matrix product: `model.conv_kernel_grad='matmul'`.

Why: XLA's CPU backend computes a convolution's kernel gradient as another convolution over a
(C, H, W, N) copy of the layer's input, and those layout copies take a large share of a CPU step
(BENCHMARKS.md, "Where a ResNet-20 step's time goes"). Written as patches^T . dy, the gradient
is a single large matmul over all pixels, with no transposed copy of the activation, which speeds
up a step on one CPU device (BENCHMARKS.md, "What each lever changed"). The forward pass and
the input gradient stay XLA's own. The patches are kh*kw times the layer's input, so the option
trades memory for speed; GPUs and TPUs have fast native kernel gradients and keep the default
`'xla'`.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

NHWC = ('NHWC', 'HWIO', 'NHWC')


def _conv(x, w, strides, pads):
  return lax.conv_general_dilated(x, w, strides, pads, dimension_numbers=NHWC)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_2d(x, w, strides: tuple[int, int], pads: tuple[tuple[int, int], ...]):
  """NHWC x HWIO -> NHWC, no dilation, one group."""
  return _conv(x, w, strides, pads)


def _conv_fwd(x, w, strides, pads):
  return _conv(x, w, strides, pads), (x, w)


def _conv_bwd(strides, pads, residuals, dy):
  x, w = residuals
  dx = jax.vjp(lambda x_: _conv(x_, w, strides, pads), x)[1](dy)[0]
  kh, kw, cin, cout = w.shape
  padded = jnp.pad(x, ((0, 0), pads[0], pads[1], (0, 0)))
  (sh, sw), (oh, ow) = strides, dy.shape[1:3]
  # Patches in (kh, kw, cin) order, the HWIO kernel's own, so dW = patches^T . dy needs no
  # reshuffle.
  patches = jnp.concatenate(
      [
          padded[:, i : i + sh * (oh - 1) + 1 : sh, j : j + sw * (ow - 1) + 1 : sw, :]
          for i in range(kh)
          for j in range(kw)
      ],
      axis=-1,
  )
  dw = lax.dot_general(
      patches.reshape(-1, kh * kw * cin),
      dy.reshape(-1, cout),
      (((0,), (0,)), ((), ())),
      preferred_element_type=jnp.float32,
  )
  return dx, dw.reshape(w.shape).astype(w.dtype)


conv_2d.defvjp(_conv_fwd, _conv_bwd)


def conv_with_matmul_kernel_grad(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **unused,
):
  """Stands in for lax.conv_general_dilated in flax's nn.Conv.

  Used as `nn.Conv(..., conv_general_dilated=this)`.
  """
  del dimension_numbers, precision, unused  # flax's 2-D convolutions are NHWC x HWIO
  if any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ())) or feature_group_count != 1:
    raise NotImplementedError(
        "conv_kernel_grad='matmul' supports undilated, ungrouped convolutions only"
    )
  return conv_2d(
      lhs, rhs, tuple(window_strides), explicit_padding(lhs, rhs, window_strides, padding)
  )


def explicit_padding(lhs, rhs, window_strides, padding) -> tuple[tuple[int, int], ...]:
  """nn.Conv's padding ('SAME', 'VALID' or pairs) as (low, high) pairs per spatial axis."""
  if isinstance(padding, str):
    padding = lax.padtype_to_pads(lhs.shape[1:3], rhs.shape[:2], window_strides, padding)
  return tuple(tuple(p) for p in padding)
