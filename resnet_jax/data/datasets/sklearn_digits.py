"""`sklearn_digits`: scikit-learn's bundled 8x8 handwritten digits as a TFDS dataset.

The 1797 images ship inside the scikit-learn wheel (`sklearn.datasets.load_digits`), so
`download_and_prepare()` needs no network: it is the project's offline dataset, read through
exactly the same `tfds.builder(...)` / `as_dataset` path as cifar10 or imagenet2012.

Images: the original 0..16 grey levels scaled to uint8 as round(v * 255 / 16), shape (8, 8, 1).

Split: a fixed *stratified* 80/20 split. For each class c, the indices of that class (in
`load_digits` order) are permuted with `np.random.RandomState(SPLIT_SEED + c)` and the first
round(0.2 * n_c) go to `test`, the rest to `train`. `RandomState` streams are frozen by numpy's
compatibility policy, so the split is identical on every machine and numpy/scikit-learn version:
train = 1438 examples, test = 359 examples.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

SPLIT_SEED = 2015
TEST_FRACTION = 0.2
NUM_CLASSES = 10


def _load_digits() -> tuple[np.ndarray, np.ndarray]:
  """Returns (images uint8 [N, 8, 8, 1], labels int64 [N]) in load_digits order."""
  from sklearn.datasets import load_digits  # pylint: disable=g-import-not-at-top

  digits = load_digits()
  images = np.rint(digits.images.astype(np.float64) * (255.0 / 16.0)).astype(np.uint8)[..., None]
  return images, digits.target.astype(np.int64)


def split_indices(labels: np.ndarray) -> dict[str, np.ndarray]:
  """The documented deterministic stratified split: {'train': idx, 'test': idx} (sorted)."""
  train, test = [], []
  for c in range(NUM_CLASSES):
    idx = np.flatnonzero(labels == c)
    idx = idx[np.random.RandomState(SPLIT_SEED + c).permutation(len(idx))]
    n_test = int(round(TEST_FRACTION * len(idx)))
    test.append(idx[:n_test])
    train.append(idx[n_test:])
  return {'train': np.sort(np.concatenate(train)), 'test': np.sort(np.concatenate(test))}


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
  """scikit-learn's 8x8 digits (UCI optdigits test set), 10 classes, offline."""

  VERSION = tfds.core.Version('1.0.0')
  RELEASE_NOTES = {'1.0.0': 'Initial release: stratified 80/20 split, seed 2015.'}

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        description=(
            '8x8 grey-scale handwritten digits bundled with scikit-learn '
            '(sklearn.datasets.load_digits), scaled from 0..16 to 0..255. '
            'Fixed stratified 80/20 train/test split.'
        ),
        features=tfds.features.FeaturesDict({
            'image': tfds.features.Image(shape=(8, 8, 1), dtype=np.uint8),
            'label': tfds.features.ClassLabel(num_classes=NUM_CLASSES),
        }),
        supervised_keys=('image', 'label'),
        homepage='https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset',
        citation=(
            '@misc{optdigits, author={Alpaydin, E. and Kaynak, C.}, title={Optical '
            'Recognition of Handwritten Digits}, year={1998}, '
            'howpublished={UCI Machine Learning Repository}}'
        ),
    )

  def _split_generators(self, dl_manager: tfds.download.DownloadManager):
    del dl_manager  # Nothing to download: the data ships with scikit-learn.
    images, labels = _load_digits()
    splits = split_indices(labels)
    return {name: self._generate_examples(images, labels, idx) for name, idx in splits.items()}

  def _generate_examples(self, images, labels, indices):
    for i in indices:
      # Key = index in load_digits(); tfds orders records by a hash of the key, deterministically.
      yield int(i), {'image': images[i], 'label': int(labels[i])}
