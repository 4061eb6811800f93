"""ImageNet-style ('center') evaluation preprocessing against torchvision's, reproduced with PIL.

torchvision's ImageNet evaluation, Compose([Resize(256), CenterCrop(224), ToTensor(),
Normalize(...)]) on `PIL.Image.open(path).convert('RGB')`, is PIL's antialiased bilinear resize of
the shorter side to 256 (the longer to int(256 * long / short)), a 224 crop at
int(round((side - 224) / 2.0)) and the mean/std normalisation of x / 255: no torch is needed to
compute it. The images are real photographs (JPEGs shipped with scikit-learn), run through the real
eval iterator from their encoded bytes. benchmarks/preprocessing_parity.py checks the same against
torchvision itself.
"""

import importlib.resources
import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

from resnet_jax.config import fields
from resnet_jax.config import resolve as run_lib
from resnet_jax.data import pipeline as ip
from resnet_jax.data import tfds_source

SIZE, RESIZE = 224, 256
# Measured: the largest difference is 1 unit, on 0.05-0.25% of the values (PIL's fixed-point filter
# weights against TensorFlow's float32 ones). A resize with one rounding instead of PIL's two is off
# by 1 on ~15% of the values; the old non-antialiased crop-then-resize by 3.7-10 on average.
MAX_ABS_DIFF, MEAN_ABS_DIFF = 1.0, 0.02  # in 0..255 pixel units


def _encode(image: Image.Image, **kwargs) -> bytes:
  out = io.BytesIO()
  image.save(out, format='JPEG', **kwargs)
  return out.getvalue()


def _sample_jpegs() -> dict[str, bytes]:
  folder = importlib.resources.files('sklearn.datasets') / 'images'
  jpegs = {name: (folder / f'{name}.jpg').read_bytes() for name in ('china', 'flower')}  # 640x427
  flower = Image.open(io.BytesIO(jpegs['flower'])).convert('RGB')
  # Re-encoded with PIL's default 4:2:0 chroma subsampling (the originals are 4:4:4), so the
  # decoders' chroma upsampling is compared too.
  jpegs['portrait'] = _encode(flower.crop((100, 0, 400, 427)), quality=90)  # 300x427
  jpegs['small'] = _encode(flower.crop((200, 100, 330, 197)), quality=90)  # 130x97: upscaled
  return jpegs


JPEGS = _sample_jpegs()


def _resized_size(w: int, h: int) -> tuple[int, int]:
  """(new_w, new_h) of torchvision's Resize(256)."""
  short, long = (w, h) if w <= h else (h, w)
  new_long = int(RESIZE * long / short)
  return (RESIZE, new_long) if w <= h else (new_long, RESIZE)


def _center_crop(pixels: np.ndarray) -> np.ndarray:
  """torchvision's CenterCrop(224)."""
  h, w = pixels.shape[:2]
  top, left = int(round((h - SIZE) / 2.0)), int(round((w - SIZE) / 2.0))
  return pixels[top : top + SIZE, left : left + SIZE]


def _reference_uint8(data: bytes) -> np.ndarray:
  """torchvision's Resize(256) + CenterCrop(224), as it runs them on a PIL image."""
  image = Image.open(io.BytesIO(data)).convert('RGB')
  new_size = _resized_size(*image.size)
  if new_size != image.size:  # torchvision skips a resize to the same size
    image = image.resize(new_size, Image.BILINEAR)
  return _center_crop(np.asarray(image))


def _normalise(pixels: np.ndarray) -> np.ndarray:
  return (pixels / 255.0 - np.array(tfds_source.IMAGENET_MEAN)) / np.array(tfds_source.IMAGENET_STD)


def _pixel_units(normalised: np.ndarray) -> np.ndarray:
  return normalised * np.array(tfds_source.IMAGENET_STD) * 255.0


def _old_eval_uint8(data: bytes) -> np.ndarray:
  """The method this replaced: a centred 0.875 * min(h, w) square, non-antialiased bilinear."""
  h, w, _ = tf.io.extract_jpeg_shape(data).numpy()
  side = int(round(0.875 * min(h, w)))
  window = [(h - side + 1) // 2, (w - side + 1) // 2, side, side]
  crop = tf.cast(tf.io.decode_and_crop_jpeg(data, window, channels=3), tf.float32)
  return tf.image.resize(crop, [SIZE, SIZE], method='bilinear').numpy()


def _one_rounding_uint8(data: bytes) -> np.ndarray:
  """A near miss: PIL's filter, but one 2-D resize rounded once instead of PIL's two passes."""
  image = tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE')
  new_w, new_h = _resized_size(image.shape[1], image.shape[0])
  x = tf.image.resize(image, [new_h, new_w], method='bilinear', antialias=True).numpy()
  return _center_crop(np.clip(np.floor(x + 0.5), 0, 255))


def _within_bounds(diff: np.ndarray) -> bool:
  return float(diff.max()) <= MAX_ABS_DIFF + 1e-3 and float(diff.mean()) < MEAN_ABS_DIFF


@pytest.fixture(scope='module')
def eval_images() -> dict[str, np.ndarray]:
  """The eval iterator's normalised images, from an imagenet2012 split serving JPEGS' bytes."""
  names = list(JPEGS)

  def as_dataset(self, *args, **kwargs):  # replaces the builder's reader
    del self, args, kwargs
    return tf.data.Dataset.from_tensor_slices(
        {'image': [JPEGS[n] for n in names], 'label': np.arange(len(names), dtype=np.int64)}
    )

  config = fields.base_config('resnet50')
  config.dataset.update(
      name='imagenet2012', eval_split='validation', augment='inception_crop', image_size=SIZE
  )
  config.dataset.cache = False
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    data = run_lib.resolve(config, device_count=1, process_count=1, training=False).data
    (batch,) = list(ip.create_eval_iterator(data, local_batch_size=len(names)))
  assert batch['label'].tolist() == list(range(len(names))) and batch['mask'].all()
  return dict(zip(names, batch['image']))


@pytest.mark.parametrize('name', list(JPEGS))
def test_eval_matches_torchvision_reference(name, eval_images):
  ours = eval_images[name]
  assert ours.shape == (SIZE, SIZE, 3) and ours.dtype == np.float32
  reference = _normalise(_reference_uint8(JPEGS[name]).astype(np.float64))
  diff = np.abs(_pixel_units(ours - reference))
  assert _within_bounds(diff), (name, float(diff.max()), float(diff.mean()))


@pytest.mark.parametrize('name', ['china', 'flower', 'portrait'])
def test_bound_rejects_earlier_and_near_methods(name):
  # The bound is tight enough to fail the method this replaced and a resize rounded only once.
  reference = _reference_uint8(JPEGS[name]).astype(np.float64)
  assert not _within_bounds(np.abs(_old_eval_uint8(JPEGS[name]) - reference)), name
  assert not _within_bounds(np.abs(_one_rounding_uint8(JPEGS[name]) - reference)), name
