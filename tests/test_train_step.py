"""Train and eval steps: sharded equals unsharded, the optimizer is the paper's, eval is exact."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from configs import cifar10
from resnet_jax.config import run as run_spec
from resnet_jax.training import optim, parallel
from resnet_jax.config import resolve as run_lib
from resnet_jax.training.step import create_train_state, eval_step, make_train_step

# small_run, batches, run_steps and trained are fixtures of tests/conftest.py (shared with
# tests/test_parallel.py).


def test_eight_device_step_equals_one_device_step(trained):
  assert jax.device_count() == 8
  one, one_metrics = trained(1)
  eight, eight_metrics = trained(8)
  for tree in ('params', 'batch_stats'):
    jax.tree.map(
        lambda a, b: np.testing.assert_allclose(a, b, rtol=2e-5, atol=2e-6),
        getattr(one, tree),
        getattr(eight, tree),
    )
  for a, b in zip(one_metrics, eight_metrics):
    assert a['loss'] == pytest.approx(b['loss'], rel=1e-5)
  assert int(eight.step) == 3


def test_step_updates_params_batch_stats_and_step(trained, run_steps):
  state, history = trained(1)
  fresh, _ = run_steps(parallel.make_mesh(jax.devices()[:1]), [])
  assert int(fresh.step) == 0 and int(state.step) == 3
  # Every leaf moves: each kernel, bias and BN scale/offset gets a gradient, each statistic a batch.
  for tree in ('params', 'batch_stats'):
    before, after = getattr(fresh, tree), getattr(state, tree)
    assert jax.tree.leaves(before) and jax.tree.structure(before) == jax.tree.structure(after)
    changed = jax.tree.map(lambda a, b: bool(np.any(a != b)), before, after)
    leaves = jax.tree_util.tree_leaves_with_path(changed)
    unchanged = [jax.tree_util.keystr(path) for path, moved in leaves if not moved]
    assert not unchanged, f'{tree} not updated: {unchanged}'
  assert history[0]['learning_rate'] == pytest.approx(0.1)


def test_resnet110_warmup_holds_low_lr_until_training_error_under_threshold(batches, run_steps):
  data = batches(3)
  # Random labels keep the error above 80% => the lr stays at warmup_lr.
  one_device = parallel.make_mesh(jax.devices()[:1])
  _, history = run_steps(
      one_device, data, **{'schedule.warmup_lr': 0.01, 'schedule.warmup_until_error': 0.0}
  )
  assert [h['learning_rate'] for h in history] == pytest.approx([0.01] * 3)
  # A threshold every batch meets ends the warm-up after the first step.
  _, history = run_steps(
      one_device, data, **{'schedule.warmup_lr': 0.01, 'schedule.warmup_until_error': 1.01}
  )
  assert [h['learning_rate'] for h in history] == pytest.approx([0.01, 0.1, 0.1])
  assert cifar10.get_config('resnet110').schedule.warmup_lr == 0.01
  assert cifar10.get_config('resnet56').schedule.warmup_lr == 0.0


def test_paper_schedule_divides_by_ten_at_32k_and_48k():
  cifar = run_spec.DatasetFacts(10, (32, 32, 3), 50_000, 10_000)
  run = run_lib.resolve(
      cifar10.get_config('resnet20'), dataset=cifar, device_count=1, process_count=1
  )
  assert run.batch.steps_per_epoch == 390 and run.schedule.boundaries == (32_000, 48_000)
  schedule = optim.learning_rate_schedule(run.schedule)
  assert [float(schedule(s)) for s in (0, 31_999, 32_000, 47_999, 48_000, 63_999)] == pytest.approx(
      [0.1, 0.1, 0.01, 0.01, 0.001, 0.001]
  )


def sgd_update(decoupled, all_params=False):
  config = cifar10.get_config('resnet20')
  config.optimizer.update(
      decoupled_weight_decay=decoupled,
      weight_decay=0.5,
      momentum=0.9,
      weight_decay_on_all_params=all_params,
  )
  tx = optim.create_optimizer(run_lib.check(config).optimizer)
  params = {'kernel': jnp.ones((2, 2)), 'bias': jnp.ones((2,))}
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  state = optim.set_learning_rate(state, 0.1)
  updates, state = tx.update(grads, state, params)
  updates, _ = tx.update(grads, state, optax.apply_updates(params, updates))
  return updates


def test_weight_decay_coupled_on_kernels_only_and_decoupled():
  # w = 1, g = 1, wd = 0.5, momentum 0.9, lr 0.1; the second of two updates.
  # Coupled (L2, the paper): m1 = 1.5, w1 = 0.85, g2 = 1 + 0.425, m2 = 0.9 * 1.5 + 1.425 = 2.775.
  coupled = sgd_update(decoupled=False)
  np.testing.assert_allclose(coupled['kernel'], np.full((2, 2), -0.2775), rtol=1e-6)
  np.testing.assert_allclose(coupled['bias'], np.full((2,), -0.19), rtol=1e-6)  # no decay on biases
  np.testing.assert_allclose(
      sgd_update(False, all_params=True)['bias'], np.full((2,), -0.2775), rtol=1e-6
  )
  # Decoupled (SGDW): m2 = 1.9, plus wd * w1 = 0.425 after momentum.
  np.testing.assert_allclose(
      sgd_update(decoupled=True)['kernel'], np.full((2, 2), -0.2325), rtol=1e-6
  )


def test_eval_step_counts_only_unmasked_examples(small_run, batches):
  run = small_run()
  model, tx = run.model.build(10), optim.create_optimizer(run.optimizer)
  state = create_train_state(
      jax.random.key(0), model=model, tx=tx, image_shape=(8, 8, 3), warmup=False
  )
  batch = batches(1, batch_size=8)[0]
  mask = np.array([1, 1, 1, 0, 0, 0, 0, 0], np.float32)
  padded = {**batch, 'mask': mask}
  real = {k: v[:3] for k, v in batch.items()} | {'mask': mask[:3]}
  a, b = eval_step(state, padded, model=model), eval_step(state, real, model=model)
  assert float(a['count']) == 3.0
  for key in a:
    assert float(a[key]) == pytest.approx(float(b[key]), rel=1e-5)


def test_diagnostics_report_stage_gradient_norms_and_block_residual_ratios(small_run, batches):
  run = small_run(**{'train.log_diagnostics': True})
  model, tx = run.model.build(10), optim.create_optimizer(run.optimizer)
  state = create_train_state(
      jax.random.key(0), model=model, tx=tx, image_shape=(8, 8, 3), warmup=False
  )
  _, metrics = make_train_step(run, model=model, tx=tx)(state, batches(1)[0])
  stage_norms = [metrics[f'grad_norm_{g}'] for g in ('stem', 'stage1', 'stage2', 'stage3', 'head')]
  total = np.sqrt(sum(float(n) ** 2 for n in stage_norms))
  assert total == pytest.approx(float(metrics['grad_norm']), rel=1e-5)
  ratios = {k: float(v) for k, v in metrics.items() if k.startswith('residual_ratio_')}
  assert sorted(ratios) == [
      f'residual_ratio_stage{s}_block1' for s in (1, 2, 3)
  ]  # resnet8: one block a stage
  assert all(0 < r < 10 for r in ratios.values())
