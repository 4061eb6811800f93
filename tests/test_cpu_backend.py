"""The CPU choices (convolution backend, device split) and that accelerators never see them."""

import functools
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.training import cpu_backend, optim, parallel
from resnet_jax.common.errors import UserError
from resnet_jax.training.step import create_train_state, eval_step, make_train_step

SIGNATURE = {'model': {'name': 'a small step'}, 'batch': 16, 'devices': 1, 'processes': 1}


def _tiny_step():
  """A (state, batch) -> (state, metrics) step that donates its state, like the train step."""

  def step(state, batch):
    new = jnp.tanh(state @ batch)
    return new, {'sum': new.sum()}

  state, batch = jnp.ones((64, 64)), jnp.full((64, 64), 0.01)
  return jax.jit(step, donate_argnums=0), state, batch


@pytest.fixture(name='cache')
def cache_fixture(tmp_path, monkeypatch):
  monkeypatch.setenv('XDG_CACHE_HOME', str(tmp_path))
  monkeypatch.delenv(cpu_backend.ENV_OVERRIDE, raising=False)
  monkeypatch.setattr(cpu_backend, 'MEASURE_SECONDS', 0.05)
  return tmp_path / 'resnet_jax' / 'cpu_backend.json'


def test_auto_measures_both_backends_once_then_reads_the_cache(cache):
  step, state, batch = _tiny_step()
  lower = lambda kernels: step.lower(state, batch)
  choice, compiled = cpu_backend.choose(lower, state, batch, configured='auto', signature=SIGNATURE)
  assert choice.how == 'measured' and choice.name in cpu_backend.BACKENDS
  assert {name for name, _ in choice.step_seconds} == set(cpu_backend.candidates(SIGNATURE))
  assert choice.seconds > 0 and choice.describe().startswith(f'cpu backend {choice.name} (measured')
  # The caller's state was not donated to the measurement, and the kept program is the step.
  expected = np.tanh(np.ones((64, 64)) @ np.full((64, 64), 0.01))
  np.testing.assert_allclose(compiled(jnp.copy(state), batch)[0], expected, rtol=1e-6)
  entry = json.loads(cache.read_text())[cpu_backend.cache_key(SIGNATURE)]
  assert entry['backend'] == choice.name
  assert set(entry['step_seconds']) == set(cpu_backend.candidates(SIGNATURE))

  again, _ = cpu_backend.choose(lower, state, batch, configured='auto', signature=SIGNATURE)
  assert (again.name, again.how) == (choice.name, 'cached')
  assert cpu_backend.lookup('auto', SIGNATURE) == again
  # Another signature (or processor, or jaxlib: the same key) is measured anew.
  assert cpu_backend.lookup('auto', {**SIGNATURE, 'batch': 32}).how == 'XLA default, not measured'


def test_xla_default_is_kept_unless_another_backend_is_clearly_faster(cache, monkeypatch):
  step, state, batch = _tiny_step()
  timings = iter([{'ynnpack': 1.0, 'eigen': 0.97}, {'ynnpack': 1.0, 'eigen': 0.5}])
  monkeypatch.setattr(cpu_backend, '_time_steps', lambda *_: next(timings))
  lower = lambda kernels: step.lower(state, batch)
  for batch_size, expected in ((16, 'ynnpack'), (32, 'eigen')):
    signature = {**SIGNATURE, 'batch': batch_size}
    choice = cpu_backend.choose(lower, state, batch, configured='auto', signature=signature)[0]
    assert choice.name == expected


def test_a_backend_set_in_the_config_or_the_environment_is_not_measured(cache, monkeypatch):
  step, state, batch = _tiny_step()
  lower = lambda kernels: step.lower(state, batch)
  monkeypatch.setattr(cpu_backend, '_time_steps', lambda *_: pytest.fail('measured'))
  choice, _ = cpu_backend.choose(lower, state, batch, configured='eigen', signature=SIGNATURE)
  assert (choice.name, choice.how, choice.options) == (
      'eigen',
      'set',
      cpu_backend.BACKENDS['eigen'],
  )
  monkeypatch.setenv(cpu_backend.ENV_OVERRIDE, 'ynnpack')  # the launch's wins over the config's
  assert (
      cpu_backend.choose(lower, state, batch, configured='eigen', signature=SIGNATURE)[0].name
      == 'ynnpack'
  )
  assert not cache.exists()
  monkeypatch.setenv(cpu_backend.ENV_OVERRIDE, 'mkl')
  with pytest.raises(UserError, match="RESNET_JAX_CPU_BACKEND='mkl' is not one of auto, "):
    cpu_backend.lookup('auto', SIGNATURE)


def test_off_the_cpu_nothing_is_measured_and_no_option_is_passed(cache, monkeypatch):
  compiled_with = []

  class Lowered:

    def __init__(self, kernels):
      assert kernels == 'xla'

    def compile(self, compiler_options=None):
      compiled_with.append(compiler_options)
      return 'compiled'

  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  for configured in ('auto', 'eigen', 'onednn'):
    choice, compiled = cpu_backend.choose(
        Lowered, None, None, configured=configured, signature=SIGNATURE
    )
    assert (choice.how, compiled, choice.describe()) == ('not a CPU', 'compiled', '')
    # The model keeps XLA's convolutions: oneDNN's custom calls never reach a GPU or TPU step.
    assert cpu_backend.kernels(choice.name) == 'xla'
  assert compiled_with == [None, None, None]
  assert cpu_backend.options_for('eigen') is None and not cache.exists()


def test_the_steps_lower_for_cuda_and_tpu_without_any_cpu_choice(small_run):
  """The train and eval steps as the trainer builds them, exported for GPU and TPU (no device
  needed): they lower, and carry none of the CPU options (those are per-compilation only)."""
  run = small_run()
  data_parallel = parallel.DataParallel(mesh=parallel.make_mesh(jax.devices()[:1]))
  model = run.model.build(10)
  tx = optim.create_optimizer(run.optimizer)
  init = functools.partial(
      create_train_state, model=model, tx=tx, image_shape=(8, 8, 3), warmup=False
  )
  state = jax.eval_shape(init, jax.random.key(0))
  batch = {
      'image': jax.ShapeDtypeStruct((16, 8, 8, 3), jnp.float32),
      'label': jax.ShapeDtypeStruct((16,), jnp.int32),
  }
  train = data_parallel.compile_train_step(make_train_step(run, model=model, tx=tx))
  evaluate = data_parallel.compile_eval_step(
      functools.partial(eval_step, model=model), compiler_options=cpu_backend.BACKENDS['eigen']
  )
  eval_batch = {**batch, 'mask': jax.ShapeDtypeStruct((16,), jnp.bool_)}
  for fn, args in ((train, (state, batch)), (evaluate, (state, eval_batch))):
    exported = jax.export.export(fn, platforms=('cuda', 'tpu'))(*args)
    assert exported.platforms == ('cuda', 'tpu')
    text = exported.mlir_module()
    assert 'stablehlo.convolution' in text
    assert not any(word in text.lower() for word in ('ynn', 'xla_cpu', 'eigen', 'xnn', 'onednn'))


@pytest.mark.parametrize(
    'side,batches,expected',
    [
        (8, (128, 512), 1),  # digits: too little work per device
        (None, (128, 512), 1),  # unknown until the data is read
        (28, (128, 512), 8),
        (32, (128, 512), 8),
        (224, (256, 256), 2),  # ImageNet-size inputs: 2 devices, fastest on both AMD kinds
        (64, (256, 250), 2),  # the largest split that divides both batches
        (224, (255, 255), 1),
        (32, (12, 12), 4),
        (32, (7, 7), 1),
    ],
)
def test_the_automatic_cpu_split(side, batches, expected):
  assert parallel.auto_cpu_devices(side, batches)[0] == expected


@pytest.mark.parametrize('side', [8, 28, 32, 224, None])
def test_where_onednn_may_run_the_split_is_one_device(side):
  """oneDNN spreads each convolution over the cores itself; one device on oneDNN was the fastest
  setting at every size measured (BENCHMARKS.md, "oneDNN convolutions")."""
  assert parallel.auto_cpu_devices(side, (128, 512), onednn=True)[0] == 1
