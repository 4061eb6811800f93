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


def _for_its_thread_only(redirect):
  """A MockFs redirection (`_mock_fn` and its kin: `(self, original_fn, *args)`) that leaves the
  calls of every other thread than the one that entered the MockFs to `original_fn`."""

  def redirected(self, original_fn, *args, **kwargs):
    if threading.get_ident() != self._owner:
      return original_fn(*args, **kwargs)
    return redirect(self, original_fn, *args, **kwargs)

  return redirected


class _MockFsOfOneThread(test_utils.MockFs):
  """TFDS's MockFs, redirecting only the paths of the thread that entered it."""

  _owner = None

  def __enter__(self):
    self._owner = threading.get_ident()
    return super().__enter__()

  # The redirections MockFs._mock hands to the patched epath and tf.io.gfile functions.
  _mock_open = _for_its_thread_only(test_utils.MockFs._mock_open)
  _mock_fn = _for_its_thread_only(test_utils.MockFs._mock_fn)
  _mock_fn_2_args = _for_its_thread_only(test_utils.MockFs._mock_fn_2_args)
  _mock_glob = _for_its_thread_only(test_utils.MockFs._mock_glob)
  _mock_walk = _for_its_thread_only(test_utils.MockFs._mock_walk)


@contextlib.contextmanager
def mock_data(num_examples: int, **options):
  """`tfds.testing.mock_data(num_examples, **options)` whose dataset builds leave other threads'
  files alone (see the module's docstring)."""
  turns = threading.Lock()
  with tfds.testing.mock_data(num_examples=num_examples, **options):
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
