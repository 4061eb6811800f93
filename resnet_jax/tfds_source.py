"""The TFDS data source: any TFDS image-classification dataset via tf.data, deterministic and
resumable. The only module of the package that imports TensorFlow (input_pipeline.py imports it
when a run reads a TFDS dataset).

Training stream (per process). The process reads only its share of `train_split`
(`tfds.split_for_jax_process(..., drop_remainder=True)`, so every process has the same share size
n). The stream is a sequence of epochs; epoch e is

    read (cached in memory, or files shuffled with a seed of (seed, process, e))
    -> shuffle(shuffle_buffer, seed of (seed, process, e))
    -> the first steps_per_epoch * batch examples
       (steps_per_epoch = n // batch; the rest is dropped)
    -> enumerate -> skip (resume) -> decode + augment keyed by (seed, process, e, position) -> batch

Every random choice is a pure function of (seed, process_index, epoch, position in epoch): shuffles
use fixed op seeds and augmentation uses `tf.random.stateless_*` ops. So batch k is the same
whenever it is produced, and `create_train_iterator(..., start_step=k)` starts directly in epoch
k // steps_per_epoch, skipping the first (k % steps_per_epoch) * batch examples *before* decoding
and augmentation.

Evaluation: each process reads its share of `eval_split` (`tfds.even_splits`, nothing dropped, so
every example is in exactly one process), pads to a common number of batches with mask 0 examples.
"""

from __future__ import annotations

import collections
import math
from typing import Any, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from resnet_jax.datasets.prepare import get_dataset_builder
from resnet_jax.errors import UserError, one_line
from resnet_jax.run import BatchSpec, DataSpec, DatasetFacts, check_dataset_fields

try:  # tf.data only; keep TensorFlow off any accelerator that JAX uses.
  tf.config.set_visible_devices([], 'GPU')
  tf.config.set_visible_devices([], 'TPU')
except (RuntimeError, ValueError):  # devices already initialised, or no such device type
  pass

# Normalisation constants of x / 255, per channel.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
KNOWN_STATS = {
    'cifar10': ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    'cifar100': ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    'imagenet2012': (IMAGENET_MEAN, IMAGENET_STD),
}
STATS_NUM_EXAMPLES = (
    10_000  # computed statistics use the first (unshuffled) examples of train_split
)
# 'imagenet' eval, as torchvision's reference (Resize(256), CenterCrop(224) for size 224): shorter
# side to round(size / 0.875) with PIL's antialiased bilinear, then the centre size x size crop.
EVAL_CROP_FRACTION = 0.875


# ------------------------------------------------------------------------------------ dataset facts


def _read_config(**kwargs) -> tfds.ReadConfig:
  options = tf.data.Options()
  options.deterministic = True
  return tfds.ReadConfig(options=options, try_autocache=False, **kwargs)


def _image_decoders(builder) -> dict[str, Any]:
  return (
      {'image': tfds.decode.SkipDecoding()}
      if isinstance(builder.info.features['image'], tfds.features.Image)
      else {}
  )


def _num_examples(builder, split) -> int:
  """Examples in a (sub)split: from the metadata, or by reading when the metadata has no splits."""
  splits = builder.info.splits
  if len(splits):
    try:
      return int(splits[split].num_examples)
    except (KeyError, ValueError, AssertionError) as e:
      known = ', '.join(f'{k} ({v.num_examples})' for k, v in splits.items())
      raise UserError(
          f"bad split {split!r} for dataset '{builder.name}' ({one_line(e, 150)}); its splits: "
          f"{known}; slices look like 'train[:45000]' or 'train[90%:]'"
      ) from None
  ds = builder.as_dataset(
      split=split, decoders=_image_decoders(builder), read_config=_read_config()
  )
  count = int(ds.cardinality())
  if count < 0:
    count = int(ds.reduce(np.int64(0), lambda c, _: c + 1))
  return count


def _image_shape(dataset_config, builder) -> tuple[int, int, int]:
  native = tuple(builder.info.features['image'].shape)
  channels = native[-1] if native and native[-1] is not None else 3
  size = dataset_config.image_size
  if size:
    return (int(size), int(size), int(channels))
  if dataset_config.augment == 'imagenet':
    raise UserError(
        "--config.dataset.image_size must be set for --config.dataset.augment='imagenet' (e.g. 224)"
    )
  if len(native) != 3 or any(d is None for d in native):
    raise UserError(
        f"the images of '{dataset_config.name}' have no fixed shape {native}: set "
        '--config.dataset.image_size'
    )
  return tuple(int(d) for d in native)


def resolve_data(dataset_config) -> DataSpec:
  """The config's dataset section, checked once and resolved with what only the data can tell:
  the image shape the model sees and the normalisation statistics. Prepares the dataset if it
  can (datasets/prepare.py)."""
  check_dataset_fields(dataset_config)
  builder = get_dataset_builder(dataset_config)
  image_shape = _image_shape(dataset_config, builder)
  mean, std = _normalisation_stats(dataset_config, builder, channels=image_shape[-1])
  return DataSpec(
      name=dataset_config.name,
      data_dir=dataset_config.data_dir,
      manual_dir=dataset_config.manual_dir,
      train_split=dataset_config.train_split,
      eval_split=dataset_config.eval_split,
      augment=dataset_config.augment,
      pad=int(dataset_config.pad),
      flip=bool(dataset_config.flip),
      shuffle_buffer=int(dataset_config.shuffle_buffer),
      cache=bool(dataset_config.cache),
      image_shape=image_shape,
      mean=mean,
      std=std,
  )


def dataset_facts(data: DataSpec) -> DatasetFacts:
  """What the dataset holds: classes, the image shape the model sees, examples per split."""
  builder = get_dataset_builder(data)
  return DatasetFacts(
      num_classes=int(builder.info.features['label'].num_classes),
      image_shape=data.image_shape,
      num_train_examples=_num_examples(builder, data.train_split),
      num_eval_examples=_num_examples(builder, data.eval_split),
  )


# ------------------------------------------------------------------------------------ normalisation


_COMPUTED_STATS: dict[tuple, tuple[tuple[float, ...], tuple[float, ...]]] = {}


def _computed_stats(builder, split: str, num: int = STATS_NUM_EXAMPLES):
  """Per-channel mean and std of x / 255 over the first `num` images of `split` (float64 sums).

  The first examples in file order, unshuffled: the same numbers in every process and run.
  """
  key = (str(builder.data_dir), builder.name, str(split), num)
  if key not in _COMPUTED_STATS:
    ds = builder.as_dataset(split=split, shuffle_files=False, read_config=_read_config()).take(num)

    def sums(ex):
      x = tf.cast(ex['image'], tf.float64) / 255.0
      x = tf.reshape(x, [-1, tf.shape(x)[-1]])
      return (
          tf.reduce_sum(x, 0),
          tf.reduce_sum(tf.square(x), 0),
          tf.cast(tf.shape(x)[0], tf.float64),
      )

    total, total_sq, count = 0.0, 0.0, 0.0
    for s, sq, c in (
        ds.map(sums, num_parallel_calls=tf.data.AUTOTUNE).batch(1024).as_numpy_iterator()
    ):
      total, total_sq, count = total + s.sum(0), total_sq + sq.sum(0), count + c.sum()
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    _COMPUTED_STATS[key] = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
  return _COMPUTED_STATS[key]


def _normalisation_stats(
    dataset_config, builder, *, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) per channel of x / 255: the config's, known constants, or computed.

  Computed statistics are deterministic.
  """
  mean, std = dataset_config.mean, dataset_config.std
  if mean is None or std is None:
    if dataset_config.augment == 'imagenet' and channels == 3:
      known = (IMAGENET_MEAN, IMAGENET_STD)
    else:
      known = KNOWN_STATS.get(dataset_config.name)
    if known is None:
      known = _computed_stats(builder, dataset_config.train_split)
    mean = known[0] if mean is None else mean
    std = known[1] if std is None else std
  mean, std = tuple(float(m) for m in mean), tuple(float(s) for s in std)
  if len(mean) != channels or len(std) != channels:
    raise UserError(
        f'--config.dataset.mean and --config.dataset.std need {channels} values (one per channel'
        f' of the images), got {mean} and {std}'
    )
  return mean, std


# ------------------------------------------------------------------------------------ preprocessing


def _decode_crop(data: tf.Tensor, crop_window, channels: int) -> tf.Tensor:
  """Decodes an encoded image, cropped to crop_window(shape) -> [y, x, h, w].

  JPEGs decode only the crop.
  """

  def jpeg():
    window = crop_window(tf.image.extract_jpeg_shape(data))
    # The accurate DCT, as PIL (torchvision's reader) and our eval decode: train and eval see the
    # same pixels. TF's default fast DCT is up to ~20 grey levels off it.
    return tf.image.decode_and_crop_jpeg(
        data, window, channels=channels, dct_method='INTEGER_ACCURATE'
    )

  def other():  # PNG etc. (e.g. tfds mock data, or non-JPEG datasets)
    image = tf.io.decode_image(data, channels=channels, expand_animations=False)
    y, x, h, w = tf.unstack(crop_window(tf.shape(image)))
    return image[y : y + h, x : x + w]

  return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def _random_crop_window(seed: tf.Tensor):
  def window(shape):
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.constant([0.0, 0.0, 1.0, 1.0], shape=[1, 1, 4]),
        seed=seed,
        min_object_covered=0.0,
        aspect_ratio_range=(3 / 4, 4 / 3),
        area_range=(0.08, 1.0),
        max_attempts=10,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])

  return window


def _decode(data: tf.Tensor, channels: int) -> tf.Tensor:
  """Decodes a whole encoded image to uint8 [H, W, C], JPEGs bit-exactly as PIL does."""

  def jpeg():  # PIL uses libjpeg's ISLOW DCT; TF's default (IFAST) is up to ~20 units off it.
    return tf.io.decode_jpeg(data, channels=channels, dct_method='INTEGER_ACCURATE')

  def other():
    return tf.io.decode_image(data, channels=channels, expand_animations=False)

  return tf.cond(tf.io.is_jpeg(data), jpeg, other)


def _shorter_side_shape(shape: tf.Tensor, size: int) -> tf.Tensor:
  """[new_h, new_w] of torchvision's Resize(size): the shorter side to size, the longer side
  int(size * long / short) (a float64 division, as Python's)."""
  h, w = shape[0], shape[1]
  short, long = tf.minimum(h, w), tf.maximum(h, w)
  new_long = tf.cast(
      tf.math.floor(tf.cast(size * long, tf.float64) / tf.cast(short, tf.float64)), tf.int32
  )
  return tf.where(w <= h, tf.stack([new_long, size]), tf.stack([size, new_long]))


def _round_to_uint8(x: tf.Tensor) -> tf.Tensor:
  return tf.cast(tf.clip_by_value(tf.math.floor(x + 0.5), 0.0, 255.0), tf.uint8)  # PIL: half up


def _resize_height_like_pil(image: tf.Tensor, new_h: tf.Tensor) -> tf.Tensor:
  """One pass of PIL's resize of uint8 [H, W, C]: the antialiased triangle filter along the height,
  rounded to uint8. Resized as one column of W * C channels, since a 2-D resize would also run an
  identity pass along the width that costs as much as this one."""
  h, w, c = tf.unstack(tf.shape(image))
  column = tf.reshape(image, tf.stack([h, 1, w * c]))
  column = tf.image.resize(column, tf.stack([new_h, 1]), method='bilinear', antialias=True)
  return _round_to_uint8(tf.reshape(column, tf.stack([new_h, w, c])))


def _resize_like_pil(image: tf.Tensor, new_shape: tf.Tensor) -> tf.Tensor:
  """PIL's Image.resize(..., BILINEAR) of uint8 [H, W, C] to [new_h, new_w]. As PIL: the width
  first, then the height, rounding to uint8 after each pass (one 2-D resize rounded once is 1 unit
  off on ~15% of the values; this, on ~0.2%). A pass that keeps a length is the identity."""
  transposed = _resize_height_like_pil(tf.transpose(image, [1, 0, 2]), new_shape[1])
  return _resize_height_like_pil(tf.transpose(transposed, [1, 0, 2]), new_shape[0])


def _center_crop(image: tf.Tensor, out_h: int, out_w: int) -> tf.Tensor:
  """torchvision's CenterCrop: offsets int(round((side - out) / 2.0)), Python's half to even."""
  shape = tf.shape(image)
  top = tf.cast(tf.round(tf.cast(shape[0] - out_h, tf.float64) / 2.0), tf.int32)
  left = tf.cast(tf.round(tf.cast(shape[1] - out_w, tf.float64) / 2.0), tf.int32)
  return image[top : top + out_h, left : left + out_w]


def imagenet_eval_image(data: tf.Tensor, image_size: int, channels: int = 3) -> tf.Tensor:
  """uint8 [image_size, image_size, C] from encoded bytes, as torchvision's ImageNet evaluation
  (Resize(256), CenterCrop(224) on a PIL image for image_size 224)."""
  image = _decode(data, channels)
  resize = int(round(image_size / EVAL_CROP_FRACTION))
  image = _resize_like_pil(image, _shorter_side_shape(tf.shape(image), resize))
  image = _center_crop(image, image_size, image_size)
  return tf.ensure_shape(image, [image_size, image_size, channels])


def _make_preprocess(data: DataSpec, builder, *, train: bool):
  """fn(image, seed[2]) -> float32 normalised [H, W, C]; image is encoded bytes for 'imagenet'."""
  augment = data.augment
  out_h, out_w, channels = data.image_shape
  native = tuple(builder.info.features['image'].shape)
  mean = tf.constant(data.mean, tf.float32)
  std = tf.constant(data.std, tf.float32)
  flip = data.flip and train
  pad = data.pad

  def normalise(x):  # x: float32 in [0, 255]
    return (x / 255.0 - mean) / std

  def resize(x):
    return tf.image.resize(x, [out_h, out_w], method='bilinear')

  def preprocess(image, seed):
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    if augment == 'imagenet':
      if train:
        window = _random_crop_window(seeds[0])
        x = resize(tf.cast(_decode_crop(image, window, channels), tf.float32))
      else:
        x = tf.cast(imagenet_eval_image(image, out_h, channels), tf.float32)
      x = normalise(x)
    else:
      x = tf.cast(image, tf.float32)
      if native[:2] != (out_h, out_w):
        x = resize(x)
      x = normalise(x)
      if augment == 'cifar' and train and pad > 0:
        # As the paper: pad the mean-subtracted image with zeros, take a random crop of the
        # original size.
        x = tf.pad(x, [[pad, pad], [pad, pad], [0, 0]])
        x = tf.image.stateless_random_crop(x, [out_h, out_w, channels], seed=seeds[0])
    if flip:
      x = tf.image.stateless_random_flip_left_right(x, seed=seeds[1])
    return tf.ensure_shape(x, [out_h, out_w, channels])

  return preprocess


def eval_image(data: DataSpec, builder, encoded: bytes) -> np.ndarray:
  """An image file's bytes (PNG, JPEG, GIF or BMP, any size) as evaluation sees the eval split's
  images: float32 [H, W, C], decoded to the run's channel count; for 'imagenet', resized and
  centre-cropped by imagenet_eval_image; otherwise resized (bilinear) to the run's image shape
  where it differs, as the pipeline resizes a dataset of another size; then the same normalisation.
  Bytes that are not an image raise tf.errors.InvalidArgumentError."""
  image = tf.constant(encoded)
  if data.augment != 'imagenet':
    image = _decode(image, data.image_shape[-1])
    if tuple(image.shape[:2]) != data.image_shape[:2]:
      image = tf.image.resize(tf.cast(image, tf.float32), data.image_shape[:2], method='bilinear')
  preprocess = _make_preprocess(data, builder, train=False)
  return preprocess(image, tf.zeros([2], tf.int64)).numpy()


def _decoders(data: DataSpec, builder):
  # 'imagenet' decodes (and crops) after the shuffle and resume skip, from the encoded bytes.
  return _image_decoders(builder) if data.augment == 'imagenet' else None


def _pipeline_options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  return options


def _seed(*values: int) -> int:
  """A 63-bit seed derived from integers (any sign/size), stable across machines and versions."""
  state = np.random.SeedSequence([int(v) % 2**64 for v in values]).generate_state(
      2, dtype=np.uint32
  )
  return int((int(state[0]) << 31) ^ int(state[1]))


# ------------------------------------------------------------------------------------ train


def train_split_for_process(data: DataSpec, process_index: int, process_count: int):
  return tfds.split_for_jax_process(
      data.train_split,
      process_index=process_index,
      process_count=process_count,
      drop_remainder=True,
  )


def create_train_iterator(
    data: DataSpec,
    batch: BatchSpec,
    *,
    seed: int,
    start_step: int = 0,
    process_index: int = 0,
) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator of {'image': float32 [B, H, W, C], 'label': int32 [B]}; see module docstring.

  The training split is read as `batch.num_shards` streams, each over its own share of the split; a
  process reads only its own streams and concatenates their batches. With num_shards fixed, the
  global batches are the same whatever the number of processes: a run on 2 hosts and one on 1 host
  see the same data, and a job can resume on another number of hosts.
  """
  per_process = batch.per_process // batch.per_shard
  streams = [
      _shard_batches(
          data,
          shard=process_index * per_process + j,
          batch=batch,
          seed=seed,
          start_step=start_step,
      )
      for j in range(per_process)
  ]
  if per_process == 1:
    return streams[0]
  return ({k: np.concatenate([b[k] for b in parts]) for k in parts[0]} for parts in zip(*streams))


def _shard_batches(
    data: DataSpec, *, shard: int, batch: BatchSpec, seed: int, start_step: int
) -> Iterator[dict[str, np.ndarray]]:
  """The batches of one data shard (its random choices are keyed by the shard, not the process)."""
  builder = get_dataset_builder(data)
  split = train_split_for_process(data, shard, batch.num_shards)
  num = _num_examples(builder, split)
  batch_size, steps_per_epoch = batch.per_shard, batch.steps_per_epoch
  preprocess = _make_preprocess(data, builder, train=True)
  decoders = _decoders(data, builder)
  buffer = max(1, min(data.shuffle_buffer or num, num))
  options = _pipeline_options()

  def select(ex):
    return {'image': ex['image'], 'label': ex['label']}

  cached = None
  if data.cache:
    cached = (
        builder.as_dataset(
            split=split, shuffle_files=False, decoders=decoders, read_config=_read_config()
        )
        .map(select)
        .cache()
    )

  def epoch_dataset(epoch: int, skip: int) -> tf.data.Dataset:
    if cached is not None:
      ds = cached
    else:
      ds = builder.as_dataset(
          split=split,
          shuffle_files=True,
          decoders=decoders,
          read_config=_read_config(shuffle_seed=_seed(seed, shard, epoch, 2)),
      ).map(select)
    ds = ds.shuffle(buffer, seed=_seed(seed, shard, epoch, 0), reshuffle_each_iteration=False)
    ds = ds.take(steps_per_epoch * batch_size).enumerate().skip(skip)
    aug_seed = tf.constant(_seed(seed, shard, epoch, 1), tf.int64)

    def process(i, ex):
      return {
          'image': preprocess(ex['image'], tf.stack([aug_seed, i])),
          'label': tf.cast(ex['label'], tf.int32),
      }

    ds = ds.map(process, num_parallel_calls=tf.data.AUTOTUNE)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    return ds.with_options(options)

  def batches():
    epoch, step_in_epoch = divmod(start_step, steps_per_epoch)
    skip = step_in_epoch * batch_size
    while True:
      yield from epoch_dataset(epoch, skip).as_numpy_iterator()
      epoch, skip = epoch + 1, 0

  return batches()


# ------------------------------------------------------------------------------------ eval


def _eval_splits(data: DataSpec, process_count: int):
  return tfds.even_splits(data.eval_split, n=process_count, drop_remainder=False)


def num_eval_batches(data: DataSpec, *, local_batch_size: int, process_count: int) -> int:
  """The number of batches every process's eval iterator yields."""
  builder = get_dataset_builder(data)
  largest = max(_num_examples(builder, s) for s in _eval_splits(data, process_count))
  return max(1, math.ceil(largest / local_batch_size))


# Eval datasets with cache=True are kept (and with them the in-memory cache) across evaluations.
_EVAL_DATASETS: collections.OrderedDict[tuple, tf.data.Dataset] = collections.OrderedDict()


def _eval_examples(data, builder, process_index: int, process_count: int) -> tf.data.Dataset:
  cache = bool(data.cache)
  key = (str(builder.data_dir), repr(data), process_index, process_count)
  if cache and key in _EVAL_DATASETS:
    _EVAL_DATASETS.move_to_end(key)
    return _EVAL_DATASETS[key]
  split = _eval_splits(data, process_count)[process_index]
  preprocess = _make_preprocess(data, builder, train=False)
  ds = builder.as_dataset(
      split=split,
      shuffle_files=False,
      decoders=_decoders(data, builder),
      read_config=_read_config(),
  )
  zero_seed = tf.zeros([2], tf.int64)
  ds = ds.map(
      lambda ex: {
          'image': preprocess(ex['image'], zero_seed),
          'label': tf.cast(ex['label'], tf.int32),
          'mask': tf.constant(1.0, tf.float32),
      },
      num_parallel_calls=tf.data.AUTOTUNE,
  )
  if cache:
    ds = ds.cache()
    _EVAL_DATASETS[key] = ds
    while len(_EVAL_DATASETS) > 4:
      _EVAL_DATASETS.popitem(last=False)
  return ds


def create_eval_iterator(
    data, *, local_batch_size: int, process_index: int = 0, process_count: int = 1
) -> Iterator[dict[str, np.ndarray]]:
  """Finite iterator of {'image', 'label', 'mask'} over this process's share of eval_split.

  Every process yields num_eval_batches(...) batches; padding examples are zeros with mask 0.
  """
  builder = get_dataset_builder(data)
  total = (
      num_eval_batches(data, local_batch_size=local_batch_size, process_count=process_count)
      * local_batch_size
  )
  ds = _eval_examples(data, builder, process_index, process_count)
  padding = tf.data.Dataset.from_tensors({
      'image': tf.zeros(data.image_shape, tf.float32),
      'label': tf.constant(0, tf.int32),
      'mask': tf.constant(0.0, tf.float32),
  }).repeat()
  ds = ds.concatenate(padding).take(total).batch(local_batch_size, drop_remainder=True)
  return ds.prefetch(tf.data.AUTOTUNE).with_options(_pipeline_options()).as_numpy_iterator()
