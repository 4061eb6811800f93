"""oneDNN's CPU kernels as XLA custom calls: the library behind `parallelism.cpu_backend=onednn`.

Why: XLA's CPU convolutions (YNNPACK's or Eigen's) run a ResNet step at under half of PyTorch's
speed on the same CPU. PyTorch's CPU convolutions are oneDNN's, which read and write channels-last
(NHWC) activations directly and spread one convolution over every core (BENCHMARKS.md, "CPU step
against PyTorch").
Here oneDNN's primitives are called from the compiled step through XLA's FFI: the convolutions'
three passes (onednn_conv.py and .cc); the rest of the step (BatchNorm, ReLU, the loss, the
optimizer) stays XLA's: a oneDNN BatchNorm made the step slower (BENCHMARKS.md, "oneDNN
convolutions").

oneDNN comes from PyPI (onednn-cpu-gomp and its headers, onednn-devel-cpu-gomp: requirements.txt,
x86-64 Linux); the handlers are compiled on first use with the machine's C++ compiler into one
library in the user's cache directory (`library_path()`), keyed by everything that goes into it,
so later runs load it at once. Where any of that is missing, `unavailable()` says what, and the CPU
backend's measurement leaves oneDNN out (resnet_jax/training/cpu_backend.py). Only the CPU backend
turns this on, and only for a CPU step: GPU and TPU programs never contain these custom calls
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

HERE = pathlib.Path(__file__).parent
SOURCES = (HERE / 'onednn_conv.cc',)
HEADER = HERE / 'onednn_common.h'
# The FFI targets, as the C++ files name their handlers.
TARGETS = (
    'ResnetJaxOnednnConvForward',
    'ResnetJaxOnednnConvInputGradient',
    'ResnetJaxOnednnConvKernelGradient',
)
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
  sources, the FFI headers' jaxlib and oneDNN's version header, so that a change in any of them
  compiles again (and a machine that has built them needs no compiler after)."""
  digest = hashlib.sha256()
  for part in (
      *(source.read_bytes() for source in (*SOURCES, HEADER)),
      jaxlib.__version__.encode(),
      (root / 'include/oneapi/dnnl/dnnl_version.h').read_bytes(),
  ):
    digest.update(part)
  cache = os.environ.get('XDG_CACHE_HOME') or os.path.join(os.path.expanduser('~'), '.cache')
  return pathlib.Path(cache) / 'resnet_jax' / f'onednn-{digest.hexdigest()[:16]}.so'


def _compile(root: pathlib.Path, compiler: str, target: pathlib.Path) -> None:
  target.parent.mkdir(parents=True, exist_ok=True)
  partial = target.with_name(f'{target.name}.{os.getpid()}.tmp')  # two processes may both build
  command = [
      compiler, '-O2', '-std=c++17', '-shared', '-fPIC', '-w', *map(str, SOURCES),
      f'-I{jax.ffi.include_dir()}', f'-I{root / "include"}',
      f'-L{root / "lib"}', '-l:libdnnl.so.3', f'-Wl,-rpath,{root / "lib"}', '-o', str(partial),
  ]  # fmt: skip
  done = subprocess.run(command, capture_output=True, text=True, check=False)
  if done.returncode:
    last = (done.stderr.strip().splitlines() or ['no output'])[-1]
    raise Unavailable(f'compiling {", ".join(s.name for s in SOURCES)} failed ({compiler}: {last})')
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
    return f'no C++ compiler ({os.environ.get("CXX", "g++")}) to build the oneDNN handlers'
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
  for target in TARGETS:
    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(library, target)), platform='cpu')
  return None


def call(target: str, results, *operands, **attributes):
  """One custom call of a handler: `results` the ShapeDtypeStruct (or a tuple of them) it writes,
  `attributes` its integer, float and bool settings."""
  if reason := unavailable():  # at trace time: the handlers must be registered before it runs
    raise Unavailable(reason)
  # Under vmap (per-example gradients, say) each example is its own call.
  ffi_call = jax.ffi.ffi_call(target, results, vmap_method='sequential')
  typed = {
      name: np.int64(v) if isinstance(v, int) and not isinstance(v, bool) else v
      for name, v in attributes.items()
  }
  return ffi_call(*operands, **typed)
