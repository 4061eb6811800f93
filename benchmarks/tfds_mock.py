"""`tfds.testing.mock_data` made safe for a training run: the datasets are TFDS's random ones, and
no other thread's files are touched.

    with tfds_mock.mock_data(num_examples=40):     # in-process (benchmarks/train_loop.py)
        ...
    python -m benchmarks.tfds_mock 40 --config=configs/cifar10.py:resnet20 --workdir=...
                                                    # the real CLI on mock data (tests/cli.py)

Why not `tfds.testing.mock_data` alone: its `as_dataset` fakes one existence check by redirecting
every absolute path of every thread into a temporary directory (`test_utils.MockFs`, which patches
`epath.Path` and `tf.io.gfile` globally) while a dataset is built. A training run builds each
epoch's dataset in its input thread while the main thread writes checkpoints, metrics and
TensorBoard events, so those see real paths vanish: orbax failed a save with "Checkpoint directory
does not exist" on CI, and a thread polling a real directory saw it missing 12% of the time.
Here the redirection applies only to the thread building the dataset, and builds take turns (two
at once would undo each other's patches on leaving).
"""

import contextlib
import sys
import threading
from unittest import mock

import tensorflow_datasets as tfds
from tensorflow_datasets.core import dataset_builder
from tensorflow_datasets.testing import test_utils


class _MockFsOfOneThread(test_utils.MockFs):
  """TFDS's MockFs, redirecting only the paths of the thread that entered it."""

  def __enter__(self):
    self._owner = threading.get_ident()
    return super().__enter__()

  def _passes_through(self) -> bool:
    return threading.get_ident() != getattr(self, '_owner', None)

  def _mock_open(self, original_fn, p, mode='r', **kwargs):
    if self._passes_through():
      return original_fn(p, mode, **kwargs)
    return super()._mock_open(original_fn, p, mode, **kwargs)

  def _mock_fn(self, original_fn, p, **kwargs):
    if self._passes_through():
      return original_fn(p, **kwargs)
    return super()._mock_fn(original_fn, p, **kwargs)

  def _mock_fn_2_args(self, original_fn, p, p2, **kwargs):
    if self._passes_through():
      return original_fn(p, p2, **kwargs)
    return super()._mock_fn_2_args(original_fn, p, p2, **kwargs)

  def _mock_glob(self, original_fn, p):
    if self._passes_through():
      return original_fn(p)
    return super()._mock_glob(original_fn, p)

  def _mock_walk(self, original_fn, p):
    if self._passes_through():
      return original_fn(p)
    return super()._mock_walk(original_fn, p)


@contextlib.contextmanager
def mock_data(num_examples: int, **kwargs):
  """`tfds.testing.mock_data(num_examples, **kwargs)` whose dataset builds leave other threads'
  files alone (see the module's docstring)."""
  turns = threading.Lock()
  with tfds.testing.mock_data(num_examples=num_examples, **kwargs):
    mocked_as_dataset = dataset_builder.DatasetBuilder.as_dataset

    def as_dataset(self, *args, **kwargs):
      with turns:
        return mocked_as_dataset(self, *args, **kwargs)

    with (
        mock.patch.object(test_utils, 'MockFs', _MockFsOfOneThread),
        mock.patch.object(dataset_builder.DatasetBuilder, 'as_dataset', as_dataset),
    ):
      yield


def main(argv: list[str]) -> None:
  """The real CLI, `python -m resnet_jax.main ARGS`, on `num_examples` mock examples."""
  from absl import app  # pylint: disable=import-outside-toplevel
  from resnet_jax import main as cli  # pylint: disable=import-outside-toplevel

  num_examples, *args = argv
  with mock_data(num_examples=int(num_examples)):
    app.run(cli.main, argv=['resnet_jax.main', *args])


if __name__ == '__main__':
  main(sys.argv[1:])
