"""The evaluation protocols (resnet_jax/training/evaluation.py) against references computed
independently.

* 10crop's views are torchvision's Resize(256) + TenCrop(224) on a PIL image, reproduced with PIL
  (no torch): the five crops of the resized image and the five of its mirror image, on real
  JPEGs (scikit-learn's), within the bound the centre-crop check uses; the bound rejects taking
  the mirror images of the five crops instead. benchmarks/preprocessing_parity.py holds the same
  against torchvision itself (`make parity`).
* multiscale's views are Resize(s) + CenterCrop(s) at each scale, the same way.
* The fully-convolutional scores at the crop size equal the ordinary forward pass (global
  pooling, then the classifier), and the averaged probabilities over scales and mirror images
  equal a numpy/einsum computation from the last feature map.
* Every example is counted once (two processes' shares, padding masked), through the CLI too.
"""

import collections
import importlib.resources
import io
import json
import types

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds
from PIL import Image

import resnet_jax.data.datasets  # noqa: F401  (registers sklearn_digits)
from resnet_jax.config import resolve as run_lib
from resnet_jax.workdir.workdir import Workdir
from tests.data_specs import data_spec
from resnet_jax.config import fields
from configs import digits
from resnet_jax.training import evaluation, parallel, loop as train
from resnet_jax import models
from resnet_jax.data import pipeline as ip
from tests.cli import read_jsonl

SIZE, RESIZE = 224, 256
MAX_ABS_DIFF, MEAN_ABS_DIFF = 1.0, 0.02  # 0..255 units: PIL's rounding ties, as the centre crop


def _encode(image: Image.Image) -> bytes:
  out = io.BytesIO()
  image.save(out, format='JPEG', quality=90)
  return out.getvalue()


def _sample_jpegs() -> dict[str, bytes]:
  folder = importlib.resources.files('sklearn.datasets') / 'images'
  jpegs = {name: (folder / f'{name}.jpg').read_bytes() for name in ('china', 'flower')}  # 640x427
  flower = Image.open(io.BytesIO(jpegs['flower'])).convert('RGB')
  jpegs['portrait'] = _encode(flower.crop((100, 0, 400, 427)))  # 300x427
  jpegs['small'] = _encode(flower.crop((200, 100, 330, 197)))  # 130x97: upscaled
  return jpegs


JPEGS = _sample_jpegs()


def _pil_resized(data: bytes, size: int) -> Image.Image:
  """torchvision's Resize(size) on a PIL image: the shorter side to size, the longer one
  int(size * long / short), PIL's bilinear (antialiased); skipped when the size is the same."""
  image = Image.open(io.BytesIO(data)).convert('RGB')
  w, h = image.size
  short, long = (w, h) if w <= h else (h, w)
  new_long = int(size * long / short)
  new_size = (size, new_long) if w <= h else (new_long, size)
  return image if new_size == image.size else image.resize(new_size, Image.BILINEAR)


def _five_crops(pixels: np.ndarray, crop: int) -> list[np.ndarray]:
  """torchvision's five_crop: tl, tr, bl, br, centre (offsets int(round((side - crop) / 2.0)))."""
  h, w = pixels.shape[:2]
  top, left = int(round((h - crop) / 2.0)), int(round((w - crop) / 2.0))
  return [
      pixels[:crop, :crop],
      pixels[:crop, w - crop :],
      pixels[h - crop :, :crop],
      pixels[h - crop :, w - crop :],
      pixels[top : top + crop, left : left + crop],
  ]


def _reference_ten_crops(data: bytes) -> np.ndarray:
  """torchvision's TenCrop(224) after Resize(256): five_crop of the image, then of its hflip."""
  resized = _pil_resized(data, RESIZE)
  mirrored = resized.transpose(Image.FLIP_LEFT_RIGHT)
  return np.stack(
      _five_crops(np.asarray(resized), SIZE) + _five_crops(np.asarray(mirrored), SIZE)
  ).astype(np.float64)


def _within_bounds(diff: np.ndarray) -> bool:
  return float(diff.max()) <= MAX_ABS_DIFF + 1e-3 and float(diff.mean()) < MEAN_ABS_DIFF


def _imagenet_views(protocol: str, **evaluation_fields) -> dict[str, dict[str, np.ndarray]]:
  """The eval iterator's views of JPEGS under `protocol`, from an imagenet2012 split of their
  bytes, by image name."""
  names = list(JPEGS)

  def as_dataset(self, *args, **kwargs):  # replaces the builder's reader
    del self, args, kwargs
    return tf.data.Dataset.from_tensor_slices(
        {'image': [JPEGS[n] for n in names], 'label': np.arange(len(names), dtype=np.int64)}
    )

  config = fields.base_config('resnet50')
  config.dataset.update(
      name='imagenet2012',
      eval_split='validation',
      augment='inception_crop',
      image_size=SIZE,
      cache=False,
  )
  config.evaluation.update(protocol=protocol, **evaluation_fields)
  with tfds.testing.mock_data(as_dataset_fn=as_dataset):
    run = run_lib.resolve(config, device_count=1, process_count=1, training=False)
    (batch,) = list(
        ip.create_eval_iterator(run.data, local_batch_size=len(names), eval_spec=run.evaluation)
    )
  assert batch['label'].tolist() == list(range(len(names))) and batch['mask'].all()
  return {
      name: {group: views[i] for group, views in batch['views'].items()}
      for i, name in enumerate(names)
  }


@pytest.fixture(scope='module')
def ten_crops():
  return _imagenet_views('10crop')


@pytest.mark.parametrize('name', list(JPEGS))
def test_ten_crops_are_torchvisions_resize_256_ten_crop_224(name, ten_crops):
  ours = ten_crops[name]['crops']
  assert ours.shape == (10, SIZE, SIZE, 3) and ours.dtype == np.uint8
  diff = np.abs(ours.astype(np.float64) - _reference_ten_crops(JPEGS[name]))
  for index in range(10):
    assert _within_bounds(diff[index]), (name, index, float(diff[index].max()))


@pytest.mark.parametrize('name', ['china', 'flower'])  # 383 px wide at 256: an odd margin
def test_ten_crop_bound_rejects_mirroring_the_crops(name, ten_crops):
  # TenCrop mirrors the image, then crops; mirroring the five crops moves the centre crop by one
  # pixel where (width - 224) is odd, and the bound sees it.
  reference = _reference_ten_crops(JPEGS[name])
  mirrored_crops = reference[:5, :, ::-1]
  assert not _within_bounds(np.abs(mirrored_crops[4] - reference[9]))
  ours = ten_crops[name]['crops'].astype(np.float64)
  assert not _within_bounds(np.abs(ours[9] - mirrored_crops[4]))


def test_multiscale_views_are_resize_then_centre_square():
  views = _imagenet_views('multiscale', scales=(224, 384))
  for name in ('china', 'portrait', 'small'):
    for scale in (224, 384):
      ours = views[name][f'scale{scale}']
      assert ours.shape == (1, scale, scale, 3) and ours.dtype == np.uint8
      reference = _five_crops(np.asarray(_pil_resized(JPEGS[name], scale)), scale)[4]
      diff = np.abs(ours[0].astype(np.float64) - reference)
      assert _within_bounds(diff), (name, scale, float(diff.max()), float(diff.mean()))


# ----------------------------------------------------------------------------------- the network


def _variables(model, image_shape, seed: int = 0):
  """Random weights of He et al.'s scale, random BatchNorm statistics and a random classifier bias,
  made with numpy on the shapes alone (JAX's random initialisers cost more to compile than the
  tests that use them)."""
  shapes = jax.eval_shape(
      lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_shape)), train=False)
  )
  rng = np.random.default_rng(seed)

  def fill(path, leaf):
    name = jax.tree_util.keystr(path)
    if "'kernel'" in name:  # conv [kh, kw, in, out] or dense [in, out]
      scale = np.sqrt(2.0 / np.prod(leaf.shape[:-1]))
      return (scale * rng.standard_normal(leaf.shape)).astype(np.float32)
    if "'var'" in name:
      return rng.uniform(0.5, 1.5, leaf.shape).astype(np.float32)
    base = 1.0 if "'scale'" in name else 0.0
    return (base + 0.1 * rng.standard_normal(leaf.shape)).astype(np.float32)

  return jax.tree_util.tree_map_with_path(fill, shapes)


def test_fully_convolutional_scores_at_224_equal_pooling_then_the_classifier():
  # ResNet-18's layout (7x7 map at 224) at an eighth of its widths: the head is what is tested.
  model = models.create_model('resnet18', num_classes=10, stage_widths=(8, 16, 32, 64))
  x = jax.random.normal(jax.random.key(1), (2, SIZE, SIZE, 3))
  variables = _variables(model, (SIZE, SIZE, 3))
  both = jax.jit(
      lambda v, x: (
          model.apply(v, x, train=False),
          model.apply(v, x, train=False, score_map=True),
      )
  )
  logits, score_map = both(variables, x)
  assert score_map.shape == (2, 7, 7, 10)
  np.testing.assert_allclose(score_map.mean(axis=(1, 2)), logits, rtol=1e-5, atol=1e-5)


def _softmax(z):
  z = z - z.max(axis=-1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(axis=-1, keepdims=True)


def _reference_probabilities(model, variables, views, mean, std, mirror: bool):
  """The protocol's averaged probabilities from the network's last feature map, in numpy: the
  classifier as an einsum at every position, the map averaged, softmax, averaged over views."""
  kernel = np.asarray(variables['params']['head']['kernel'], np.float64)
  bias = np.asarray(variables['params']['head']['bias'], np.float64)
  features_of = jax.jit(
      lambda x: model.apply(variables, x, train=False, mutable=['intermediates'])[1]
  )
  total, count = 0.0, 0
  for group in views.values():  # uint8 [B, n, h, w, C]
    for index in range(group.shape[1]):
      for image in (group[:, index], group[:, index, :, ::-1]) if mirror else (group[:, index],):
        x = ((image / 255.0 - np.array(mean)) / np.array(std)).astype(np.float32)
        features = np.asarray(features_of(x)['intermediates']['features'][0], np.float64)
        scores = np.einsum('nhwc,ck->nhwk', features, kernel) + bias
        total, count = total + _softmax(scores.mean(axis=(1, 2))), count + 1
  return total / count


@pytest.mark.parametrize(
    'protocol, groups',
    [
        ('multiscale', {'scale8': (1, 8), 'scale20': (1, 20)}),
        ('10crop', {'crops': (10, 8)}),
    ],
)
def test_averaged_probabilities_and_sums_equal_a_numpy_computation(protocol, groups):
  batch_size, image_shape = 16, (8, 8, 3)
  spec = evaluation.EvalSpec(protocol=protocol, scales=(8, 20), forward_batch=2)
  data = data_spec(
      image_shape,
      name='test',
      eval_split='test',
      augment='none',
      mean=(0.3,) * image_shape[-1],
      std=(0.2,) * image_shape[-1],
  )
  model = models.create_model('resnet8', num_classes=10)
  variables = _variables(model, image_shape)
  state = types.SimpleNamespace(**variables)
  evaluator = evaluation.Evaluator(
      spec, model=model, data_parallel=parallel.DataParallel(), data=data
  )
  assert [(g.name, g.count, g.size[0]) for g in evaluator.groups] == [
      (name, count, size) for name, (count, size) in groups.items()
  ]
  rng = np.random.default_rng(0)
  views = {
      name: rng.integers(0, 256, (batch_size, count, size, size, 3), dtype=np.uint8)
      for name, (count, size) in groups.items()
  }
  labels = rng.integers(0, 10, batch_size).astype(np.int32)
  mask = (np.arange(batch_size) < 13).astype(np.float32)  # the last three are padding
  batch = parallel.DataParallel().place_global_batch(
      {'views': views, 'label': labels, 'mask': mask}
  )
  ours = np.asarray(evaluator.probabilities(state, batch))
  reference = _reference_probabilities(
      model, variables, views, data.mean, data.std, mirror=protocol == 'multiscale'
  )
  np.testing.assert_allclose(ours, reference, rtol=1e-4, atol=1e-6)
  assert evaluator.num_views == (4 if protocol == 'multiscale' else 10)

  sums = jax.device_get(evaluator(state, batch))
  real = mask == 1
  top5 = np.argsort(-reference, axis=-1)[:, :5]
  assert sums['count'] == 13
  assert sums['top1_errors'] == np.sum(reference.argmax(-1)[real] != labels[real])
  assert sums['top5_errors'] == np.sum(~(top5 == labels[:, None]).any(-1)[real])
  np.testing.assert_allclose(
      sums['loss'], -np.log(reference[np.arange(batch_size), labels])[real].sum(), rtol=1e-4
  )


# ------------------------------------------------------------------------ every example, once


@pytest.fixture(scope='module')
def digits_dir(tmp_path_factory):
  data_dir = str(tmp_path_factory.getbasetemp() / 'tfds_sklearn_digits')
  tfds.builder('sklearn_digits', data_dir=data_dir).download_and_prepare()
  return data_dir


def test_views_cover_the_split_once_over_processes(digits_dir):
  config = fields.base_config('resnet8')
  config.dataset.update(name='sklearn_digits', data_dir=digits_dir, eval_split='test')
  config.evaluation.update(protocol='10crop')  # crops of 8 px from the image resized to 9
  run = run_lib.resolve(config, device_count=1, process_count=1, training=False)
  data, spec = run.data, run.evaluation
  seen, total = collections.Counter(), 0.0
  builder = tfds.builder('sklearn_digits', data_dir=digits_dir)
  for process in range(2):
    batches = list(
        ip.create_eval_iterator(
            data, local_batch_size=64, process_index=process, process_count=2, eval_spec=spec
        )
    )
    assert len(batches) == 3  # 180 + 179 examples: three batches of 64 on each process
    for b in batches:
      assert b['views']['crops'].shape == (64, 10, 8, 8, 1)
      real = b['mask'] == 1
      assert not b['views']['crops'][~real].any()
      seen.update(b['label'][real].tolist())
      total += float(b['mask'].sum())
  expected = collections.Counter(
      int(e['label']) for e in tfds.as_numpy(builder.as_dataset(split='test'))
  )
  assert total == 359 and seen == expected


@pytest.mark.slow
def test_training_and_eval_mode_name_the_protocol_and_count_each_image_once(
    tmp_path, digits_dir, capsys
):
  # The trainer itself (in this process: no second start-up of JAX and TensorFlow).
  config = digits.get_config('resnet8')
  config.dataset.update(data_dir=digits_dir, normalisation='per_pixel_mean')
  config.evaluation.update(protocol='multiscale', scales=(12,))
  config.train.update(num_steps=2, eval_every_steps=2, checkpoint_every_steps=2, log_every_steps=1)
  workdir = tmp_path / 'run'
  train.train_and_evaluate(run_lib.resolve(config, **train.device_counts()), str(workdir))
  lines = capsys.readouterr().out.splitlines()
  (line,) = [line for line in lines if line.startswith('eval at step ')]
  assert line.startswith('eval at step 2 (multiscale, 2 views): top-1 ') and line.endswith(
      ' on 359 images'
  )
  assert any(line.startswith('final eval (step 2, multiscale, 2 views)') for line in lines)
  (row,) = [r for r in read_jsonl(workdir / 'metrics.jsonl') if 'eval_top1_error' in r]
  assert row['eval_protocol'] == 'multiscale' and row['eval_views'] == 2
  assert row['eval_examples'] == 359 and (workdir / 'checkpoints' / '2').is_dir()

  # Eval-only as --mode=eval --eval_protocol=10crop does it: the checkpoint's own config, with
  # the protocol replaced.
  finished = Workdir.read_only(workdir)
  config = finished.config_of(2)
  config.evaluation.protocol = '10crop'
  run = run_lib.resolve(config, training=False, **train.device_counts())
  metrics = train.evaluate_checkpoint(run, finished, 2)
  finished.close()
  assert metrics['eval_protocol'] == '10crop' and metrics['eval_views'] == 10
  assert metrics['step'] == 2 and metrics['eval_examples'] == 359
  assert 0 <= metrics['eval_top5_error'] <= metrics['eval_top1_error'] <= 1
  json.dumps(metrics)  # printed as JSON by --mode=eval
