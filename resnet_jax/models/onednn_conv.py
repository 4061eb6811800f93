"""oneDNN's convolutions (onednn_conv.cc) as XLA custom calls on the CPU, for flax's nn.Conv.

Each pass of a convolution (forward, input gradient, kernel gradient) is one oneDNN primitive on
NHWC activations, called from the compiled step through XLA's FFI; `conv_2d`'s custom VJP wires the
three into `jax.grad`. Why, and how the handlers are built and loaded: onednn.py.
"""

import functools

import jax
import numpy as np
from jax import lax

from resnet_jax.models import onednn
from resnet_jax.models.conv import NHWC, explicit_padding


def _call(target: str, shape, dtype, *operands, strides, padding):
  (pad_h_lo, pad_h_hi), (pad_w_lo, pad_w_hi) = padding
  return onednn.call(
      target,
      jax.ShapeDtypeStruct(shape, dtype),
      *operands,
      stride_h=strides[0],
      stride_w=strides[1],
      pad_h_lo=pad_h_lo,
      pad_h_hi=pad_h_hi,
      pad_w_lo=pad_w_lo,
      pad_w_hi=pad_w_hi,
  )


def _output_shape(x_shape, k_shape, strides, padding):
  (n, h, w, _), (kh, kw, _, o) = x_shape, k_shape
  return (
      n,
      (h + sum(padding[0]) - kh) // strides[0] + 1,
      (w + sum(padding[1]) - kw) // strides[1] + 1,
      o,
  )


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv_2d(x, k, strides: tuple[int, int], padding: tuple[tuple[int, int], tuple[int, int]]):
  """NHWC x HWIO -> NHWC in float32 on oneDNN."""
  shape = _output_shape(x.shape, k.shape, strides, padding)
  return _call('ResnetJaxOnednnConvForward', shape, x.dtype, x, k, strides=strides, padding=padding)


def _conv_fwd(x, k, strides, padding):
  return conv_2d(x, k, strides, padding), (x, k)


def _conv_bwd(strides, padding, residuals, dy):
  x, k = residuals
  dx = _call(
      'ResnetJaxOnednnConvInputGradient', x.shape, x.dtype, dy, k, strides=strides, padding=padding
  )
  dk = _call(
      'ResnetJaxOnednnConvKernelGradient', k.shape, k.dtype, x, dy, strides=strides, padding=padding
  )
  return dx, dk


conv_2d.defvjp(_conv_fwd, _conv_bwd)


def conv_general_dilated(
    lhs,
    rhs,
    window_strides,
    padding,
    lhs_dilation=None,
    rhs_dilation=None,
    dimension_numbers=None,
    feature_group_count=1,
    precision=None,
    **kwargs,
):
  """Stands in for lax.conv_general_dilated in flax's nn.Conv (`conv_general_dilated=this`), whose
  convolutions are NHWC x HWIO: float32 2-D ones without dilation or groups go to oneDNN, any
  other to XLA."""
  dilated = any(d != 1 for d in (lhs_dilation or ()) + (rhs_dilation or ()))
  if dilated or feature_group_count != 1 or lhs.ndim != 4 or lhs.dtype != np.float32:
    return lax.conv_general_dilated(
        lhs, rhs, window_strides, padding, lhs_dilation, rhs_dilation,
        dimension_numbers or NHWC, feature_group_count, precision=precision, **kwargs,
    )  # fmt: skip
  padding = explicit_padding(lhs, rhs, window_strides, padding)
  return conv_2d(lhs, rhs.astype(lhs.dtype), tuple(window_strides), padding)
