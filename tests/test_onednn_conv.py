"""oneDNN's convolutions (parallelism.cpu_backend=onednn) against XLA's, pass by pass and through
whole networks, and the CPU backend that chooses them."""

import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from resnet_jax.common.errors import UserError
from resnet_jax.models import create_model, onednn, onednn_conv
from resnet_jax.training import cpu_backend

pytestmark = pytest.mark.skipif(
    onednn.unavailable() is not None, reason=f'oneDNN: {onednn.unavailable()}'
)
SIGNATURE = {'model': {'name': 'resnet20'}, 'batch': 16, 'devices': 1, 'processes': 1}


def _xla_conv(x, k, strides, padding):
  return lax.conv_general_dilated(
      x, k, strides, padding, dimension_numbers=('NHWC', 'HWIO', 'NHWC')
  )


@pytest.mark.parametrize(
    'x_shape,k_shape,strides,padding',
    [
        ((4, 9, 9, 3), (3, 3, 3, 8), (1, 1), ((1, 1), (1, 1))),  # a CIFAR block's 3x3
        ((4, 10, 10, 8), (3, 3, 8, 16), (2, 2), ((1, 1), (1, 1))),  # a stage's first, strided
        ((2, 11, 11, 8), (1, 1, 8, 16), (2, 2), ((0, 0), (0, 0))),  # a projection shortcut
        ((2, 23, 23, 3), (7, 7, 3, 8), (2, 2), ((3, 3), (3, 3))),  # the ImageNet stem
        ((2, 10, 12, 5), (3, 3, 5, 6), (2, 1), ((0, 1), (2, 0))),  # 'SAME'-style, uneven
    ],
)
def test_each_pass_equals_xlas_convolution(x_shape, k_shape, strides, padding):
  """Forward, input gradient and kernel gradient, each against lax's convolution in float64 (XLA's
  own, which nobody here wrote): float32 rounding apart, the same numbers."""
  rng = np.random.default_rng(0)
  x = rng.standard_normal(x_shape).astype(np.float32)
  k = rng.standard_normal(k_shape).astype(np.float32)
  y, vjp = jax.vjp(lambda x, k: onednn_conv.conv_2d(x, k, strides, padding), x, k)
  dy = rng.standard_normal(y.shape).astype(np.float32)
  with jax.enable_x64():
    want_y, want_vjp = jax.vjp(
        lambda x, k: _xla_conv(x, k, strides, padding), x.astype(np.float64), k.astype(np.float64)
    )
    wants = (want_y, *want_vjp(dy.astype(np.float64)))
  for got, want in zip((y, *vjp(dy)), wants):
    assert got.shape == want.shape and got.dtype == jnp.float32
    np.testing.assert_allclose(got, want, rtol=0, atol=2e-6 * float(np.max(np.abs(want))))


def test_the_same_inputs_give_the_same_bits_again_and_under_vmap():
  """A resumed run repeats its steps exactly only if every pass is deterministic."""
  rng = np.random.default_rng(1)
  x = rng.standard_normal((8, 12, 12, 16)).astype(np.float32)
  k = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
  grads = jax.jit(
      jax.grad(
          lambda x, k: jnp.sum(onednn_conv.conv_2d(x, k, (1, 1), ((1, 1), (1, 1))) ** 2), (0, 1)
      )
  )
  first, again = grads(x, k), grads(x, k)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  one_by_one = jax.vmap(lambda x: onednn_conv.conv_2d(x[None], k, (1, 1), ((1, 1), (1, 1)))[0])(x)
  np.testing.assert_allclose(
      one_by_one, onednn_conv.conv_2d(x, k, (1, 1), ((1, 1), (1, 1))), rtol=1e-5, atol=1e-5
  )


def test_other_convolutions_stay_xlas():
  """bfloat16, dilated or grouped convolutions are XLA's: oneDNN here is float32 2-D only."""
  x, k = jnp.ones((1, 6, 6, 4), jnp.bfloat16), jnp.ones((3, 3, 4, 4), jnp.bfloat16)
  text = jax.jit(lambda x, k: onednn_conv.conv_general_dilated(x, k, (1, 1), 'SAME')).lower(x, k)
  assert 'stablehlo.convolution' in text.as_text() and 'Onednn' not in text.as_text()
  grouped = jax.jit(
      lambda x, k: onednn_conv.conv_general_dilated(x, k, (1, 1), 'SAME', feature_group_count=2)
  ).lower(x.astype(jnp.float32), jnp.ones((3, 3, 2, 4)))
  assert 'Onednn' not in grouped.as_text()


@pytest.mark.parametrize('name,shape', [('resnet20', (8, 16, 16, 3)), ('resnet18', (4, 32, 32, 3))])
def test_a_network_on_onednn_trains_as_on_xla(name, shape):
  """The same network with every convolution on oneDNN: none of XLA's convolutions left, and its
  loss and gradients as close to XLA's float64 ones as XLA's own float32 step is."""
  model = create_model(name, num_classes=10)
  x = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
  variables = model.init(jax.random.key(0), x, train=False)

  def loss(params, model, x):
    logits, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
    return jnp.mean(jax.nn.log_softmax(logits)[:, 0])

  grad = jax.jit(jax.value_and_grad(loss), static_argnums=1)
  params = variables['params']
  onednn = model.clone(kernels='onednn')
  results = {'xla': grad(params, model, x), 'onednn': grad(params, onednn, x)}
  with jax.enable_x64():
    as64 = lambda tree: jax.tree.map(lambda a: np.asarray(a, np.float64), tree)
    exact = as64(grad(as64(params), model.clone(dtype=jnp.float64), x.astype(np.float64)))
  errors = {
      k: [
          np.max(np.abs(np.asarray(g) - e))
          for g, e in zip(jax.tree.leaves(v), jax.tree.leaves(exact))
      ]
      for k, v in results.items()
  }
  scales = [np.max(np.abs(e)) for e in jax.tree.leaves(exact)]
  for ours, xlas, scale in zip(errors['onednn'], errors['xla'], scales):
    assert ours <= 3 * xlas + 1e-5 * scale
  text = jax.jit(loss, static_argnums=1).lower(params, onednn, x).as_text()
  assert 'stablehlo.convolution' not in text and 'ResnetJaxOnednnConvForward' in text


def test_onednn_is_a_candidate_only_where_it_can_run(monkeypatch):
  monkeypatch.delenv(cpu_backend.ENV_OVERRIDE, raising=False)  # the suite's pinned backend
  assert 'onednn' in cpu_backend.candidates(SIGNATURE)
  for other in ({'devices': 8}, {'processes': 2}, {'model': {'conv_kernel_grad': 'matmul'}}):
    assert cpu_backend.candidates({**SIGNATURE, **other}) == ('ynnpack', 'eigen')
  with pytest.raises(UserError, match='^--config.parallelism.cpu_backend=onednn runs on one CPU'
                     ' device in one process, not 8 device.*cpu_devices=1'):  # fmt: skip
    cpu_backend.lookup('onednn', {**SIGNATURE, 'devices': 8})
  monkeypatch.setattr(onednn, 'unavailable', lambda: 'oneDNN is not installed: pip ...')
  assert cpu_backend.candidates(SIGNATURE) == ('ynnpack', 'eigen')
  with pytest.raises(UserError, match='onednn: oneDNN is not installed: pip ...; or set cpu_b'):
    cpu_backend.lookup('onednn', SIGNATURE)


# A fresh process (one CPU device, as a oneDNN run has) that convolves once, then trains resnet8 on
# the 8x8 grey digits' shapes twice over. XLA runs a step's independent convolution passes at once
# from several threads: with oneDNN's shared scratchpad these crashed in im2col on an AVX2 Zen 2,
# in 5 of 6 such runs (onednn_common.h).
_FRESH_PROCESS = """
import jax, jax.numpy as jnp, numpy as np
from resnet_jax.models import create_model, onednn_conv
ones = onednn_conv.conv_2d(jnp.ones((1, 4, 4, 2)), jnp.ones((3, 3, 2, 1)), (1, 1), ((1, 1), (1, 1)))
print(float(ones.sum()))
model = create_model('resnet8', num_classes=10, kernels='onednn')
x = np.random.default_rng(0).standard_normal((16, 8, 8, 1)).astype(np.float32)
variables = model.init(jax.random.key(0), x, train=False)

def loss(params):
  logits, _ = model.apply({**variables, 'params': params}, x, train=True, mutable=['batch_stats'])
  return jnp.mean(logits**2)

@jax.jit
def step(params):
  return jax.tree.map(lambda p, g: p - 0.01 * g, params, jax.grad(loss)(params))

runs = []
for _ in range(2):
  params = variables['params']
  for _ in range(15):
    params = step(params)
  runs.append(jax.tree.leaves(params))
print(all((a == b).all() for a, b in zip(*runs)))
"""


def test_a_fresh_process_registers_the_handlers_and_trains_again_and_again():
  """No set-up call needed: the first traced convolution builds (or loads) and registers them; and
  repeated steps, whose passes XLA runs concurrently, neither crash nor differ in a bit."""
  done = subprocess.run(
      [sys.executable, '-c', _FRESH_PROCESS],
      env={**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=1'},
      capture_output=True,
      text=True,
      check=False,
  )
  assert done.returncode == 0, f'exit {done.returncode}: {done.stderr[-2000:]}'
  conv_sum, same = done.stdout.split()[-2:]
  # 2 channels of ones: 4 corners see 4 taps, 8 edge pixels 6, the 4 inner ones 9.
  assert float(conv_sum) == 2 * (4 * 4 + 8 * 6 + 4 * 9)
  assert same == 'True'
