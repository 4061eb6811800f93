"""jit and pmap, global and per-device BatchNorm: the same training on 8 simulated devices."""

import os
import pathlib
import subprocess
import sys

import jax
import numpy as np
import pytest

from configs import cifar10
from resnet_jax.training import parallel
from resnet_jax.config import resolve as run_lib
from resnet_jax.common.errors import UserError

# trained(num_devices, mode, batch_norm) is a fixture of tests/conftest.py.


def assert_close(a, b, rtol=2e-5, atol=2e-6):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, rtol=rtol, atol=atol), a, b)


@pytest.mark.parametrize('batch_norm', parallel.BATCH_NORMS)
def test_pmap_and_jit_give_the_same_parameters_and_batch_stats(trained, batch_norm):
  jit_state, jit_metrics = trained(8, 'jit', batch_norm)
  pmap_state, pmap_metrics = trained(8, 'pmap', batch_norm)
  assert_close(jit_state.params, pmap_state.params)
  assert_close(jit_state.batch_stats, pmap_state.batch_stats)
  assert int(pmap_state.step) == 3
  for a, b in zip(jit_metrics, pmap_metrics):
    assert a.keys() == b.keys()
    assert_close(a, b, rtol=1e-4, atol=1e-6)


def test_per_device_batch_norm_differs_from_global(trained):
  """Ghost batches (2 images a device here) really normalise per device."""
  global_state, ghost_state = trained(8, 'jit', 'global')[0], trained(8, 'jit', 'per_device')[0]
  leaves = zip(jax.tree.leaves(global_state.params), jax.tree.leaves(ghost_state.params))
  assert any(not np.allclose(a, b, rtol=1e-4) for a, b in leaves)


def test_per_device_batch_norm_on_one_device_is_global_batch_norm(trained):
  assert_close(trained(1, 'jit', 'global')[0].params, trained(1, 'jit', 'per_device')[0].params)


def test_unknown_mode_is_a_clear_error():
  config = cifar10.get_config('resnet8')
  config.parallelism.mode = 'pjit'
  with pytest.raises(
      UserError, match=r"--config.parallelism.mode='pjit' is not one of 'jit', 'pmap'"
  ):
    run_lib.check(config)


@pytest.mark.parametrize(
    'xla_flags,expected', [('', 4), ('--xla_force_host_platform_device_count=2', 2)]
)
def test_cpu_devices_splits_the_cpu_unless_the_launch_sets_a_count(xla_flags, expected):
  # parallelism.cpu_devices=4, as main.py applies it before JAX starts; XLA_FLAGS' count wins.
  code = (
      'from resnet_jax.training import parallel; parallel.split_cpu(4); import jax;'
      ' print(jax.device_count())'
  )
  result = subprocess.run(
      [sys.executable, '-c', code],
      env={**os.environ, 'XLA_FLAGS': xla_flags},
      cwd=pathlib.Path(__file__).parents[1],
      capture_output=True,
      text=True,
      check=True,
  )
  assert result.stdout.split()[-1] == str(expected)
