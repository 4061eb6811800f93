"""The `sklearn_digits` TFDS builder: prepares without network, documented deterministic split."""

import collections
import hashlib

import numpy as np
import pytest
from sklearn import datasets as sklearn_datasets
import tensorflow_datasets as tfds

import resnet_jax.data.datasets  # noqa: F401  (registers sklearn_digits)
from resnet_jax.data.datasets import sklearn_digits

# sha256 of the sorted test indices (into load_digits()) of the documented split,
# first 16 hex digits.
EXPECTED_TEST_DIGEST = 'ef2312aab3bdb949'


@pytest.fixture(scope='module')
def builder(tmp_path_factory):
  # Shared with tests/test_input_pipeline.py: preparing twice in one session is a no-op.
  data_dir = tmp_path_factory.getbasetemp() / 'tfds_sklearn_digits'
  b = tfds.builder('sklearn_digits', data_dir=str(data_dir))
  b.download_and_prepare()
  return b


def _read(builder, split):
  return list(tfds.as_numpy(builder.as_dataset(split=split, shuffle_files=False)))


def test_registered_and_prepared_offline(builder):
  assert isinstance(builder, sklearn_digits.SklearnDigits)
  assert builder.name == 'sklearn_digits' and str(builder.version) == '1.0.0'
  assert builder.is_prepared()
  assert builder.info.features['label'].num_classes == 10
  assert builder.info.features['image'].shape == (8, 8, 1)
  assert builder.info.splits['train'].num_examples == 1438
  assert builder.info.splits['test'].num_examples == 359


def test_examples_shapes_dtypes_and_labels(builder):
  for split, size in (('train', 1438), ('test', 359)):
    examples = _read(builder, split)
    assert len(examples) == size
    images = np.stack([e['image'] for e in examples])
    labels = np.array([e['label'] for e in examples])
    assert images.shape == (size, 8, 8, 1) and images.dtype == np.uint8
    assert images.max() == 255 and images.min() == 0
    assert labels.dtype == np.int64 and set(labels.tolist()) == set(range(10))


def test_split_is_the_documented_stratified_split(builder):
  images, labels = sklearn_digits._load_digits()  # pylint: disable=protected-access
  idx = sklearn_digits.split_indices(labels)
  assert len(idx['train']) == 1438 and len(idx['test']) == 359
  assert not set(idx['train']) & set(idx['test'])
  assert len(set(idx['train']) | set(idx['test'])) == 1797
  # Stratified: every class has round(20%) of its examples in test.
  for c in range(10):
    n_c = int((labels == c).sum())
    assert int((labels[idx['test']] == c).sum()) == round(0.2 * n_c)
  # Frozen: the split never changes (RandomState streams are stable across numpy versions).
  digest = hashlib.sha256(idx['test'].astype(np.int64).tobytes()).hexdigest()[:16]
  assert digest == EXPECTED_TEST_DIGEST, digest
  # The prepared dataset holds exactly these examples.
  for split in ('train', 'test'):
    expected = collections.Counter((images[i].tobytes(), int(labels[i])) for i in idx[split])
    got = collections.Counter(
        (e['image'].tobytes(), int(e['label'])) for e in _read(builder, split)
    )
    assert got == expected


def test_records_are_scikit_learns_digits_scaled_as_documented(builder):
  # Against scikit-learn itself, not the builder's own _load_digits: images are round(v * 255 / 16).
  digits = sklearn_datasets.load_digits()
  images = np.rint(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  idx = sklearn_digits.split_indices(digits.target)
  for split in ('train', 'test'):
    expected = collections.Counter((images[i].tobytes(), int(digits.target[i])) for i in idx[split])
    examples = _read(builder, split)
    got = collections.Counter((e['image'].tobytes(), int(e['label'])) for e in examples)
    assert got == expected


def test_a_second_preparation_holds_the_same_records_in_the_same_order(builder, tmp_path):
  # Each process of a run may prepare its own copy, and processes split the records by position:
  # the files, not just the split's indices (pinned by the digest above), must come out the same.
  again = tfds.builder('sklearn_digits', data_dir=str(tmp_path))
  again.download_and_prepare()
  for split in ('train', 'test'):
    first, second = _read(builder, split), _read(again, split)
    assert [int(e['label']) for e in first] == [int(e['label']) for e in second]
    np.testing.assert_array_equal(
        np.stack([e['image'] for e in first]), np.stack([e['image'] for e in second])
    )
