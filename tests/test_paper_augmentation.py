"""The paper's ImageNet and CIFAR training inputs (section 3.4, 4.2) against their definitions.

* Scale augmentation: the shorter side is uniform over the integers of [256, 480], both ends
  included; the test's bound rejects a range one off at either end.
* PCA lighting: the offset added to every pixel is fb.resnet.torch's Lighting (transforms.lua),
  eigvec @ (alpha * eigval) with eigvec's columns the eigenvectors, alpha ~ N(0, 0.1^2), on a
  fixed seed; the transposed matrix (a near miss) is rejected; and the offsets' spread matches.
* The per-pixel mean and the eigen-decomposition are the training split's, computed in numpy from
  the same images; training images are x / 255 minus that mean image, nothing divided.
* The recipes: the names say whose; old workdirs (augment 'imagenet', per-channel) resume under
  the recipe that is theirs and are refused, naming the changed fields, under the paper's.
"""

import importlib.resources
import io

import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image


from resnet_jax.config import fields

from configs import cifar10, imagenet
from resnet_jax.data import pipeline as ip
from resnet_jax.workdir import record as run_record
from resnet_jax.data import tfds_source
from tests.data_specs import data_spec
from resnet_jax.config import resolve as run_lib
from resnet_jax.common.errors import UserError

LOW, HIGH = 256, 480


@pytest.fixture(autouse=True)
def fresh_statistics(monkeypatch):
  """Each test's mock datasets get their own statistics: the per-process caches are keyed by the
  data dir, which every tfds mock shares, so another module's mock CIFAR-10 run in this process
  would otherwise hand its statistics to these tests."""
  monkeypatch.setattr(tfds_source, '_COMPUTED_STATS', {})
  monkeypatch.setattr(tfds_source, '_COMPUTED_PIXEL_STATS', {})


def _sizes(sample, count: int = 20_000) -> np.ndarray:
  """`sample(seed)` on `count` seeds [7, i], as the pipeline keys its examples (one graph)."""
  seeds = tf.stack([tf.fill([count], tf.constant(7, tf.int64)), tf.range(count, dtype=tf.int64)], 1)
  draw = tf.function(lambda s: tf.map_fn(sample, s, fn_output_signature=tf.int32))
  return draw(seeds).numpy()


def _uniform_over(sizes: np.ndarray, low: int, high: int) -> bool:
  """Every value of [low, high] and nothing else, with counts a chi-square test accepts (224 dof:
  mean 224, sd 21; the bound at +6 sd)."""
  values = np.arange(low, high + 1)
  if sizes.min() != low or sizes.max() != high:
    return False
  counts = np.bincount(sizes - low, minlength=len(values))
  expected = len(sizes) / len(values)
  chi2 = float(((counts - expected) ** 2 / expected).sum())
  return chi2 < (len(values) - 1) + 6 * np.sqrt(2 * (len(values) - 1))


def test_scale_augmentation_sizes_are_uniform_over_256_to_480():
  sizes = _sizes(lambda seed: tfds_source.scale_augmentation_size(seed, LOW, HIGH))
  assert _uniform_over(sizes, LOW, HIGH)
  assert abs(sizes.mean() - (LOW + HIGH) / 2) < 2.5  # 5 standard errors of the mean
  # The bound catches a range one off at either end (e.g. an exclusive upper end).
  assert not _uniform_over(
      _sizes(lambda s: tfds_source.scale_augmentation_size(s, LOW, 479)), LOW, HIGH
  )
  assert not _uniform_over(
      _sizes(lambda s: tfds_source.scale_augmentation_size(s, 257, 480)), LOW, HIGH
  )
  assert not _uniform_over(
      _sizes(lambda s: tfds_source.scale_augmentation_size(s, LOW, 481)), LOW, HIGH
  )


def _jpegs() -> dict[str, bytes]:
  folder = importlib.resources.files('sklearn.datasets') / 'images'
  china = (folder / 'china.jpg').read_bytes()  # 640x427, 4:4:4
  image = Image.open(io.BytesIO(china)).convert('RGB')
  out = {'china': china}
  for name, box in (('portrait', (100, 0, 400, 427)), ('small', (200, 100, 330, 197))):
    buffer = io.BytesIO()
    image.crop(box).save(buffer, format='JPEG', quality=90)  # 4:2:0, as most of ImageNet
    out[name] = buffer.getvalue()
  return out


@pytest.mark.parametrize('name, data', list(_jpegs().items()))
def test_scale_augmented_crop_is_the_crop_of_the_whole_resized_image(name, data):
  # The pipeline decodes and resizes only what the crop reads; by definition the crop is that of
  # the whole image resized to the drawn shorter side (PIL-exact decode, TF's antialiased resize).
  spec = data_spec(flip=True, scale_range=(LOW, HIGH))
  image = tf.io.decode_jpeg(data, channels=3, dct_method='INTEGER_ACCURATE')
  for i in range(4):
    seed = tf.constant([1, i], tf.int64)
    ours = tfds_source._scale_augmented(tf.constant(data), seed, spec).numpy()
    new_h, new_w, top, left = tfds_source.scale_augmentation_choice(
        seed, tf.shape(image)[:2], spec
    ).numpy()
    assert min(new_h, new_w) in range(LOW, HIGH + 1)
    whole = tf.image.resize(image, [new_h, new_w], method='bilinear', antialias=True).numpy()
    reference = whole[top : top + 224, left : left + 224]
    np.testing.assert_allclose(ours, reference, atol=0.01, err_msg=f'{name} seed {i}')


EIGVAL = np.array(tfds_source.FB_RESNET_TORCH_EIGVAL)
EIGVEC = np.array(tfds_source.FB_RESNET_TORCH_EIGVEC)


def _fb_resnet_torch_lighting(image: np.ndarray, alpha: np.ndarray, eigvec=EIGVEC) -> np.ndarray:
  """transforms.lua's Lighting on a [H, W, 3] image in [0, 1], given its alpha draw:
  rgb = eigvec:clone():cmul(alpha:view(1,3):expand(3,3)):cmul(eigval:view(1,3):expand(3,3)):sum(2),
  then input[i]:add(rgb[i]) for each channel i."""
  rgb = (eigvec * alpha[None, :] * EIGVAL[None, :]).sum(axis=1)
  return image + rgb[None, None, :]


def _ours(image: np.ndarray, seed) -> np.ndarray:
  offset = tfds_source.lighting_offset(tf.constant(seed, tf.int64), 0.1, EIGVAL, EIGVEC)
  return image + offset.numpy()


def test_lighting_is_fb_resnet_torchs_on_a_fixed_seed():
  image = np.random.default_rng(0).uniform(size=(5, 7, 3))
  seed = [3, 11]
  alpha = 0.1 * tf.random.stateless_normal([3], tf.constant(seed, tf.int64)).numpy()  # the draw
  ours = _ours(image, seed)
  np.testing.assert_allclose(ours, _fb_resnet_torch_lighting(image, alpha), atol=1e-6)
  # A near miss, the eigenvectors as rows, is further off than the tolerance.
  assert np.abs(ours - _fb_resnet_torch_lighting(image, alpha, EIGVEC.T)).max() > 1e-3


def test_lighting_offsets_spread_along_the_eigenvectors_by_eigval_times_std():
  seeds = tf.stack([tf.fill([2_000], tf.constant(5, tf.int64)), tf.range(2_000, dtype=tf.int64)], 1)
  offsets = tf.function(
      lambda s: tf.map_fn(
          lambda seed: tfds_source.lighting_offset(seed, 0.1, EIGVAL, EIGVEC), s, dtype=tf.float32
      )
  )(seeds).numpy()
  # In the eigenvectors' basis the components are alpha_j * eigval_j: std 0.1 * eigval_j.
  components = offsets @ np.linalg.inv(EIGVEC).T
  np.testing.assert_allclose(components.std(axis=0), 0.1 * EIGVAL, rtol=0.08)
  assert np.abs(np.corrcoef(components.T) - np.eye(3)).max() < 0.1


# --------------------------------------------------------------------- statistics of the split


def _china_tiles(count: int = 60) -> np.ndarray:
  """Real 32x32 RGB tiles of a photograph, as a decoded CIFAR-like split."""
  folder = importlib.resources.files('sklearn.datasets') / 'images'
  china = np.asarray(Image.open(io.BytesIO((folder / 'china.jpg').read_bytes())).convert('RGB'))
  return np.stack(
      [china[32 * (i // 13) : 32 * (i // 13) + 32, 32 * (i % 13) :][:, :32] for i in range(count)]
  )


def test_per_pixel_mean_and_pca_are_the_training_splits():
  tiles = _china_tiles()

  def as_dataset(self, *args, **kwargs):
    del self, args, kwargs
    return tf.data.Dataset.from_tensor_slices(
        {'image': tiles, 'label': np.arange(len(tiles), dtype=np.int64) % 10}
    )

  config = cifar10.get_config('resnet8')  # the paper's CIFAR: per-pixel mean
  config.dataset.update(lighting_std=0.1, augment='none', flip=False, cache=False)
  config.train.update(batch_size=len(tiles))
  assert config.dataset.normalisation == 'per_pixel_mean'
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    data = run_lib.resolve(config, device_count=1, process_count=1).data
    config.dataset.lighting_std = 0.0
    run = run_lib.resolve(config, device_count=1, process_count=1)
    (images,) = [next(ip.create_train_iterator(run.data, run.batch, seed=0))['image']]
  x = tiles / 255.0
  mean_image = x.mean(axis=0)
  np.testing.assert_allclose(data.pixel_mean, mean_image, atol=1e-6)
  assert data.std == (1.0, 1.0, 1.0)
  pixels = x.reshape(-1, 3)
  values, vectors = np.linalg.eigh(np.cov(pixels.T, bias=True))
  np.testing.assert_allclose(data.lighting_eigval, values[::-1], rtol=1e-6)
  for j in range(3):  # unit eigenvectors up to sign, as columns
    column = np.array(data.lighting_eigvec)[:, j]
    assert abs(abs(column @ vectors[:, 2 - j]) - 1) < 1e-6
  # Training images: x / 255 minus the mean image (a shuffled batch: compare as sets of rows).
  expected = np.sort((x - mean_image).reshape(len(x), -1).astype(np.float32), axis=0)
  np.testing.assert_allclose(np.sort(images.reshape(len(x), -1), axis=0), expected, atol=1e-6)


# --------------------------------------------------------------------------------- recipes


def _record(config) -> dict:
  return {'config': run_lib.config_json(config)}


def _old_record(config) -> dict:
  """The record a workdir of `config` wrote before these fields existed."""
  saved = run_lib.config_json(config)
  for field in ('normalisation', 'scale_range', 'lighting_std', 'lighting_pca'):
    del saved['dataset'][field]
  del saved['evaluation']
  if saved['dataset']['augment'] == 'inception_crop':
    saved['dataset']['augment'] = 'imagenet'
  return {'config': saved}


def test_recipes_say_whose_they_are():
  paper, torchvision = imagenet.get_config('resnet50'), imagenet.get_config('resnet50,torchvision')
  assert (paper.dataset.augment, paper.dataset.scale_range) == ('scale_augmentation', (256, 480))
  assert (paper.dataset.normalisation, paper.dataset.lighting_std) == ('per_pixel_mean', 0.1)
  assert paper.evaluation.protocol == '10crop'
  # The paper's bottleneck (v1: the stride on the first 1x1); torchvision's is v1.5.
  assert paper.model.stride_in_1x1 and not torchvision.model.stride_in_1x1
  assert not imagenet.get_config('resnet34').model.stride_in_1x1  # basic blocks have no 1x1
  assert (torchvision.dataset.augment, torchvision.dataset.normalisation) == (
      'inception_crop',
      'per_channel',
  )
  assert torchvision.evaluation.protocol == 'center'
  assert cifar10.get_config('resnet56').dataset.normalisation == 'per_pixel_mean'
  with pytest.raises(UserError, match="'resnet50,torchvision'"):
    imagenet.get_config('resnet50,paper')
  config = fields.base_config('resnet8')
  config.dataset.augment = 'imagenet'
  with pytest.raises(UserError, match="now 'inception_crop'"):
    run_lib.check(config)


def test_old_workdirs_resume_under_their_recipe_and_are_told_of_the_paper_s():
  old_imagenet = _old_record(imagenet.get_config('resnet50,torchvision'))
  where = 'checkpoint runs/r50/5000'
  # Under the recipe that is theirs: the same run (the rename and the new fields' old values).
  assert (
      run_record.check_resume(
          old_imagenet,
          _record(imagenet.get_config('resnet50,torchvision')),
          accept=frozenset(),
          where=where,
      )
      == []
  )
  with pytest.raises(run_record.ChangedRunError) as error:
    run_record.check_resume(
        old_imagenet, _record(imagenet.get_config('resnet50')), accept=frozenset(), where=where
    )
  message = str(error.value)
  for change in (
      'dataset.augment "inception_crop" -> "scale_augmentation"',
      'dataset.normalisation "per_channel" -> "per_pixel_mean"',
      'dataset.lighting_std 0.0 -> 0.1',
      'model.stride_in_1x1 false -> true',
  ):
    assert change in message, message
  assert 'evaluation.protocol' not in message  # how it is scored may change: recorded, accepted
  old_cifar = _old_record(cifar10.get_config('resnet56'))
  with pytest.raises(run_record.ChangedRunError, match='dataset.normalisation "per_channel"'):
    run_record.check_resume(
        old_cifar, _record(cifar10.get_config('resnet56')), accept=frozenset(), where=where
    )
  accepted = run_record.check_resume(
      old_cifar,
      _record(cifar10.get_config('resnet56')),
      accept=frozenset({'dataset.normalisation'}),
      where=where,
  )
  assert accepted == ['dataset.normalisation "per_channel" -> "per_pixel_mean"']
  # --mode=eval and predict rebuild an old run's config with today's names.
  rebuilt = run_record.config_from_record(old_imagenet['config'])
  assert (rebuilt.dataset.augment, rebuilt.dataset.normalisation) == (
      'inception_crop',
      'per_channel',
  )
  assert rebuilt.evaluation.protocol == 'center'
