"""The model zoo against the paper's and torchvision's figures."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import linen as nn

from configs import cifar10
from resnet_jax.models import interop, stats as model_stats
from resnet_jax import models
from resnet_jax.config import resolve as run_lib

CIFAR_PARAMS = {
    20: 269_722,
    32: 464_154,
    44: 658_586,
    56: 853_018,
    110: 1_727_962,
    1202: 19_421_274,
}
IMAGENET_PARAMS = {18: 11_689_512, 34: 21_797_672, 50: 25_557_032, 101: 44_549_160, 152: 60_192_808}
IMAGENET_GMACS = {18: 1.8, 34: 3.6, 50: 3.8, 101: 7.6, 152: 11.3}  # paper Table 1


def params_of(name, num_classes, image_shape, **overrides):
  model = models.create_model(name, num_classes=num_classes, **overrides)
  return model_stats.count(model_stats.abstract_variables(model, image_shape)['params'])


@pytest.mark.parametrize('depth', CIFAR_PARAMS)
def test_cifar_parameter_counts_match_paper_and_plain_twin(depth):
  # ResNet-1202 counted as its preset builds it, blocks scanned (the same variables, stacked):
  # tracing 600 unrolled blocks twice took 17 s of the suite.
  scan = {'scan_blocks': True} if depth == 1202 else {}
  assert params_of(f'resnet{depth}', 10, (32, 32, 3), **scan) == CIFAR_PARAMS[depth]
  assert params_of(f'plain{depth}', 10, (32, 32, 3), **scan) == CIFAR_PARAMS[depth]


@pytest.mark.parametrize('depth', IMAGENET_PARAMS)
def test_imagenet_parameter_counts_match_torchvision(depth):
  assert params_of(f'resnet{depth}', 1000, (224, 224, 3)) == IMAGENET_PARAMS[depth]


@pytest.mark.parametrize('depth', IMAGENET_GMACS)
def test_imagenet_multiply_adds_within_5_percent_of_table_1(depth):
  model = models.create_model(f'resnet{depth}', num_classes=1000, stride_in_1x1=True)
  gmacs = model_stats.multiply_adds(model, (224, 224, 3)) / 1e9
  assert gmacs == pytest.approx(IMAGENET_GMACS[depth], rel=0.05)


def test_seeds_arithmetic_basic_pair_and_bottleneck():
  # Paper section 4.1: two 3x3x256x256 convs vs a 256-64-64-256 bottleneck.
  x = jnp.zeros((1, 8, 8, 256))
  conv = lambda *a, **k: nn.Conv(*a, use_bias=False, **k)
  norm = lambda **k: nn.BatchNorm(use_running_average=True, **k)

  def weights(block):
    variables = jax.eval_shape(lambda: block.init(jax.random.key(0), x))
    return sum(
        np.prod(v.shape)
        for p, v in jax.tree_util.tree_leaves_with_path(variables['params'])
        if 'kernel' in jax.tree_util.keystr(p)
    )

  basic = models.BasicBlock(256, 1, 'identity', conv, norm, norm)
  bottleneck = models.BottleneckBlock(64, 1, 'identity', conv, norm, norm)
  assert weights(basic) == 1_179_648
  assert weights(bottleneck) == 69_632


def test_option_a_adds_no_parameters_and_options_b_c_add_projections():
  a = params_of('resnet20', 10, (32, 32, 3), shortcut='identity')
  b = params_of('resnet20', 10, (32, 32, 3), shortcut='projection')
  c = params_of('resnet20', 10, (32, 32, 3), shortcut='projection_all')
  assert a == params_of('plain20', 10, (32, 32, 3))
  # B: two 1x1 projections (16->32, 32->64) with BN; C: a projection on each of the 9 blocks.
  projection = lambda c_in, c_out: c_in * c_out + 2 * c_out  # 1x1 kernel + BN scale/offset
  assert b - a == projection(16, 32) + projection(32, 64)
  assert c - a == (
      3 * projection(16, 16)
      + projection(16, 32)
      + 2 * projection(32, 32)
      + projection(32, 64)
      + 2 * projection(64, 64)
  )
  assert params_of('resnet20', 10, (32, 32, 3), shortcut='A') == a


@pytest.mark.parametrize(
    'name,image_shape',
    [
        ('resnet20', (32, 32, 3)),
        ('plain20', (28, 28, 1)),
        ('preact_resnet20', (8, 8, 1)),
        ('resnet18', (64, 64, 3)),
        ('plain18', (32, 32, 3)),
        ('resnet50', (224, 224, 3)),
        ('preact_resnet50', (96, 96, 3)),
        ('cifar_resnet50', (16, 16, 3)),
    ],
)
def test_output_shapes_at_several_input_sizes(name, image_shape):
  model = models.create_model(name, num_classes=7)
  variables = model_stats.abstract_variables(model, image_shape)
  out = jax.eval_shape(
      lambda v: model.apply(v, jnp.zeros((2, *image_shape)), train=False), variables
  )
  assert out.shape == (2, 7) and out.dtype == jnp.float32
  assert set(variables) == {'params', 'batch_stats'}


@pytest.mark.parametrize('name', ['resnet20', 'preact_resnet20', 'resnet18', 'preact_resnet18'])
def test_train_updates_batch_stats_and_eval_uses_each_image_alone(name):
  model = models.create_model(name, num_classes=10)
  variables = model_stats.init_variables(model, (32, 32, 3))
  images = jax.random.normal(jax.random.key(1), (4, 32, 32, 3))
  # The same first image among other ones: only batch statistics can change its logits.
  mixed = images.at[1:].set(jax.random.normal(jax.random.key(2), (3, 32, 32, 3)))
  # Both modes ask for batch_stats back, so that eval mode could write them if it were wrong.
  train_apply = jax.jit(lambda v, x: model.apply(v, x, train=True, mutable=['batch_stats']))
  eval_apply = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable=['batch_stats']))

  logits, updates = train_apply(variables, images)
  changed = jax.tree.map(
      lambda a, b: bool(jnp.any(a != b)), variables['batch_stats'], updates['batch_stats']
  )
  assert jax.tree.leaves(changed) and all(jax.tree.leaves(changed))
  assert not np.allclose(train_apply(variables, mixed)[0][0], logits[0], rtol=1e-3, atol=1e-3)

  # Eval with the updated (non-initial) statistics: they are read, never written, and each image's
  # logits are its own, whatever else (other images, eval padding) shares its batch.
  stats = {**variables, 'batch_stats': updates['batch_stats']}
  first, after = eval_apply(stats, images)
  jax.tree.map(np.testing.assert_array_equal, after['batch_stats'], stats['batch_stats'])
  np.testing.assert_allclose(eval_apply(stats, mixed)[0][0], first[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(eval_apply(stats, images[:1])[0][0], first[0], rtol=1e-5, atol=1e-5)


def test_bfloat16_compute_keeps_float32_parameters():
  model = models.create_model('resnet20', num_classes=10, dtype='bfloat16')
  variables = model_stats.init_variables(model, (32, 32, 3))
  assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(variables))
  _, state = model.apply(
      variables, jnp.ones((2, 32, 32, 3)), train=False, mutable=['intermediates']
  )
  branches = jax.tree.leaves(state['intermediates'])
  assert branches and all(b.dtype == jnp.bfloat16 for b in branches)


def test_zero_init_residual_makes_blocks_start_as_identity():
  model = models.create_model('resnet20', num_classes=10, zero_init_residual=True)
  variables = model_stats.init_variables(model, (32, 32, 3))
  _, state = model.apply(
      variables, jnp.ones((2, 32, 32, 3)), train=False, mutable=['intermediates']
  )
  # Each block's residual branch (sown as 'branch'; the last feature map is sown too, as
  # 'features', for the evaluation protocols).
  branches = [
      leaf
      for path, leaf in jax.tree_util.tree_flatten_with_path(state['intermediates'])[0]
      if 'branch' in jax.tree_util.keystr(path)
  ]
  assert len(branches) == 9 and all(float(jnp.abs(b).max()) == 0.0 for b in branches)


def test_remat_gives_the_same_gradients():
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  grads = []
  for remat in (False, True):
    model = models.create_model('resnet14', num_classes=10, remat=remat)
    variables = model_stats.init_variables(model, (8, 8, 3))
    loss = lambda p: model.apply({**variables, 'params': p}, images, train=False).sum()
    grads.append(jax.grad(loss)(variables['params']))
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), *grads)


@pytest.mark.parametrize('name', ['resnet8', 'resnet18'])
def test_matmul_kernel_gradients_equal_xla_ones(name):
  # 3x3 convs, 1x1 projections, stride 2, the 7x7/2 stem's explicit padding; training-mode BN.
  # 16x16 images: resnet18's last stages still stride from 2x2 to 1x1.
  images = jax.random.normal(jax.random.key(0), (2, 16, 16, 3))
  results = []
  for conv_kernel_grad in ('xla', 'matmul'):
    model = models.create_model(name, num_classes=10, conv_kernel_grad=conv_kernel_grad)
    variables = model_stats.init_variables(model, (16, 16, 3))

    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, images, mutable=['batch_stats'])
      return jnp.sum(logits * jnp.arange(10.0))

    # Compiled whole: both cases 45 s instead of 57 s op by op on the 2-core Zen 3. The loss comes
    # from a forward-only program, which is the same program for both kernel gradients.
    params = variables['params']
    results.append((jax.jit(loss)(params), jax.jit(jax.grad(loss))(params)))
  (loss_xla, grads_xla), (loss_matmul, grads_matmul) = results
  assert float(loss_matmul) == float(loss_xla)  # the forward pass is XLA's own either way
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads_xla))
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5 * scale),
      grads_xla,
      grads_matmul,
  )


@pytest.mark.parametrize('name,remat', [('resnet20', False), ('preact_resnet20', True)])
def test_scanned_blocks_compute_what_unrolled_blocks_do(name, remat):
  # 8x8 images: every stage still runs its blocks (8, 4 and 2 pixels a side), in a fifth of the
  # time op by op.
  images = jax.random.normal(jax.random.key(0), (2, 8, 8, 3))
  unrolled = models.create_model(name, num_classes=10, remat=remat)
  scanned = models.create_model(name, num_classes=10, remat=remat, scan_blocks=True)
  variables = model_stats.init_variables(unrolled, (8, 8, 3))
  stacked = {k: interop.scanned(v, scanned.stage_sizes) for k, v in variables.items()}
  assert jax.tree.map(jnp.shape, stacked) == jax.tree.map(
      jnp.shape, model_stats.init_variables(scanned, (8, 8, 3))
  )

  def run(model, variables):
    def loss(params):
      logits, updates = model.apply(
          {**variables, 'params': params}, images, mutable=['batch_stats', 'diagnostics']
      )
      return jnp.sum(logits * jnp.arange(10.0)), updates

    (value, updates), grads = jax.value_and_grad(loss, has_aux=True)(variables['params'])
    return value, grads, updates['batch_stats'], models.block_squared_norms(updates['diagnostics'])

  value, grads, stats, norms = run(unrolled, variables)
  value_s, grads_s, stats_s, norms_s = run(scanned, stacked)
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=2e-5)
  close(value_s, value)
  # Float32 sums in another order: gradients agree to 1e-4 of their largest.
  scale = max(float(jnp.abs(g).max()) for g in jax.tree.leaves(grads))
  jax.tree.map(
      lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-4, atol=1e-4 * scale),
      grads_s,
      interop.scanned(grads, scanned.stage_sizes),
  )
  jax.tree.map(close, stats_s, interop.scanned(stats, scanned.stage_sizes))
  assert norms_s.keys() == norms.keys()  # the per-block diagnostics keep their names
  jax.tree.map(close, norms_s, norms)


@pytest.mark.slow
def test_resnet1202_preset_compiles_and_takes_a_gradient_step():
  # Unrolled, XLA CPU ran out of 24 GiB compiling ResNet-1202's remat step;
  # the preset scans its blocks.
  config = cifar10.get_config('resnet1202')
  model = run_lib.check(config).model.build(10)
  variables = model_stats.init_variables(model, (32, 32, 3))
  assert jax.tree.leaves(variables['params']['stage3_scan'])[0].shape[0] == 199

  @jax.jit
  def loss_and_grads(params, images, labels):
    def loss(params):
      logits, _ = model.apply({**variables, 'params': params}, images, mutable=['batch_stats'])
      return optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()

    return jax.value_and_grad(loss)(params)

  images = jax.random.normal(jax.random.key(0), (2, 32, 32, 3))
  value, grads = loss_and_grads(variables['params'], images, jnp.array([3, 7]))
  assert np.isfinite(float(value)) and model_stats.count(grads) == CIFAR_PARAMS[1202]
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


@pytest.mark.parametrize('name', ['resnet19', 'resnet7', 'densenet121', 'resnet', 'plain-20'])
def test_unknown_model_name_lists_valid_names(name):
  with pytest.raises(ValueError, match=r'unknown model .*valid names: resnet20'):
    models.create_model(name, num_classes=10)


def test_unknown_override_and_shortcut_are_errors():
  with pytest.raises(ValueError, match='unknown override'):
    models.create_model('resnet20', num_classes=10, shortcutt='A')
  with pytest.raises(ValueError, match='unknown shortcut'):
    models.create_model('resnet20', num_classes=10, shortcut='D')
  with pytest.raises(ValueError, match="unknown conv_kernel_grad 'fast'; valid: xla, matmul"):
    models.create_model('resnet20', num_classes=10, conv_kernel_grad='fast')


def test_any_6n_plus_2_depth_is_a_cifar_network():
  assert models.model_spec('resnet8')['stage_sizes'] == (1, 1, 1)
  assert models.model_spec('plain74')['stage_sizes'] == (12, 12, 12)
  assert models.model_spec('resnet50')['stem'] == 'imagenet'
  assert models.model_spec('cifar_resnet50')['stage_sizes'] == (8, 8, 8)
