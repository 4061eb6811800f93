"""oneDNN's convolutions as XLA custom calls on the CPU: `parallelism.cpu_backend=onednn`.

Why: XLA's CPU convolutions (YNNPACK's or Eigen's) run a ResNet step at under half of PyTorch's
speed on the same CPU. PyTorch's CPU convolutions are oneDNN's, which read and write channels-last
(NHWC) activations directly and spread one convolution over every core; XLA's run on one core each
and copy each activation into a (C, H, W, N) layout for its kernel gradient (BENCHMARKS.md, "CPU
step against PyTorch"). Here each pass of a convolution (forward, input gradient, kernel gradient)
is one oneDNN primitive, called from the compiled step through XLA's FFI (onednn_conv.cc), and
the rest of the step (BatchNorm, ReLU, the optimizer) stays XLA's.

oneDNN comes from PyPI (onednn-cpu-gomp and its headers, onednn-devel-cpu-gomp: requirements.txt,
x86-64 Linux); the handlers are compiled on first use with the machine's C++ compiler into the
user's cache directory (`library_path()`), keyed by everything that goes into them, so later runs
load them at once. Where any of that is missing, `unavailable()` says what, and the CPU backend's
measurement leaves oneDNN out (resnet_jax/training/cpu_backend.py). Only the CPU backend turns this
on, and only for a CPU step: GPU and TPU programs never contain these custom calls
(tests/test_cpu_backend.py lowers the steps for cuda and tpu).
"""

import ctypes
import functools
import hashlib
import os
import pathlib
import shutil
import site
import subprocess
import sys

import jax
import jaxlib
import numpy as np
from jax import lax

from resnet_jax.models.conv import NHWC, explicit_padding

SOURCE = pathlib.Path(__file__).with_suffix('.cc')
# The FFI targets, as the C++ file names its handlers.
PASSES = {
    'forward': 'ResnetJaxOnednnConvForward',
    'input_gradient': 'ResnetJaxOnednnConvInputGradient',
    'kernel_gradient': 'ResnetJaxOnednnConvKernelGradient',
}
INSTALL = (
    'pip install -r requirements.txt (onednn-cpu-gomp, onednn-devel-cpu-gomp) and a C++ compiler'
)


class Unavailable(RuntimeError):
  """oneDNN cannot run here; the message says what is missing."""


def _onednn_root() -> pathlib.Path | None:
  """The prefix the oneDNN wheels installed into: the environment's, or the user's (pip --user)."""
  for root in (sys.prefix, site.getuserbase()):
    root = pathlib.Path(root)
    if (root / 'include/oneapi/dnnl/dnnl.hpp').exists() and (root / 'lib/libdnnl.so.3').exists():
      return root
  return None


def _compiler() -> str | None:
  return shutil.which(os.environ.get('CXX', 'g++'))


def library_path(root: pathlib.Path) -> pathlib.Path:
  """Where the compiled handlers live: under the user's cache directory, named by a hash of the
  source, the FFI headers' jaxlib and oneDNN's version header, so that a change in any of them
  compiles again (and a machine that has built them needs no compiler after)."""
  digest = hashlib.sha256()
  for part in (
      SOURCE.read_bytes(),
      jaxlib.__version__.encode(),
      (root / 'include/oneapi/dnnl/dnnl_version.h').read_bytes(),
  ):
    digest.update(part)
  cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return pathlib.Path(cache) / 'resnet_jax' / f'onednn_conv-{digest.hexdigest()[:16]}.so'


def _compile(root: pathlib.Path, compiler: str, target: pathlib.Path) -> None:
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.with_name(f'{target.name}.{os.getpid()}.tmp')  # two processes may both build
  command = [
      compiler, '-O2', '-std=c++17', '-shared', '-fPIC', '-w', str(SOURCE),
      f'-I{jax.ffi.include_dir()}', f'-I{root / "include"}',
      f'-L{root / "lib"}', '-l:libdnnl.so.3', f'-Wl,-rpath,{root / "lib"}', '-o', str(partial),
  ]  # fmt: skip
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  if done.returncode:
    last = (done.stderr.strip().splitlines() or ['no output'])[-1]
    raise Unavailable(f'compiling {SOURCE.name} failed ({compiler}: {last})')
  os.replace(partial, target)


def missing() -> str | None:
  """What this machine lacks to build the handlers (the platform, oneDNN's files, a compiler), or
  None; cheap, and touches no JAX device: the CPU split (parallel.auto_cpu_devices) asks it
  before JAX starts."""
  if sys.platform != 'linux' or os.uname().machine != 'x86_64':
    return f'oneDNN from PyPI is for x86-64 Linux, not {sys.platform} {os.uname().machine}'
  root = _onednn_root()
  if root is None:
    return f'oneDNN and its headers are not installed: {INSTALL}'
  if not library_path(root).exists() and _compiler() is None:
    return f'no C++ compiler ({os.environ.get("CXX", "g++")}) to build {SOURCE.name}'
  return None


@functools.cache
def unavailable() -> str | None:
  """Why oneDNN cannot run in this process, or None when it can: then the handlers are compiled
  (once a machine), loaded and registered with XLA (once a process)."""
  if reason := missing():
    return reason
  root = _onednn_root()
  path = library_path(root)
  try:
    if not path.exists():
      _compile(root, _compiler(), path)
    library = ctypes.CDLL(str(path))
  except (Unavailable, OSError) as e:
    return str(e)
  for target in PASSES.values():
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)), platform='cpu')
  return None


def _call(name: str, shape, dtype, *operands, strides, padding):
  if reason := unavailable():  # at trace time: the handlers must be registered before it runs
    raise Unavailable(reason)
  (pad_h_lo, pad_h_hi), (pad_w_lo, pad_w_hi) = padding
  attributes = dict(
      stride_h=strides[0],
      stride_w=strides[1],
      pad_h_lo=pad_h_lo,
      pad_h_hi=pad_h_hi,
      pad_w_lo=pad_w_lo,
      pad_w_hi=pad_w_hi,
  )
  # Under vmap (per-example gradients, say) each example is its own call.
  call = jax.ffi.ffi_call(
      PASSES[name], jax.ShapeDtypeStruct(shape, dtype), vmap_method='sequential'
  )
  return call(*operands, **{k: np.int64(v) for k, v in attributes.items()})


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
  return _call('forward', shape, x.dtype, x, k, strides=strides, padding=padding)


def _conv_fwd(x, k, strides, padding):
  return conv_2d(x, k, strides, padding), (x, k)


def _conv_bwd(strides, padding, residuals, dy):
  x, k = residuals
  dx = _call('input_gradient', x.shape, x.dtype, dy, k, strides=strides, padding=padding)
  dk = _call('kernel_gradient', k.shape, k.dtype, x, dy, strides=strides, padding=padding)
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
