"""The host memory setting (resnet_jax/common/host_memory.py): a CPU program's large buffers are
reused from one call to the next instead of being mapped fresh from the kernel, page by page."""

import os
import pathlib
import subprocess
import sys

import pytest

from resnet_jax.common import host_memory

REPO = pathlib.Path(__file__).parents[1]
# A step's temporaries as XLA's CPU runtime makes them: one 256 MiB block, allocated by a worker
# thread, written, freed, three steps in a row; the faults of the last step are printed.
SIZE = 256 * 2**20
PAGE_FAULTS = f"""
import ctypes, ctypes.util, resource, sys, threading
from resnet_jax.common import host_memory
if sys.argv[1] == 'kept':
  assert host_memory.keep_freed_memory() == 'kept'
libc = ctypes.CDLL(ctypes.util.find_library('c'))
libc.malloc.restype = ctypes.c_void_p
libc.free.argtypes = [ctypes.c_void_p]
faults = []
def steps():
  for _ in range(3):
    before = resource.getrusage(resource.RUSAGE_THREAD).ru_minflt
    block = libc.malloc({SIZE})
    ctypes.memset(block, 1, {SIZE})
    libc.free(block)
    faults.append(resource.getrusage(resource.RUSAGE_THREAD).ru_minflt - before)
worker = threading.Thread(target=steps)
worker.start()
worker.join()
print(faults[-1])
"""


def faults_in_a_step(setting: str) -> float:
  env = {'PATH': '/usr/bin:/bin', 'PYTHONPATH': str(REPO)}
  done = subprocess.run(
      [sys.executable, '-c', PAGE_FAULTS, setting],
      capture_output=True,
      text=True,
      env=env,
      cwd=REPO,
      check=False,
  )
  assert done.returncode == 0, done.stderr[-2000:]
  return float(done.stdout.split()[-1])


def why_not_on_this_machine() -> str | None:
  """Why the setting cannot apply here, the suite's own opt-out (tests/conftest.py) aside."""
  saved = os.environ.pop(host_memory.ENV, None)
  try:
    return host_memory._why_not()
  finally:
    if saved is not None:
      os.environ[host_memory.ENV] = saved


@pytest.mark.skipif(why_not_on_this_machine() is not None, reason=str(why_not_on_this_machine()))
def test_kept_memory_spares_the_page_faults_of_every_step():
  pages = SIZE / 4096
  assert faults_in_a_step('default') > 0.9 * pages  # glibc maps the block afresh every step
  assert faults_in_a_step('kept') < 0.01 * pages  # and now reuses the last step's memory


def test_it_stays_off_where_it_does_not_apply(monkeypatch):
  monkeypatch.setenv(host_memory.ENV, 'default')
  assert host_memory._why_not() == 'RESNET_JAX_HOST_MALLOC=default'
  monkeypatch.delenv(host_memory.ENV)
  real = host_memory.importlib.util.find_spec
  monkeypatch.setattr(
      host_memory.importlib.util,
      'find_spec',
      lambda name: object() if name == 'jax_cuda13_plugin' else real(name),
  )
  assert host_memory._why_not() == 'an accelerator plugin (jax_cuda13_plugin) is installed'
