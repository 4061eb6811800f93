"""glibc's malloc told to keep the memory a step frees, for the next step: CPU steps stop paying
for fresh pages every step.

Why: XLA's CPU runtime allocates each execution's temporary buffers (every activation a training
step keeps for its backward pass: 285 MB for ResNet-20 at batch 128) as one block and frees it
when the step ends. A block that large is beyond glibc's mmap threshold (at most 32 MB) and
beyond a thread arena's heap (64 MB), so glibc maps it fresh from the kernel and unmaps it again,
every step: 73,000 page faults a step, each page zeroed by the kernel, about a third of the step
(BENCHMARKS.md, "Page faults"). With one arena (the main one, which can grow its heap), no mmap
and a trim threshold above any step's temporaries, the freed block stays in the heap and the next
step reuses it. PyTorch's CPU step gains from the same setting, so the benchmarks that compare
the two apply it to both.

What it costs: memory a process has freed is not returned to the system until it exits (its peak
stays resident), and every thread allocates from one arena. A host that feeds an accelerator
keeps glibc's defaults: its steps' temporaries live on the device, and its input pipeline's
threads would share the one arena. `RESNET_JAX_HOST_MALLOC=default` leaves glibc alone anywhere.
"""

import ctypes
import ctypes.util
import importlib.util
import os
import platform

ENV = 'RESNET_JAX_HOST_MALLOC'
# mallopt's parameters (glibc's malloc.h).
M_TRIM_THRESHOLD, M_MMAP_MAX, M_ARENA_MAX = -1, -4, -8
KEEP_UP_TO = 2**31 - 1  # bytes of freed memory at the heap's top that are not trimmed (an int)
# JAX's accelerator plugins: with one installed, the steps' memory is the device's.
ACCELERATOR_PLUGINS = (
    'jax_cuda12_plugin',
    'jax_cuda13_plugin',
    'jax_rocm6_plugin',
    'jax_rocm7_plugin',
    'libtpu',
)

kept: str | None = None  # why not, once keep_freed_memory has run; None while it has not


def _why_not() -> str | None:
  if os.environ.get(ENV) == 'default':
    return f'{ENV}=default'
  if platform.system() != 'Linux' or platform.libc_ver()[0] != 'glibc':
    return 'not glibc'
  installed = [p for p in ACCELERATOR_PLUGINS if importlib.util.find_spec(p) is not None]
  if installed:
    return f'an accelerator plugin ({installed[0]}) is installed'
  return None


def keep_freed_memory() -> str:
  """Sets glibc's malloc to keep freed memory (see above), once a process; must run before JAX
  starts its CPU backend, whose threads take an arena at their first allocation. Returns what it
  did: 'kept', or why not."""
  global kept
  if kept is None:
    kept = _why_not() or 'kept'
    if kept == 'kept':
      libc = ctypes.CDLL(ctypes.util.find_library('c'))
      for option, value in ((M_ARENA_MAX, 1), (M_MMAP_MAX, 0), (M_TRIM_THRESHOLD, KEEP_UP_TO)):
        if not libc.mallopt(option, value):
          kept = f'mallopt({option}, {value}) failed'
          break
  return kept


def describe() -> str:
  """For the console's CPU line: whether freed host memory is kept for the next step."""
  if kept == 'kept':
    return 'freed host memory kept for the next step'
  return f'host memory: glibc defaults ({kept or "not set"})'
