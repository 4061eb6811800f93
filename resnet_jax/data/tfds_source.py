"""The TFDS data source: any TFDS image-classification dataset via tf.data, deterministic and
resumable. The only module of the package that imports TensorFlow (pipeline.py says when).

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

Training augmentation (`dataset.augment`): 'cifar' (the paper's CIFAR, section 4.2: pad, random
crop, flip), 'scale_augmentation' (the paper's ImageNet, section 3.4: the shorter side resized to a
size drawn uniformly from `scale_range`, a random image_size crop, flip), 'inception_crop'
(torchvision's RandomResizedCrop), 'none'; PCA colour augmentation on any of them
(`lighting_std`). Normalisation: per channel, or the training split's per-pixel mean.

Evaluation: each process reads its share of `eval_split` (`tfds.even_splits`, nothing dropped, so
every example is in exactly one process), pads to a common number of batches with mask 0 examples.
The protocols' views (resnet_jax/data/views.py) are made here: '10crop' as torchvision's TenCrop,
'multiscale' one centred square per scale, all uint8 (normalised on the device).
"""

from __future__ import annotations

import collections
import math
from typing import Any, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from resnet_jax.data import views
from resnet_jax.data.datasets.prepare import get_dataset_builder
from resnet_jax.common.errors import UserError, one_line
from resnet_jax.config.run import ENCODED_AUGMENTS, BatchSpec, DataSpec, DatasetFacts, EvalSpec

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
# Computed statistics use the first (unshuffled) examples of train_split.
STATS_NUM_EXAMPLES = 10_000
# fb.resnet.torch's PCA of ImageNet's RGB values in [0, 1] (datasets/imagenet.lua), which its
# Lighting(0.1, eigval, eigvec) uses: eigenvalues, largest first, and the eigenvectors as columns.
FB_RESNET_TORCH_EIGVAL = (0.2175, 0.0188, 0.0045)
FB_RESNET_TORCH_EIGVEC = (
    (-0.5675, 0.7192, 0.4009),
    (-0.5808, -0.0045, -0.8140),
    (-0.5836, -0.6948, 0.4203),
)


# ------------------------------------------------------------------------------------ dataset facts


def _read_config(**kwargs) -> tfds.ReadConfig:
  options = tf.data.Options()
  options.deterministic = True
  return tfds.ReadConfig(options=options, try_autocache=False, **kwargs)


def _image_decoders(builder, encoded: bool = True) -> dict[str, Any] | None:
  """Decoders that keep the images encoded, or None (`encoded` False). Encoded augments decode (and
  crop) after the shuffle and resume skip, from the encoded bytes."""
  if not encoded:
    return None
  is_image = isinstance(builder.info.features['image'], tfds.features.Image)
  return {'image': tfds.decode.SkipDecoding()} if is_image else {}


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
  count = int(ds.cardinality())  # negative: unknown
  return count if count >= 0 else int(ds.reduce(np.int64(0), lambda c, _: c + 1))


def _image_shape(dataset, builder) -> tuple[int, int, int]:
  native = tuple(builder.info.features['image'].shape)
  channels = native[-1] if native and native[-1] is not None else 3
  size = dataset.image_size
  if size:
    return (int(size), int(size), int(channels))
  if dataset.augment in ENCODED_AUGMENTS:
    raise UserError(
        '--config.dataset.image_size must be set for'
        f' --config.dataset.augment={dataset.augment!r} (e.g. 224)'
    )
  if len(native) != 3 or any(d is None for d in native):
    raise UserError(
        f"the images of '{dataset.name}' have no fixed shape {native}: set "
        '--config.dataset.image_size'
    )
  return tuple(int(d) for d in native)


def declared_image_side(dataset) -> int | None:
  """The image side a TFDS dataset declares in code (no data is read or prepared), or None."""
  try:
    builder = tfds.builder(dataset.name, data_dir=dataset.data_dir)
    side = builder.info.features['image'].shape[0]
  except Exception:  # pylint: disable=broad-except  # an unknown name: resolve_data says so later
    return None
  return int(side) if side else None


def declared_facts(dataset) -> tuple[tuple[int, int, int], int]:
  """(the image shape the model sees, the number of classes) from the dataset's description in
  code alone: no data is read or prepared (weights conversion)."""
  try:
    builder = tfds.builder(dataset.name, data_dir=dataset.data_dir)
    classes = builder.info.features['label'].num_classes
  except Exception as e:  # pylint: disable=broad-except
    raise UserError(
        f"cannot tell the image shape of dataset '{dataset.name}' ({one_line(e, 200)});"
        ' set --config.dataset.image_size'
    ) from None
  return _image_shape(dataset, builder), int(classes)


def resolve_data(dataset) -> DataSpec:
  """The dataset section (checked by config/resolve.py), resolved with what only the data can tell:
  the image shape the model sees and the normalisation statistics. Prepares the dataset if it
  can (datasets/prepare.py)."""
  builder = get_dataset_builder(dataset)
  image_shape = _image_shape(dataset, builder)
  low, high = (int(v) for v in dataset.scale_range)
  if dataset.augment == 'scale_augmentation' and low < min(image_shape[:2]):
    raise UserError(
        f'--config.dataset.scale_range=({low}, {high}) resizes the shorter side below the'
        f' {min(image_shape[:2])} px crop; its low end must be at least image_size'
    )
  lighting_std = float(dataset.lighting_std)
  pixel_stats = None  # (mean image, RGB covariance) of the training split, when needed
  if dataset.normalisation == 'per_pixel_mean' or (
      lighting_std > 0 and dataset.lighting_pca == 'train_split'
  ):
    encoded = dataset.augment in ENCODED_AUGMENTS
    pixel_stats = _pixel_stats(builder, dataset.train_split, image_shape, encoded)
  if dataset.normalisation == 'per_pixel_mean':
    pixel_mean = pixel_stats[0]
    mean = tuple(float(m) for m in pixel_mean.mean(axis=(0, 1)))
    std = (1.0,) * image_shape[-1]
  else:
    pixel_mean = None
    mean, std = _normalisation_stats(dataset, builder, channels=image_shape[-1])
  eigval, eigvec = (), ()
  if lighting_std > 0:
    eigval, eigvec = _lighting_pca(dataset, pixel_stats, channels=image_shape[-1])
  return DataSpec(
      name=dataset.name,
      data_dir=dataset.data_dir,
      manual_dir=dataset.manual_dir,
      train_split=dataset.train_split,
      eval_split=dataset.eval_split,
      augment=dataset.augment,
      pad=int(dataset.pad),
      flip=bool(dataset.flip),
      shuffle_buffer=int(dataset.shuffle_buffer),
      cache=bool(dataset.cache),
      image_shape=image_shape,
      mean=mean,
      std=std,
      normalisation=dataset.normalisation,
      scale_range=(low, high),
      lighting_std=lighting_std,
      lighting_eigval=eigval,
      lighting_eigvec=eigvec,
      pixel_mean=pixel_mean,
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
  """Per-channel mean and std of x / 255 (float64 sums) over the first `num` images of `split` in
  file order, unshuffled: the same numbers in every process and run."""
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
    batches = ds.map(sums, num_parallel_calls=tf.data.AUTOTUNE).batch(1024)
    for s, sq, c in batches.as_numpy_iterator():
      total, total_sq, count = total + s.sum(0), total_sq + sq.sum(0), count + c.sum()
    mean = total / count
    std = np.sqrt(np.maximum(total_sq / count - mean**2, 1e-12))
    _COMPUTED_STATS[key] = (tuple(float(m) for m in mean), tuple(float(s) for s in std))
  return _COMPUTED_STATS[key]


_COMPUTED_PIXEL_STATS: dict[tuple, tuple[np.ndarray, np.ndarray]] = {}


def _pixel_stats(builder, split: str, image_shape, encoded: bool, num: int = STATS_NUM_EXAMPLES):
  """(mean image float32 [H, W, C], covariance of the RGB values float64 [C, C]) of x / 255 over
  the first `num` images of `split` as the model's input before normalisation: for encoded
  (ImageNet-style) data their centre view (imagenet_eval_image: shorter side 256, centre 224),
  for others the image, resized to the input shape where it differs as the pipeline resizes it.

  The paper subtracts "the per-pixel mean" (sections 3.4 and 4.2, as Krizhevsky et al. 2012) and
  takes the colour augmentation's PCA of "the set of RGB pixel values throughout the training set";
  both come from one pass over the first examples in file order, unshuffled: the same numbers in
  every process and run. Computed once per process, as the per-channel statistics are.
  """
  h, w, channels = image_shape
  key = (str(builder.data_dir), builder.name, str(split), num, tuple(image_shape), encoded)
  if key in _COMPUTED_PIXEL_STATS:
    return _COMPUTED_PIXEL_STATS[key]
  native = tuple(builder.info.features['image'].shape)
  ds = builder.as_dataset(
      split=split,
      shuffle_files=False,
      decoders=_image_decoders(builder, encoded),
      read_config=_read_config(),
  ).take(num)

  def view(ex):
    if encoded:
      x = tf.cast(imagenet_eval_image(ex['image'], h, channels), tf.float64)
    else:
      x = tf.cast(ex['image'], tf.float64)
      if native[:2] != (h, w):
        x = tf.cast(tf.image.resize(tf.cast(x, tf.float32), [h, w], method='bilinear'), tf.float64)
    x = tf.ensure_shape(x / 255.0, [h, w, channels])
    pixels = tf.reshape(x, [-1, channels])
    return x, tf.reduce_sum(pixels, 0), tf.matmul(pixels, pixels, transpose_a=True)

  total_image, total, total_outer, images = 0.0, 0.0, 0.0, 0
  batches = ds.map(view, num_parallel_calls=tf.data.AUTOTUNE).batch(256)
  for x, s, outer in batches.as_numpy_iterator():
    total_image = total_image + x.sum(0)
    total, total_outer, images = total + s.sum(0), total_outer + outer.sum(0), images + len(x)
  if not images:
    raise UserError(f"dataset '{builder.name}' split {split!r} has no images to compute statistics")
  count = images * h * w
  mean_rgb = total / count
  covariance = total_outer / count - np.outer(mean_rgb, mean_rgb)
  stats = (np.asarray(total_image / images, np.float32), covariance)
  stats[0].flags.writeable = False
  _COMPUTED_PIXEL_STATS[key] = stats
  return stats


def _lighting_pca(dataset, pixel_stats, *, channels: int):
  """(eigval, eigvec) of the colour augmentation: the training split's RGB covariance's
  eigenvalues, largest first, and unit eigenvectors as the columns of eigvec; or fb.resnet.torch's
  constants."""
  if dataset.lighting_pca == 'fb_resnet_torch':
    if channels != 3:
      raise UserError(
          "--config.dataset.lighting_pca='fb_resnet_torch' is ImageNet's RGB PCA; this data has"
          f" {channels} channel(s): use 'train_split'"
      )
    return FB_RESNET_TORCH_EIGVAL, FB_RESNET_TORCH_EIGVEC
  values, vectors = np.linalg.eigh(pixel_stats[1])
  order = np.argsort(values)[::-1]
  values, vectors = np.maximum(values[order], 0.0), vectors[:, order]
  # A fixed sign for each eigenvector: alpha is symmetric, so either is right.
  vectors = vectors * np.where(vectors.sum(axis=0) < 0, -1.0, 1.0)
  return tuple(values.tolist()), tuple(map(tuple, vectors.tolist()))


def _normalisation_stats(
    dataset, builder, *, channels: int
) -> tuple[tuple[float, ...], tuple[float, ...]]:
  """(mean, std) per channel of x / 255: the config's, known constants, or computed."""
  mean, std = dataset.mean, dataset.std
  if mean is None or std is None:
    if dataset.augment in ENCODED_AUGMENTS and channels == 3:
      known = (IMAGENET_MEAN, IMAGENET_STD)
    else:
      known = KNOWN_STATS.get(dataset.name)
    if known is None:
      known = _computed_stats(builder, dataset.train_split)
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


def _decode_other(data: tf.Tensor, channels: int) -> tf.Tensor:
  """PNG, GIF or BMP (e.g. tfds mock data, or non-JPEG datasets) to uint8 [H, W, C]."""
  return tf.io.decode_image(data, channels=channels, expand_animations=False)


def _decode_crop(data: tf.Tensor, crop_window, channels: int) -> tf.Tensor:
  """Decodes an encoded image, cropped to crop_window(shape) -> [y, x, h, w]; JPEGs decode only
  the crop, with the accurate DCT as _decode."""

  def jpeg():
    window = crop_window(tf.image.extract_jpeg_shape(data))
    return tf.image.decode_and_crop_jpeg(
        data, window, channels=channels, dct_method='INTEGER_ACCURATE'
    )

  def other():
    image = _decode_other(data, channels)
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
  """Decodes a whole encoded image to uint8 [H, W, C], JPEGs bit-exactly as PIL does: PIL
  (torchvision's reader) uses libjpeg's ISLOW DCT; TF's default (IFAST) is up to ~20 units off it,
  so train and eval would not see PIL's pixels."""
  return tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.io.decode_jpeg(data, channels=channels, dct_method='INTEGER_ACCURATE'),
      lambda: _decode_other(data, channels),
  )


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


def _resized_center_crop(image: tf.Tensor, resize: int, crop: int) -> tf.Tensor:
  """uint8 [crop, crop, C]: torchvision's Resize(resize), CenterCrop(crop) on a PIL image."""
  resized = _resize_like_pil(image, _shorter_side_shape(tf.shape(image), resize))
  return tf.ensure_shape(_center_crop(resized, crop, crop), [crop, crop, None])


def imagenet_eval_image(data: tf.Tensor, image_size: int, channels: int = 3) -> tf.Tensor:
  """uint8 [image_size, image_size, C] from encoded bytes, as torchvision's ImageNet evaluation
  (Resize(256), CenterCrop(224) for image_size 224)."""
  image = _resized_center_crop(_decode(data, channels), views.eval_resize(image_size), image_size)
  return tf.ensure_shape(image, [image_size, image_size, channels])


def scale_augmentation_size(seed: tf.Tensor, low: int, high: int) -> tf.Tensor:
  """The shorter side of a scale-augmented image: an integer uniform over [low, high], both
  included (section 3.4: "randomly sampled in [256, 480]")."""
  return tf.random.stateless_uniform([], seed, minval=low, maxval=high + 1, dtype=tf.int32)


def scale_augmentation_choice(seed: tf.Tensor, shape: tf.Tensor, spec: DataSpec) -> tf.Tensor:
  """[new_h, new_w, top, left] of one scale-augmented crop of an image of `shape` [h, w, ...]: the
  image resized to shorter side scale_augmentation_size, and a crop of the input size at an offset
  uniform over the positions that fit."""
  out_h, out_w, _ = spec.image_shape
  size_seed, top_seed, left_seed = tf.unstack(tf.random.experimental.stateless_split(seed, num=3))
  new_shape = _shorter_side_shape(shape, scale_augmentation_size(size_seed, *spec.scale_range))
  top = tf.random.stateless_uniform([], top_seed, 0, new_shape[0] - out_h + 1, dtype=tf.int32)
  left = tf.random.stateless_uniform([], left_seed, 0, new_shape[1] - out_w + 1, dtype=tf.int32)
  return tf.stack([new_shape[0], new_shape[1], top, left])


def _source_span(offset, length: int, scale, size):
  """[start, end) of the input pixels that output pixels offset .. offset + length - 1 of a resize
  by `scale` read: TF's antialiased triangle kernel reaches max(1, 1 / scale) input pixels each
  side of an output pixel's centre, (o + 0.5) / scale - 0.5; one more for rounding."""
  reach = tf.maximum(1.0, 1.0 / scale) + 1.0
  first = (tf.cast(offset, tf.float32) + 0.5) / scale - 0.5 - reach
  last = (tf.cast(offset + length, tf.float32) - 0.5) / scale - 0.5 + reach
  start = tf.maximum(0, tf.cast(tf.math.floor(first), tf.int32))
  end = tf.minimum(size, tf.cast(tf.math.ceil(last), tf.int32) + 1)
  return start, end


def _scale_augmented(data: tf.Tensor, seed: tf.Tensor, spec: DataSpec) -> tf.Tensor:
  """float32 [H, W, C] in 0..255: the crop scale_augmentation_choice picks of the image resized to
  a random shorter side (bilinear, antialiased when it shrinks): section 3.4's scale augmentation,
  after Simonyan & Zisserman's scale jittering.

  Computed on the crop alone: only the part of the JPEG that the crop's pixels read is decoded,
  and the resize (tf.raw_ops.ScaleAndTranslate, which tf.image.resize runs) is shifted to compute
  just the crop's pixels, the same numbers as resizing the whole image and cropping it up to
  float rounding (tests/test_paper_augmentation.py), for a fraction of the work.
  """
  out_h, out_w, channels = spec.image_shape
  shape = _image_size(data)
  new_h, new_w, top, left = tf.unstack(scale_augmentation_choice(seed, shape, spec))
  # float64, then float32, as resize's
  scale = tf.cast(tf.stack([new_h / shape[0], new_w / shape[1]]), tf.float32)
  y0, y1 = _source_span(top, out_h, scale[0], shape[0])
  x0, x1 = _source_span(left, out_w, scale[1], shape[1])
  window = _decode_crop(data, lambda _: tf.stack([y0, x0, y1 - y0, x1 - x0]), channels)
  translation = tf.stack([
      tf.cast(y0, tf.float32) * scale[0] - tf.cast(top, tf.float32),
      tf.cast(x0, tf.float32) * scale[1] - tf.cast(left, tf.float32),
  ])
  x = tf.raw_ops.ScaleAndTranslate(
      images=tf.cast(window, tf.float32)[None],
      size=[out_h, out_w],
      scale=scale,
      translation=translation,
      kernel_type='triangle',
      antialias=True,
  )[0]
  return tf.ensure_shape(x, [out_h, out_w, channels])


def _image_size(data: tf.Tensor) -> tf.Tensor:
  """[h, w] of encoded bytes, from a JPEG's header (no decode) or by decoding other formats."""
  return tf.cond(
      tf.io.is_jpeg(data),
      lambda: tf.image.extract_jpeg_shape(data)[:2],
      lambda: tf.shape(_decode_other(data, channels=1))[:2],
  )


def lighting_offset(seed: tf.Tensor, std: float, eigval, eigvec) -> tf.Tensor:
  """Krizhevsky et al. 2012's PCA colour noise, float32 [C] in units of x / 255: eigvec @ (alpha *
  eigval), alpha ~ N(0, std^2) per component, eigvec's columns the eigenvectors, as
  fb.resnet.torch's Lighting (transforms.lua) computes it. The same offset is added to every pixel
  of the image."""
  eigval = tf.constant(eigval, tf.float32)
  alpha = tf.random.stateless_normal(tf.shape(eigval), seed, dtype=tf.float32) * std
  return tf.linalg.matvec(tf.constant(eigvec, tf.float32), alpha * eigval)


def _make_preprocess(data: DataSpec, builder, *, train: bool):
  """fn(image, seed[2]) -> float32 normalised [H, W, C]; image is encoded bytes for the encoded
  augments (run.ENCODED_AUGMENTS)."""
  augment = data.augment
  out_h, out_w, channels = data.image_shape
  native = tuple(builder.info.features['image'].shape)
  if data.normalisation == 'per_pixel_mean':
    pixel_mean = tf.constant(data.pixel_mean, tf.float32)
    normalise = lambda x: x / 255.0 - pixel_mean  # x: float32 in [0, 255]
  else:
    mean = tf.constant(data.mean, tf.float32)
    std = tf.constant(data.std, tf.float32)
    normalise = lambda x: (x / 255.0 - mean) / std
  lighting = train and data.lighting_std > 0
  pad = data.pad
  resize = lambda x: tf.image.resize(x, [out_h, out_w], method='bilinear')

  def preprocess(image, seed):
    seeds = tf.random.experimental.stateless_split(seed, num=2)
    if lighting or (train and augment == 'scale_augmentation'):
      # Split from seeds[0], so that the older augmentations' streams (crop: seeds[0], flip:
      # seeds[1]) stay what they always were.
      scale_seed, lighting_seed = tf.unstack(
          tf.random.experimental.stateless_split(seeds[0], num=2)
      )
    if data.encoded:
      if train and augment == 'scale_augmentation':
        x = _scale_augmented(image, scale_seed, data)
      elif train:  # inception_crop
        window = _random_crop_window(seeds[0])
        x = resize(tf.cast(_decode_crop(image, window, channels), tf.float32))
      else:
        x = tf.cast(imagenet_eval_image(image, out_h, channels), tf.float32)
    else:
      x = tf.cast(image, tf.float32)
      if native[:2] != (out_h, out_w):
        x = resize(x)
    if lighting:
      x = x + 255.0 * lighting_offset(
          lighting_seed, data.lighting_std, data.lighting_eigval, data.lighting_eigvec
      )
    x = normalise(x)
    if augment == 'cifar' and train and pad > 0:
      # As the paper: pad the mean-subtracted image with zeros, take a random crop of the
      # original size.
      x = tf.pad(x, [[pad, pad], [pad, pad], [0, 0]])
      x = tf.image.stateless_random_crop(x, [out_h, out_w, channels], seed=seeds[0])
    if data.flip and train:
      x = tf.image.stateless_random_flip_left_right(x, seed=seeds[1])
    return tf.ensure_shape(x, [out_h, out_w, channels])

  return preprocess


def _five_crops(image: tf.Tensor, h: int, w: int) -> list[tf.Tensor]:
  """torchvision's five_crop: top-left, top-right, bottom-left, bottom-right, centre."""
  shape = tf.shape(image)
  bottom, right = shape[0] - h, shape[1] - w
  return [
      image[:h, :w],
      image[:h, right : right + w],
      image[bottom : bottom + h, :w],
      image[bottom : bottom + h, right : right + w],
      _center_crop(image, h, w),
  ]


def ten_crops(image: tf.Tensor, crop: int, resize: int) -> tf.Tensor:
  """uint8 [10, crop, crop, C] of a decoded uint8 image, as torchvision's Resize(resize) +
  TenCrop(crop) on a PIL image: the five crops of the resized image, then the five of its mirror
  image (not the five mirrored: the centre crop's offset rounds the other way on an odd margin)."""
  resized = _resize_like_pil(image, _shorter_side_shape(tf.shape(image), resize))
  crops = _five_crops(resized, crop, crop) + _five_crops(resized[:, ::-1], crop, crop)
  return tf.ensure_shape(tf.stack(crops), [10, crop, crop, None])


def _make_eval_views(data: DataSpec, spec: EvalSpec):
  """fn(image) -> {group name: uint8 [count, h, w, C]}: the protocol's views
  (views.view_groups), from encoded bytes or a decoded image."""
  channels = data.image_shape[-1]
  crop = data.image_shape[0]

  def views_of(image):
    image = _decode(image, channels) if data.encoded else tf.cast(image, tf.uint8)
    if spec.protocol == '10crop':
      return {'crops': ten_crops(image, crop, views.ten_crop_resize(spec, crop))}
    # multiscale: the centred square of the image resized to each shorter side
    return {f'scale{s}': _resized_center_crop(image, s, s)[None] for s in spec.scales}

  return views_of


def eval_image(data: DataSpec, builder, encoded: bytes) -> np.ndarray:
  """An image file's bytes (PNG, JPEG, GIF or BMP, any size) as evaluation sees the eval split's
  images: float32 [H, W, C], decoded to the run's channel count, resized (and for encoded data
  centre-cropped) as the pipeline does a dataset of another size, then normalised. Bytes that are
  not an image raise tf.errors.InvalidArgumentError."""
  image = tf.constant(encoded)
  if not data.encoded:
    image = _decode(image, data.image_shape[-1])
    if tuple(image.shape[:2]) != data.image_shape[:2]:
      image = tf.image.resize(tf.cast(image, tf.float32), data.image_shape[:2], method='bilinear')
  preprocess = _make_preprocess(data, builder, train=False)
  return preprocess(image, tf.zeros([2], tf.int64)).numpy()


def _pipeline_options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  options.threading.max_intra_op_parallelism = 1
  return options


def _seed(*values: int) -> int:
  """A 63-bit seed derived from integers (any sign/size), stable across machines and versions."""
  sequence = np.random.SeedSequence([int(v) % 2**64 for v in values])
  high, low = (int(s) for s in sequence.generate_state(2, dtype=np.uint32))
  return (high << 31) ^ low


# ------------------------------------------------------------------------------------ train


def create_train_iterator(
    data: DataSpec, batch: BatchSpec, *, seed: int, start_step: int = 0, process_index: int = 0
) -> Iterator[dict[str, np.ndarray]]:
  """Infinite iterator of {'image': float32 [B, H, W, C], 'label': int32 [B]}; see module docstring.

  The training split is read as `batch.num_shards` streams, each over its own share of the split; a
  process reads only its own streams and concatenates their batches. With num_shards fixed, the
  global batches are the same whatever the number of processes: a run on 2 hosts and one on 1 host
  see the same data, and a job can resume on another number of hosts.
  """
  per_process = batch.per_process // batch.per_shard
  streams = [
      _shard_batches(data, process_index * per_process + j, batch, seed, start_step)
      for j in range(per_process)
  ]
  if per_process == 1:
    return streams[0]
  return ({k: np.concatenate([b[k] for b in parts]) for k in parts[0]} for parts in zip(*streams))


def _shard_batches(
    data: DataSpec, shard: int, batch: BatchSpec, seed: int, start_step: int
) -> Iterator[dict[str, np.ndarray]]:
  """The batches of one data shard (its random choices are keyed by the shard, not the process)."""
  builder = get_dataset_builder(data)
  split = tfds.split_for_jax_process(
      data.train_split, process_index=shard, process_count=batch.num_shards, drop_remainder=True
  )
  num = _num_examples(builder, split)
  batch_size, steps_per_epoch = batch.per_shard, batch.steps_per_epoch
  preprocess = _make_preprocess(data, builder, train=True)
  buffer = max(1, min(data.shuffle_buffer or num, num))
  options = _pipeline_options()

  def read(shuffle_seed: int | None = None) -> tf.data.Dataset:
    """The shard's examples; files in order, or shuffled with `shuffle_seed`."""
    return builder.as_dataset(
        split=split,
        shuffle_files=shuffle_seed is not None,
        decoders=_image_decoders(builder, data.encoded),
        read_config=_read_config(shuffle_seed=shuffle_seed),
    ).map(lambda ex: {'image': ex['image'], 'label': ex['label']})

  cached = read().cache() if data.cache else None

  def epoch_dataset(epoch: int, skip: int) -> tf.data.Dataset:
    ds = cached if cached is not None else read(shuffle_seed=_seed(seed, shard, epoch, 2))
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


def _eval_examples(
    data, builder, process_index: int, process_count: int, spec: EvalSpec | None
) -> tf.data.Dataset:
  has_views = spec is not None and spec.protocol != 'center'
  cache = bool(data.cache) and not has_views  # views are up to 2.7 MB an image: made afresh
  key = (str(builder.data_dir), repr(data), process_index, process_count, spec)
  if cache and key in _EVAL_DATASETS:
    _EVAL_DATASETS.move_to_end(key)
    return _EVAL_DATASETS[key]
  split = _eval_splits(data, process_count)[process_index]
  ds = builder.as_dataset(
      split=split,
      shuffle_files=False,
      decoders=_image_decoders(builder, data.encoded),
      read_config=_read_config(),
  )
  if has_views:
    make_views = _make_eval_views(data, spec)
    example = lambda ex: {'views': make_views(ex['image'])}
  else:
    preprocess = _make_preprocess(data, builder, train=False)
    zero_seed = tf.zeros([2], tf.int64)
    example = lambda ex: {'image': preprocess(ex['image'], zero_seed)}
  ds = ds.map(
      lambda ex: {
          **example(ex),
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
    data,
    *,
    local_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    eval_spec: EvalSpec | None = None,
) -> Iterator[dict[str, np.ndarray]]:
  """Finite iterator of {'image', 'label', 'mask'} over this process's share of eval_split, or
  {'views': {group: uint8 [B, count, h, w, C]}, 'label', 'mask'} for the 10crop and multiscale
  protocols (resnet_jax/training/evaluation.py).

  Every process yields num_eval_batches(...) batches; padding examples are zeros with mask 0.
  """
  batches = num_eval_batches(data, local_batch_size=local_batch_size, process_count=process_count)
  ds = _eval_examples(data, get_dataset_builder(data), process_index, process_count, eval_spec)
  groups = views.view_groups(eval_spec, data.image_shape) if eval_spec is not None else ()
  channels = data.image_shape[-1]
  if groups:
    inputs = {'views': {g.name: tf.zeros([g.count, *g.size, channels], tf.uint8) for g in groups}}
  else:
    inputs = {'image': tf.zeros(data.image_shape, tf.float32)}
  padding = tf.data.Dataset.from_tensors({
      **inputs,
      'label': tf.constant(0, tf.int32),
      'mask': tf.constant(0.0, tf.float32),
  }).repeat()
  ds = ds.concatenate(padding).take(batches * local_batch_size)
  ds = ds.batch(local_batch_size, drop_remainder=True)
  # A batch of the paper's five scales is 2.7 MB an image: one batch ahead is enough.
  prefetch = 1 if groups else tf.data.AUTOTUNE
  return ds.prefetch(prefetch).with_options(_pipeline_options()).as_numpy_iterator()
