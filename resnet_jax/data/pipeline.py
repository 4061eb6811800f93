"""Where a run's batches come from: the data-source choice, and batches onto the devices.

Two sources, chosen by `dataset.name`:
  * 'synthetic' (synthetic_source.py, configs/synthetic.py): batches made on the devices, for
    measuring speed without a dataset;
  * any other name: a TFDS dataset read by tf.data (tfds_source.py). That module is the only one
    that imports TensorFlow, and it is imported here only when a run reads a TFDS dataset, so the
    model, the train step, checkpoints and the training loop run where TensorFlow is not installed
    (tests/test_without_tensorflow.py).
"""

import importlib
import queue
import threading
from typing import Any, Callable, Iterable, Iterator

import jax
import numpy as np

from resnet_jax.common import library_noise
from resnet_jax.data import synthetic_source


def _source(data):
  """The module that serves `data` (a config's dataset section or a resolved spec)."""
  if data.name == synthetic_source.NAME:
    return synthetic_source
  with library_noise.silenced():  # TensorFlow loads here, and says so
    return importlib.import_module('resnet_jax.data.tfds_source')


def resolve_data(dataset):
  """The config's dataset section checked once and resolved into the frozen spec its source reads
  (run.DataSpec for TFDS, synthetic_source.SyntheticSpec)."""
  return _source(dataset).resolve_data(dataset)


def image_side(dataset) -> int | None:
  """The side of the images the model will see, known before JAX starts (for the CPU split): the
  config's dataset.image_size, else the TFDS dataset's declared shape; None if neither says."""
  if dataset.get('image_size'):
    return int(dataset.image_size)
  if dataset.name == synthetic_source.NAME:
    return None
  return _source(dataset).declared_image_side(dataset)


def dataset_facts(data):
  """What the data holds (run.DatasetFacts): classes, image shape, examples per split."""
  return _source(data).dataset_facts(data)


def create_train_iterator(data, batch, **kwargs) -> Iterator[dict[str, np.ndarray]]:
  """A TFDS dataset's host batches (tfds_source.create_train_iterator)."""
  return _source(data).create_train_iterator(data, batch, **kwargs)


def device_train_batches(
    data, batch, data_parallel, *, seed: int, start_step: int = 0, process_index: int = 0
) -> Iterator[Any]:
  """The training batches from `start_step` on, already on the devices in `data_parallel`'s layout.

  Synthetic batches are made there; a TFDS stream is read on the host and copied ahead.
  """
  if data.name == synthetic_source.NAME:
    return synthetic_source.train_batches(
        data, batch, data_parallel, seed=seed, start_step=start_step
    )
  host_batches = create_train_iterator(
      data, batch, seed=seed, start_step=start_step, process_index=process_index
  )
  return prefetch_to_devices(host_batches, data_parallel.place_batch)


def create_eval_iterator(
    data, *, local_batch_size: int, process_index: int = 0, process_count: int = 1, eval_spec=None
) -> Iterator[dict[str, Any]]:
  """Finite iterator of {'image', 'label', 'mask'} over this process's share of the eval split;
  padding examples have mask 0. Synthetic batches come already on the devices. With `eval_spec`
  (evaluation.EvalSpec) of the 10crop or multiscale protocol, {'views', 'label', 'mask'}."""
  views = eval_spec is not None and eval_spec.protocol != 'center'
  return _source(data).create_eval_iterator(
      data,
      local_batch_size=local_batch_size,
      process_index=process_index,
      process_count=process_count,
      **({'eval_spec': eval_spec} if views else {}),
  )


def num_eval_batches(data, *, local_batch_size: int, process_count: int) -> int:
  """The number of batches every process's eval iterator yields."""
  return _source(data).num_eval_batches(
      data, local_batch_size=local_batch_size, process_count=process_count
  )


# ------------------------------------------------------------------------------------ devices


_END = object()


def prefetch_to_devices(
    iterator: Iterable[dict[str, np.ndarray]], place: Callable[[Any], Any], size: int = 2
) -> Iterator[dict[str, jax.Array]]:
  """Iterates `iterator` in a daemon thread, keeping `size` batches already on the devices.

  `place` puts one host batch on the devices (parallel.DataParallel.place_batch).

  Ends when the source ends; an exception in the source (or in placement) is raised to the consumer.
  Closing or dropping the returned generator stops the thread.
  """
  q: queue.Queue = queue.Queue(maxsize=max(1, size))
  stop = threading.Event()

  def put(item) -> bool:
    while not stop.is_set():
      try:
        q.put(item, timeout=0.1)
        return True
      except queue.Full:
        pass
    return False

  def produce():
    try:
      for batch in iterator:
        placed = jax.block_until_ready(place(batch))
        if not put((None, placed)):
          return
      put((None, _END))
    except BaseException as e:  # pylint: disable=broad-except
      put((e, None))

  thread = threading.Thread(target=produce, name='prefetch_to_devices', daemon=True)
  thread.start()

  def consume():
    try:
      while True:
        error, item = q.get()
        if error is not None:
          raise error
        if item is _END:
          return
        yield item
    finally:
      stop.set()
      # Let the producer leave TensorFlow before the interpreter exits: killing a thread inside
      # tf.data at shutdown aborts the process.
      thread.join(timeout=30)

  return consume()
