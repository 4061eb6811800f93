"""Input pipeline: shapes, determinism, resume, process sharding, eval padding, errors, prefetch.

Real data: the offline `sklearn_digits` builder, prepared into a pytest temp dir. cifar10, mnist and
imagenet2012 use `tfds.testing.mock_data` (which ignores the split: every (sub)split yields the same
`num_examples` examples, so coverage tests use the digits).
"""

import collections
import itertools
import threading
import time

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import resnet_jax.data.datasets  # noqa: F401  (registers sklearn_digits)
from resnet_jax.config import run as run_spec
from resnet_jax.config import fields
from resnet_jax.data import pipeline as ip
from resnet_jax.data import tfds_source
from resnet_jax.config import resolve as run_lib
from resnet_jax.training import parallel
from resnet_jax.data.datasets import prepare
from resnet_jax.common.errors import UserError

MOCK_EXAMPLES = 24


def make_config(**overrides):
  """A dataset section: resnet_jax/config/fields.py's fields with these tests' defaults and
  `overrides`."""
  dataset = fields.base_config('resnet20').dataset
  dataset.update(
      dict(
          name='cifar10',
          train_split='train',
          eval_split='test',
          augment='cifar',
          pad=4,
          flip=True,
          shuffle_buffer=1_000,
          cache=True,
      )
  )
  dataset.update(overrides)
  return dataset


def resolved(dataset, batch_size=16, process_count=1, training=False) -> run_spec.Run:
  """The run that resnet_jax/config/resolve.py makes of resnet20's config with this dataset
  section: tests read the data source's spec (`.data`) and facts (`.dataset`) from it.
  `training`: the training split must hold a batch per data shard."""
  config = fields.base_config('resnet20')
  config.dataset.update(dict(dataset))
  config.train.update(batch_size=batch_size, eval_batch_size=batch_size)
  return run_lib.resolve(
      config, device_count=process_count, process_count=process_count, training=training
  )


def train_iterator(
    dataset, local_batch_size, *, seed, start_step=0, process_index=0, process_count=1
):
  """One process's training stream, with the batch split that the resolver gives `dataset`."""
  run = resolved(dataset, local_batch_size * process_count, process_count, training=True)
  return ip.create_train_iterator(
      run.data, run.batch, seed=seed, start_step=start_step, process_index=process_index
  )


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
  # Shared with tests/test_sklearn_digits.py: preparing twice in one session is a no-op.
  data_dir = str(tmp_path_factory.getbasetemp() / 'tfds_sklearn_digits')
  tfds.builder('sklearn_digits', data_dir=data_dir).download_and_prepare()
  return data_dir


def digits_config(data_dir, **overrides):
  return make_config(**{
      'name': 'sklearn_digits',
      'data_dir': data_dir,
      'pad': 1,
      'flip': False,
      'shuffle_buffer': 2_000,
      **overrides,
  })


def normalisation(dataset):
  data = resolved(dataset).data
  return data.mean, data.std


def take(iterator, n):
  return list(itertools.islice(iterator, n))


def assert_same_batches(a, b):
  assert len(a) == len(b)
  for x, y in zip(a, b):
    assert x.keys() == y.keys()
    for k in x:
      np.testing.assert_array_equal(x[k], y[k])


def to_uint8(images, stats):
  mean, std = stats
  return np.rint((images * np.array(std) + np.array(mean)) * 255).astype(np.uint8)


def raw_examples(data_dir, split):
  builder = tfds.builder('sklearn_digits', data_dir=data_dir)
  return collections.Counter(
      (e['image'].tobytes(), int(e['label']))
      for e in tfds.as_numpy(builder.as_dataset(split=split))
  )


# ------------------------------------------------------------------------------- shapes and dtypes


@pytest.mark.parametrize(
    'config, shape, num_classes',
    [
        (make_config(name='cifar10'), (32, 32, 3), 10),
        (make_config(name='mnist', pad=2, flip=False), (28, 28, 1), 10),
        (
            make_config(  # the paper's ImageNet inputs (section 3.4), shorter side >= 64
                name='imagenet2012',
                augment='scale_augmentation',
                scale_range=(64, 96),
                normalisation='per_pixel_mean',
                lighting_std=0.1,
                image_size=64,
                eval_split='validation',
                shuffle_buffer=10,
                cache=False,
            ),
            (64, 64, 3),
            1000,
        ),
        # torchvision's random-resized crop on PNG-encoded images (the non-JPEG decode path).
        (make_config(name='cifar10', augment='inception_crop', image_size=24), (24, 24, 3), 10),
    ],
    ids=['cifar10', 'mnist', 'imagenet2012-paper', 'cifar10-inception-crop'],
)
def test_mock_datasets_shapes_and_dtypes(config, shape, num_classes):
  with tfds.testing.mock_data(num_examples=MOCK_EXAMPLES):
    info = resolved(config).dataset
    assert info == run_spec.DatasetFacts(num_classes, shape, MOCK_EXAMPLES, MOCK_EXAMPLES)
    batches = take(train_iterator(config, 8, seed=0), 4)  # crosses an epoch
    for batch in batches:
      assert batch.keys() == {'image', 'label'}
      assert batch['image'].shape == (8, *shape) and batch['image'].dtype == np.float32
      assert batch['label'].shape == (8,) and batch['label'].dtype == np.int32
      assert np.all(np.isfinite(batch['image']))
      assert np.all((batch['label'] >= 0) & (batch['label'] < num_classes))
    # Resume also works on the encoded paths (scale augmentation, random-resized crop).
    resumed = take(train_iterator(config, 8, seed=0, start_step=2), 2)
    assert_same_batches(resumed, batches[2:4])
    evals = list(ip.create_eval_iterator(resolved(config).data, local_batch_size=10))
    assert len(evals) == 3
    assert evals[0]['image'].shape == (10, *shape) and evals[0]['image'].dtype == np.float32
    assert (
        evals[0]['mask'].dtype == np.float32
        and sum(b['mask'].sum() for b in evals) == MOCK_EXAMPLES
    )


def test_normalisation_constants_and_computed_stats(digits_dir):
  config = digits_config(digits_dir)
  mean, std = normalisation(config)
  assert len(mean) == len(std) == 1 and 0.2 < mean[0] < 0.4 and 0.3 < std[0] < 0.5
  # Training images (augment='none') are normalised with them: about zero mean, unit std.
  batch = next(
      train_iterator(
          digits_config(digits_dir, augment='none', train_split='train'),
          local_batch_size=1_000,
          seed=0,
      )
  )
  assert abs(float(batch['image'].mean())) < 0.1 and abs(float(batch['image'].std()) - 1) < 0.1
  # Explicit values win.
  assert normalisation(digits_config(digits_dir, mean=(0.5,), std=(0.25,))) == (
      (0.5,),
      (0.25,),
  )
  with tfds.testing.mock_data(num_examples=2):
    assert normalisation(make_config(name='cifar10')) == tfds_source.KNOWN_STATS['cifar10']
    assert normalisation(
        make_config(name='imagenet2012', augment='inception_crop', image_size=32)
    ) == (
        tfds_source.IMAGENET_MEAN,
        tfds_source.IMAGENET_STD,
    )


# ---------------------------------------------------------------------------- determinism / resume


def test_digits_shapes_and_determinism(digits_dir):
  config = digits_config(digits_dir, flip=True)  # 1438 // 128 = 11 steps per epoch
  info = resolved(config).dataset
  assert info == run_spec.DatasetFacts(10, (8, 8, 1), 1438, 359)
  a = take(train_iterator(config, 128, seed=7), 13)
  b = take(train_iterator(config, 128, seed=7), 13)
  assert a[0]['image'].shape == (128, 8, 8, 1) and a[0]['image'].dtype == np.float32
  assert a[0]['label'].dtype == np.int32
  assert_same_batches(a, b)
  c = next(train_iterator(config, 128, seed=8))
  assert not np.array_equal(a[0]['label'], c['label'])
  # Each epoch is reshuffled: epoch 1 does not repeat epoch 0's order.
  assert not np.array_equal(a[0]['label'], a[11]['label'])


@pytest.mark.parametrize('start_step', [1, 10, 11, 12, 23])
def test_resume_reproduces_the_stream_exactly(digits_dir, start_step):
  config = digits_config(digits_dir, flip=True)  # cifar augment: random crops and flips
  fresh = take(train_iterator(config, 128, seed=3), start_step + 2)
  resumed = take(train_iterator(config, 128, seed=3, start_step=start_step), 2)
  assert_same_batches(resumed, fresh[start_step:])


def test_augmentation_changes_images_but_keeps_labels(digits_dir):
  plain = next(
      train_iterator(digits_config(digits_dir, augment='none'), local_batch_size=64, seed=1)
  )
  augmented = next(
      train_iterator(
          digits_config(digits_dir, augment='cifar', flip=True), local_batch_size=64, seed=1
      )
  )
  np.testing.assert_array_equal(plain['label'], augmented['label'])  # same shuffle, same examples
  assert not np.array_equal(plain['image'], augmented['image'])


def test_processes_split_the_training_set_without_overlap(digits_dir):
  # train[:1400] -> 700 examples per process, 7 batches of 100 per epoch:
  # one epoch is the whole share.
  config = digits_config(digits_dir, augment='none', flip=False, train_split='train[:1400]')
  stats = normalisation(config)
  seen = collections.Counter()
  for process in range(2):
    batches = take(
        train_iterator(config, 100, seed=0, process_index=process, process_count=2),
        14,
    )
    epochs = [[], []]
    for step, batch in enumerate(batches):
      images = to_uint8(batch['image'], stats)
      epochs[step // 7].extend(
          (img.tobytes(), int(lbl)) for img, lbl in zip(images, batch['label'])
      )
    assert collections.Counter(epochs[0]) == collections.Counter(
        epochs[1]
    )  # the same share every epoch
    assert epochs[0] != epochs[1]  # in a new order
    seen.update(epochs[0])
  assert seen == raw_examples(digits_dir, 'train[:1400]')  # together: every example exactly once


# ------------------------------------------------------------------------------- eval


@pytest.mark.parametrize(
    'eval_split, batch, expected_batches',
    [
        (
            'test',
            50,
            4,
        ),  # 359 -> 180 + 179 per process: 4 batches each, the last ones partly padded
        ('test[:101]', 50, 2),  # 51 + 50: process 1's second batch is padding only
    ],
)
def test_eval_covers_the_split_once_with_equal_batch_counts(
    digits_dir, eval_split, batch, expected_batches
):
  config = resolved(digits_config(digits_dir, eval_split=eval_split)).data
  stats = config.mean, config.std
  assert ip.num_eval_batches(config, local_batch_size=batch, process_count=2) == expected_batches
  seen = collections.Counter()
  total_mask = 0.0
  for process in range(2):
    batches = list(
        ip.create_eval_iterator(
            config, local_batch_size=batch, process_index=process, process_count=2
        )
    )
    assert len(batches) == expected_batches
    for b in batches:
      assert b.keys() == {'image', 'label', 'mask'}
      assert b['image'].shape == (batch, 8, 8, 1) and b['mask'].shape == (batch,)
      assert set(np.unique(b['mask'])) <= {0.0, 1.0}
      real = b['mask'] == 1.0
      assert np.all(b['image'][~real] == 0) and np.all(b['label'][~real] == 0)
      images = to_uint8(b['image'][real], stats)
      seen.update((img.tobytes(), int(lbl)) for img, lbl in zip(images, b['label'][real]))
      total_mask += float(b['mask'].sum())
  expected = raw_examples(digits_dir, eval_split)
  assert total_mask == sum(expected.values())
  assert seen == expected


def test_eval_single_process_is_repeatable(digits_dir):
  config = digits_config(digits_dir)
  first = list(ip.create_eval_iterator(resolved(config).data, local_batch_size=100))
  second = list(
      ip.create_eval_iterator(resolved(config).data, local_batch_size=100)
  )  # from the in-memory cache
  assert len(first) == 4 and sum(b['mask'].sum() for b in first) == 359
  assert_same_batches(first, second)


# ------------------------------------------------------------------------------- errors


def test_offline_dataset_is_prepared_on_first_use(tmp_path):
  builder = prepare.get_dataset_builder(digits_config(str(tmp_path)))
  assert builder.is_prepared() and builder.info.splits['train'].num_examples == 1438


def test_unprepared_dataset_fails_fast_with_one_line(tmp_path):
  start = time.perf_counter()
  with pytest.raises(prepare.DatasetNotReadyError) as error:
    resolved(make_config(name='cifar10', data_dir=str(tmp_path / 'empty')))
  elapsed = time.perf_counter() - start
  message = str(error.value)
  assert '\n' not in message
  assert (
      "'cifar10'" in message
      and 'tfds build cifar10' in message
      and str(tmp_path / 'empty') in message
  )
  assert '--config.dataset.data_dir' in message  # the flag, not the field's name
  assert not (tmp_path / 'empty').exists()  # the failed attempt's empty folders are removed
  assert elapsed < 30, elapsed


def test_missing_manual_files_fail_with_one_line(tmp_path):
  manual = tmp_path / 'manual'
  with pytest.raises(prepare.DatasetNotReadyError) as error:
    prepare.get_dataset_builder(
        make_config(name='imagenet2012', data_dir=str(tmp_path), manual_dir=str(manual))
    )
  message = str(error.value)
  assert '\n' not in message and 'ILSVRC2012_img_train.tar' in message and str(manual) in message


def test_bad_split_is_a_one_line_user_error(digits_dir):
  with pytest.raises(ValueError) as error:
    resolved(digits_config(digits_dir, eval_split='validation'))
  assert isinstance(error.value, UserError)
  assert (
      '\n' not in str(error.value)
      and "'validation'" in str(error.value)
      and 'test (359)' in str(error.value)
  )


def test_unknown_dataset_name():
  with pytest.raises(ValueError) as error:
    prepare.get_dataset_builder(make_config(name='no_such_dataset_xyz'))
  assert isinstance(error.value, prepare.DatasetNotReadyError)
  assert '\n' not in str(error.value) and 'no_such_dataset_xyz' in str(error.value)


# ------------------------------------------------------------------------------- devices


def _place():
  return parallel.DataParallel().place_batch


def _host_batches(n, batch):
  rng = np.random.default_rng(0)
  return [
      {
          'image': rng.normal(size=(batch, 4, 4, 1)).astype(np.float32),
          'label': rng.integers(0, 10, size=(batch,)).astype(np.int32),
      }
      for _ in range(n)
  ]


def test_prefetch_to_devices_delivers_sharded_batches_and_ends():
  sharding = parallel.DataParallel().batch_sharded
  host = _host_batches(5, 2 * jax.device_count())
  placed = list(ip.prefetch_to_devices(iter(host), _place(), size=2))
  assert len(placed) == 5
  for got, want in zip(placed, host):
    for k in want:
      assert isinstance(got[k], jax.Array) and got[k].sharding == sharding
      assert len(got[k].addressable_shards) == jax.device_count()
      np.testing.assert_array_equal(np.asarray(got[k]), want[k])


def _started_producer(make_iterator):
  """Calls `make_iterator()`; returns its result and the prefetch thread that the call started."""
  before = set(threading.enumerate())
  iterator = make_iterator()
  (producer,) = [
      t for t in threading.enumerate() if t not in before and t.name == 'prefetch_to_devices'
  ]
  return iterator, producer


def test_prefetch_to_devices_propagates_errors_and_stops():
  host = _host_batches(2, jax.device_count())

  def source():
    yield from host
    raise RuntimeError('reader broke')

  iterator, producer = _started_producer(lambda: ip.prefetch_to_devices(source(), _place()))
  assert len(take(iterator, 2)) == 2
  with pytest.raises(RuntimeError, match='reader broke'):
    next(iterator)
  # The error ends the stream and its thread.
  with pytest.raises(StopIteration):
    next(iterator)
  producer.join(timeout=30)
  assert not producer.is_alive()

  # An abandoned infinite source: closing the consumer stops the producer thread, which has read
  # at most what the queue holds (size=1) besides the batch consumed and one in its hands.
  pulled = 0

  def endless():
    nonlocal pulled
    while True:
      pulled += 1
      yield host[0]

  size = 1
  endless_iterator, producer = _started_producer(
      lambda: ip.prefetch_to_devices(endless(), _place(), size=size)
  )
  next(endless_iterator)
  # close() joins the producer; from another thread, so that a producer that never stops fails
  # the test instead of hanging it.
  closer = threading.Thread(target=endless_iterator.close, daemon=True)
  closer.start()
  closer.join(timeout=60)
  assert not closer.is_alive(), 'close() did not return'
  producer.join(timeout=30)
  assert not producer.is_alive()
  assert 1 <= pulled <= 1 + size + 1
  with pytest.raises(StopIteration):
    next(endless_iterator)


def test_fixed_num_shards_gives_the_same_global_batches_on_any_process_count(digits_dir):
  """1 process reading 2 data shards = 2 processes reading one each, rows in the same order."""
  config = digits_config(digits_dir, num_shards=2)
  single = take(train_iterator(config, 32, seed=5, start_step=3), 2)
  per_process = [
      take(
          train_iterator(config, 16, seed=5, start_step=3, process_index=p, process_count=2),
          2,
      )
      for p in (0, 1)
  ]
  for step, batch in enumerate(single):
    for key in batch:
      np.testing.assert_array_equal(
          batch[key], np.concatenate([per_process[0][step][key], per_process[1][step][key]])
      )
