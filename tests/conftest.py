"""Every test sees 8 simulated CPU devices, like a small TPU slice, so sharding is exercised, and
one CPU backend.

Also the training helpers that several test modules share, as fixtures: test modules do not import
each other, nor this file (pytest imports it under its own name, so an import would run it twice).
"""

import functools
import os

os.environ['XLA_FLAGS'] = ' '.join(
    f for f in (os.environ.get('XLA_FLAGS', ''), '--xla_force_host_platform_device_count=8') if f
)
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')
# One CPU backend for every test and CLI run (cpu_backend.ENV_OVERRIDE): runs that tests compare
# are compiled alike, and no test spends time measuring (tests/test_cpu_backend.py measures).
# Eigen: on every CPU measured at least as fast as XLA's default (BENCHMARKS.md).
os.environ.setdefault('RESNET_JAX_CPU_BACKEND', 'eigen')
# glibc's defaults for the suite's processes and the CLIs they start: the host memory setting
# (resnet_jax/common/host_memory.py) speeds up large steps, and the suite's are small; with it the
# fresh-clone suite took 11:42 against 9:56 without (BENCHMARKS.md, "Page faults").
# tests/test_host_memory.py checks the setting itself.
os.environ.setdefault('RESNET_JAX_HOST_MALLOC', 'default')
# JAX's persistent compilation cache, shared by the test processes and the CLIs they start: the
# many short runs of the same small configs compile each program once per machine, not once per
# process. Keyed by the program, the compile options and jaxlib, so a hit is the same executable.
os.environ.setdefault(
    'JAX_COMPILATION_CACHE_DIR',
    os.path.join(os.path.dirname(os.path.dirname(__file__)), '.pytest_cache', 'jax_compilation'),
)
# Every compile, not only those over JAX's default 1 s: most of a short CLI run's programs compile
# in less, and each fresh process compiled them again (resnet8's 30-step digits run on the Zen 2 of
# BENCHMARKS.md: 18.9-19.4 s, 13.2-15.7 s with this).
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')

# Imported after XLA_FLAGS is set, so that JAX sees the 8 devices whichever module starts it.
import jax  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from configs import cifar10  # noqa: E402
from resnet_jax.config import run as run_spec  # noqa: E402
from resnet_jax.training import parallel  # noqa: E402
from resnet_jax.config import resolve as run_lib  # noqa: E402
from resnet_jax.training.setup import Setup  # noqa: E402


def pytest_configure(config):
  config.addinivalue_line(
      'markers', 'slow: an end-to-end run through the CLI (few; they run in CI too)'
  )


def _small_run(**config_overrides) -> run_spec.Run:
  """resnet8's run (with `{'section.field': value}` config overrides) on made-up data: 1,000 steps,
  100 steps an epoch, 8x8x3 images of 10 classes."""
  config = cifar10.get_config('resnet8')
  config.train.update(batch_size=16, eval_batch_size=16, num_steps=1000)
  for key, value in config_overrides.items():
    section, field = key.split('.')
    config[section][field] = value
  facts = run_spec.DatasetFacts(10, (8, 8, 3), 100 * config.train.batch_size, 0)
  return run_lib.resolve(config, dataset=facts, device_count=1, process_count=1)


def _batches(num, batch_size=16, shape=(8, 8, 3), seed=0):
  """`num` host batches of random images and labels."""
  rng = np.random.default_rng(seed)
  return [
      {
          'image': rng.normal(size=(batch_size, *shape)).astype(np.float32),
          'label': rng.integers(0, 10, size=batch_size).astype(np.int32),
      }
      for _ in range(num)
  ]


def _run_steps(mesh, data, mode='jit', batch_norm='global', **overrides):
  """Trains resnet8 on `data` with the given parallelism; returns the global state and metrics."""
  run = _small_run(**overrides)
  setup = Setup(run, parallel.DataParallel(mode, batch_norm, mesh))  # as training builds it
  data_parallel = setup.data_parallel
  state = data_parallel.to_devices(setup.fresh_state())
  step = data_parallel.compile_train_step(setup.train_step_fn())
  history = []
  for batch in data:
    state, metrics = step(state, data_parallel.place_batch(batch))
    history.append(data_parallel.fetch(metrics))
  return jax.device_get(data_parallel.to_global(state)), history


@functools.lru_cache(maxsize=None)
def _trained(num_devices: int, mode: str = 'jit', batch_norm: str = 'global'):
  """Three steps on the same global batches, once per configuration (compiling dominates)."""
  return _run_steps(parallel.make_mesh(jax.devices()[:num_devices]), _batches(3), mode, batch_norm)


# The fixtures hand out the functions themselves: tests call them with their own arguments, and
# `trained`'s cache is the session's, whichever module asks first.


@pytest.fixture(name='small_run', scope='session')
def small_run_fixture():
  return _small_run


@pytest.fixture(name='batches', scope='session')
def batches_fixture():
  return _batches


@pytest.fixture(name='run_steps', scope='session')
def run_steps_fixture():
  return _run_steps


@pytest.fixture(name='trained', scope='session')
def trained_fixture():
  return _trained


# ------------------------------------------------------------------ scheduling over xdist workers
#
# `make test` runs `pytest -n 2`, and pyproject.toml adds `--dist=loadgroup`, which this file's
# scheduler implements (xdist's own loadgroup marks no longer reach the node ids under pytest 9):
# the tests of a group below run on one worker, so a module fixture that trains or runs the CLI is
# computed once, not once on each worker; and units are handed out in the order set here, the
# longest first, so the short ones fill in at the end. Only where and when tests run changes:
# without -n every test runs as before.

# Node id prefix -> group: the tests that share an expensive module fixture (or conftest's
# per-process `trained` cache). A test left out still passes, computing the fixture again.
_GROUPS = {
    'tests/test_reliability.py::test_sigterm_': 'reliability_uninterrupted',
    'tests/test_reliability.py::test_kill_9_': 'reliability_uninterrupted',
    'tests/test_reliability.py::test_bad_input_': 'reliability_uninterrupted',
    'tests/test_reliability.py::test_a_config_that_cannot_be_built': 'reliability_uninterrupted',
    'tests/test_reliability.py::test_a_resume_': 'reliability_uninterrupted',
    'tests/test_reliability.py::test_a_full_disk_outside_': 'reliability_uninterrupted',
    'tests/test_multihost.py::': 'multihost',
    'tests/test_parallel.py::test_p': 'trained',
    'tests/test_train_step.py::test_eight_device_step_equals_one': 'trained',
    'tests/test_train_step.py::test_step_updates_params': 'trained',
    'tests/test_console.py::': 'console',
    'tests/test_predict.py::': 'predict',
    'tests/test_interop.py::test_import_evaluate_': 'interop_imported',
    'tests/test_interop.py::test_fine_tuning_': 'interop_imported',
    'tests/test_config_checks.py::test_a_': 'config_checks',
    'tests/test_evaluation.py::': 'evaluation',
    'tests/test_input_pipeline.py::': 'input_pipeline',
    'tests/test_imagenet_preprocessing.py::': 'imagenet_preprocessing',
    'tests/test_sklearn_digits.py::': 'sklearn_digits',
    'tests/test_install.py::': 'install',
}

# The longest units first (groups by name, other tests by node id prefix), as measured on the
# 2-core machine; everything else follows in collection order.
_LONGEST_FIRST = (
    'reliability_uninterrupted',
    'multihost',
    'tests/test_benchmarks_smoke.py::test_every_benchmark_cli_writes_json',
    'tests/test_sweep.py::test_a_tiny_sweep',
    'trained',
    'tests/test_main.py::test_imagenet_on_mock_data',
    'tests/test_main.py::test_resnet20_learns_real_digits',
    'console',
    'predict',
    'interop_imported',
    'tests/test_main.py::test_cifar10_on_mock_data',
    'tests/test_reliability.py',
    'tests/test_models.py::test_matmul_kernel_gradients_equal_xla_ones',
    'tests/test_without_tensorflow.py',
    'tests/test_padding.py',
    'tests/test_models.py',
    'tests/test_train_step.py',
    'config_checks',
    'evaluation',
    'input_pipeline',
)


def _group(nodeid: str) -> str | None:
  return next((g for prefix, g in _GROUPS.items() if nodeid.startswith(prefix)), None)


def _rank(nodeid: str) -> int:
  group = _group(nodeid)
  for i, key in enumerate(_LONGEST_FIRST):
    if key == group or (group is None and nodeid.startswith(key)):
      return i
  return len(_LONGEST_FIRST)


def pytest_collection_modifyitems(config, items):
  del config
  items.sort(key=lambda item: _rank(item.nodeid))  # stable: collection order within a rank


@pytest.hookimpl(optionalhook=True)  # an xdist hook: `-p no:xdist` runs without it
def pytest_xdist_make_scheduler(config, log):
  if config.getoption('dist') != 'loadgroup':
    return None
  from xdist.scheduler import LoadScopeScheduling  # pylint: disable=import-outside-toplevel

  class GroupScheduling(LoadScopeScheduling):
    """A group's tests are one unit of work; any other test is a unit of its own. Units go out in
    collection order (pytest_collection_modifyitems above), not sorted by their size."""

    def _split_scope(self, nodeid):
      return _group(nodeid) or nodeid

  config.option.loadscopereorder = False
  return GroupScheduling(config, log)
