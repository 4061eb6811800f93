"""The synthetic data source (`dataset.name='synthetic'`, configs/synthetic.py): batches made on the
devices, to measure the training loop without a dataset and without TensorFlow.

As the fake-data benchmarks of the flax and big_vision examples, but through the real loop
(checkpoints, metrics, eval). Each batch is made by one jitted program whose output sharding is the
layout the step reads, so there is no host work and no host-to-device copy: what the loop costs
beyond its steps is its own overhead. Batch k is a pure function of (seed, k), so a resumed run sees
the batches the uninterrupted one would; in 'jit' mode they are the same on any number of devices.

Images are standard normal (as normalised images are) and labels uniform: nothing to learn; the
losses say nothing about the model, only the speed does.
"""

import dataclasses
import functools
import math
from typing import Any, Iterator

import jax
import jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P

from resnet_jax.training import parallel
from resnet_jax.common.errors import UserError
from resnet_jax.config.run import BatchSpec, DatasetFacts

NAME = 'synthetic'


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
  """The dataset section of a synthetic run, resolved (what this source reads)."""

  name: str  # NAME
  image_shape: tuple[int, int, int]  # (H, W, C)
  num_classes: int
  num_train_examples: int  # sets the steps in an epoch, as a real dataset's size would
  num_eval_examples: int


def _positive(dataset, field: str) -> int:
  value = dataset.get(field)
  if not isinstance(value, int) or value < 1:
    raise UserError(
        f'--config.dataset.{field}={value!r} must be a positive integer for synthetic data'
        ' (configs/synthetic.py sets it)'
    )
  return value


def resolve_data(dataset) -> SyntheticSpec:
  """The dataset section (checked by config/resolve.py) and this source's own fields."""
  size = _positive(dataset, 'image_size')
  return SyntheticSpec(
      name=NAME,
      image_shape=(size, size, _positive(dataset, 'channels')),
      num_classes=_positive(dataset, 'num_classes'),
      num_train_examples=_positive(dataset, 'num_train_examples'),
      num_eval_examples=_positive(dataset, 'num_eval_examples'),
  )


def dataset_facts(data: SyntheticSpec) -> DatasetFacts:
  return DatasetFacts(
      num_classes=data.num_classes,
      image_shape=data.image_shape,
      num_train_examples=data.num_train_examples,
      num_eval_examples=data.num_eval_examples,
  )


def _keys(seed: int) -> jax.Array:
  """[train, eval] base keys: the two splits are different streams."""
  return jax.random.split(jax.random.key(seed))


def _images_and_labels(key, shape: tuple[int, ...], num_classes: int) -> dict[str, jax.Array]:
  """{'image': float32 [*shape], 'label': int32 [*shape[:-3]]}."""
  image_key, label_key = jax.random.split(key)
  return {
      'image': jax.random.normal(image_key, shape, jnp.float32),
      'label': jax.random.randint(label_key, shape[:-3], 0, num_classes, jnp.int32),
  }


def train_batches(
    data: SyntheticSpec, batch: BatchSpec, data_parallel, *, seed: int, start_step: int = 0
) -> Iterator[Any]:
  """Batches start_step, start_step + 1, ... in the layout of `data_parallel`'s train step: the
  global batch sharded over the mesh ('jit'), or one slice per local device ('pmap')."""
  train_key, _ = _keys(seed)
  if data_parallel.mode == 'pmap':
    # This process's share, one slice per local device: on one process, jit's batch split up.
    if jax.process_count() > 1:  # each process its own stream, as a real dataset's shares
      train_key = jax.random.fold_in(train_key, jax.process_index())
    n = len(data_parallel.local_devices)
    shape, sharding = (n, batch.per_process // n, *data.image_shape), data_parallel.per_device
  else:
    shape, sharding = (batch.size, *data.image_shape), data_parallel.batch_sharded
  make = jax.jit(
      lambda step: _images_and_labels(jax.random.fold_in(train_key, step), shape, data.num_classes),
      out_shardings=sharding,
  )
  step = start_step
  while True:
    yield make(step)
    step += 1


def num_eval_batches(data: SyntheticSpec, *, local_batch_size: int, process_count: int) -> int:
  return max(1, math.ceil(data.num_eval_examples / (local_batch_size * process_count)))


@functools.lru_cache(maxsize=4)
def _eval_batch_fn(data: SyntheticSpec, global_size: int):
  _, eval_key = _keys(0)  # the same eval split for every run, as a real dataset's
  sharding = NamedSharding(parallel.make_mesh(), P(parallel.DATA_AXIS))

  def make(index):
    batch = _images_and_labels(
        jax.random.fold_in(eval_key, index), (global_size, *data.image_shape), data.num_classes
    )
    position = index * global_size + jnp.arange(global_size)
    batch['mask'] = (position < data.num_eval_examples).astype(jnp.float32)
    return batch

  return jax.jit(make, out_shardings=sharding)


def create_eval_iterator(
    data: SyntheticSpec, *, local_batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[dict[str, jax.Array]]:
  """The eval split as global batches on all devices (each example once; padding has mask 0).

  Every process takes part in making each global batch, so `process_index` is not needed.
  """
  del process_index
  make = _eval_batch_fn(data, local_batch_size * process_count)
  count = num_eval_batches(data, local_batch_size=local_batch_size, process_count=process_count)
  for index in range(count):
    yield make(index)
