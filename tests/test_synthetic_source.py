"""Synthetic batches: made on the devices in the step's layout, batch k the same from any start."""

import jax
import numpy as np

from configs import synthetic
from resnet_jax.data import pipeline as input_pipeline
from resnet_jax.training import parallel
from resnet_jax.config import resolve as run_lib


def _spec_and_batch(batch_size=16):
  config = synthetic.get_config('resnet20')
  config.dataset.update(image_size=8, num_eval_examples=40)
  config.train.update(batch_size=batch_size, eval_batch_size=batch_size)
  run = run_lib.resolve(config, device_count=jax.device_count(), process_count=1)
  return run.data, run.batch


def test_presets_have_imagenet_and_cifar_shapes():
  resnet50 = synthetic.get_config('resnet50').dataset
  assert (resnet50.image_size, resnet50.num_classes) == (224, 1000)
  assert (synthetic.get_config('resnet20').dataset.num_classes) == 10


def test_batch_k_is_the_same_from_any_start_and_sharded_over_the_mesh():
  data, batch = _spec_and_batch()
  data_parallel = parallel.DataParallel()
  from_start = input_pipeline.device_train_batches(data, batch, data_parallel, seed=3)
  resumed = input_pipeline.device_train_batches(data, batch, data_parallel, seed=3, start_step=2)
  third = [next(from_start) for _ in range(3)][2]
  assert third['image'].sharding == data_parallel.batch_sharded
  assert third['image'].shape == (16, 8, 8, 3) and third['label'].dtype == np.int32
  again = next(resumed)
  for key in ('image', 'label'):
    np.testing.assert_array_equal(np.asarray(third[key]), np.asarray(again[key]))


def test_pmap_layout_is_the_jit_batch_split_per_device():
  data, batch = _spec_and_batch()
  jit_batch = next(
      input_pipeline.device_train_batches(data, batch, parallel.DataParallel(), seed=0)
  )
  pmap = parallel.DataParallel('pmap')
  pmap_batch = next(input_pipeline.device_train_batches(data, batch, pmap, seed=0))
  assert pmap_batch['image'].shape == (jax.device_count(), 16 // jax.device_count(), 8, 8, 3)
  np.testing.assert_array_equal(
      np.asarray(pmap_batch['label']).reshape(-1), np.asarray(jit_batch['label'])
  )


def test_eval_counts_every_example_once():
  data, _ = _spec_and_batch()
  batches = list(input_pipeline.create_eval_iterator(data, local_batch_size=16))
  assert len(batches) == input_pipeline.num_eval_batches(data, local_batch_size=16, process_count=1)
  assert sum(float(np.asarray(b['mask']).sum()) for b in batches) == 40
