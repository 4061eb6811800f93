"""Classifies image files with a trained run: `--mode=predict --workdir DIR --images a.png b.jpg`.

The run is rebuilt from what its workdir holds: the config it was trained with (or --config), its
classes and image shape (the checkpoint's record), and the weights. Each image is preprocessed as
the run's evaluation preprocesses its eval split (tfds_source.eval_image) and gets its top-5
classes, named by the dataset's label names.
"""

import json
import sys

import jax
import numpy as np
import tensorflow as tf
from PIL import Image

from resnet_jax.common import library_noise
from resnet_jax.common.errors import UserError, one_line
from resnet_jax.config import resolve
from resnet_jax.data import synthetic_source, tfds_source
from resnet_jax.data.datasets.prepare import get_dataset_builder
from resnet_jax.training.setup import Setup
from resnet_jax.workdir.workdir import Workdir

TOP_K = 5
CHUNK = 64  # images a forward pass classifies at once


class Classifier:
  """A workdir's trained network in inference mode, with its eval preprocessing and class names."""

  def __init__(self, workdir, step: int | None = None, config=None):
    workdir = Workdir.read_only(workdir)
    try:
      self.step = workdir.checkpoints.find_step(step)
      meta = workdir.checkpoints.read_meta(self.step)
      config = config or workdir.config_of(self.step)
      run = resolve.resolve(config, device_count=1, process_count=1, training=False)
      if run.data.name == synthetic_source.NAME:
        raise UserError(
            f'--workdir {workdir.path} was trained on synthetic data (random images and labels):'
            ' it has no image preprocessing or class names to classify files with; use a run'
            ' trained on a dataset, or give its --config'
        )
      state = workdir.checkpoints.restore_as_saved(
          self.step, jax.sharding.SingleDeviceSharding(jax.devices()[0])
      )
    finally:
      workdir.close()
    self.data = run.data
    seen = (list(meta['image_shape']), meta['num_classes'])
    if seen != (list(run.dataset.image_shape), run.dataset.num_classes):
      raise UserError(
          f'the checkpoint saw images of shape {seen[0]} in {seen[1]} classes but dataset'
          f' {self.data.name!r} now gives {list(run.dataset.image_shape)} in'
          f' {run.dataset.num_classes}'
      )
    self.builder = get_dataset_builder(self.data)
    names = self.builder.info.features['label'].names
    self.class_names = list(names) or [str(i) for i in range(meta['num_classes'])]
    model = Setup(run).model
    variables = {'params': state['params'], 'batch_stats': state['batch_stats']}
    self._logits = jax.jit(lambda images: model.apply(variables, images, train=False))

  def preprocess(self, path) -> np.ndarray:
    """The image file as evaluation sees it; a UserError for a missing file, one that is not an
    image, or one too large to decode."""
    try:
      _check_size(path)
      with open(path, 'rb') as f:
        encoded = f.read()
      with library_noise.silenced():  # TensorFlow's runtime logs a failed decode in C++ too
        return tfds_source.eval_image(self.data, self.builder, encoded)
    except OSError as e:
      raise UserError(f'cannot read image {path}: {e.strerror or e}') from None
    except tf.errors.OpError as e:
      reason = e.message.split('}}')[-1]  # TF prefixes the op's name in braces
      raise UserError(f'{path} is not an image ({one_line(reason, 120)})') from None

  def probabilities(self, images: np.ndarray) -> np.ndarray:
    chunks = [self._logits(images[i : i + CHUNK]) for i in range(0, len(images), CHUNK)]
    return np.asarray(jax.nn.softmax(np.concatenate(chunks), axis=-1))

  def top_classes(self, probabilities: np.ndarray) -> list[dict]:
    """[{label, name, probability}] of the most probable classes, most probable first."""
    best = np.argsort(-probabilities, kind='stable')[:TOP_K]
    return [
        {'label': int(i), 'name': self.class_names[i], 'probability': float(probabilities[i])}
        for i in best
    ]


def _check_size(path) -> None:
  """Refuses an image of more pixels than PIL's decompression-bomb limit before decoding it: a
  small file can hold a huge image (a 20000x20000 PNG of 380 KB decodes to 1.2 GB of pixels)."""
  limit, Image.MAX_IMAGE_PIXELS = Image.MAX_IMAGE_PIXELS, None  # to read the size of any image
  try:
    with Image.open(path) as image:  # reads the header only
      width, height = image.size
  except Image.UnidentifiedImageError:
    return  # not an image PIL reads: TensorFlow's decoder says what it is
  finally:
    Image.MAX_IMAGE_PIXELS = limit
  if width * height > limit:
    raise UserError(
        f"{path} is {width}x{height} pixels, more than the {limit:,} that predict decodes (PIL's"
        ' limit against decompression bombs); resize it first (evaluation resizes it anyway)'
    )


def predict_files(
    workdir, paths, *, step: int | None = None, as_json: bool = False, config=None
) -> int:
  """Prints each image's top-5 classes (or one JSON object per image) and an `error:` line on
  stderr for each file that cannot be read as an image; returns the exit status: 2 if any
  failed, or if the workdir cannot serve."""
  if not paths:
    print('error: --mode=predict needs --images, e.g. --images a.png b.jpg', file=sys.stderr)
    return 2
  try:
    classifier = Classifier(workdir, step, config)
  except UserError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  good, images = [], []
  for path in paths:
    try:
      images.append(classifier.preprocess(path))
      good.append(path)
    except UserError as e:
      print(f'error: {e}', file=sys.stderr, flush=True)
  if images:
    for path, probabilities in zip(good, classifier.probabilities(np.stack(images))):
      top = classifier.top_classes(probabilities)
      if as_json:
        print(json.dumps({'image': str(path), 'step': classifier.step, 'top5': top}))
      else:
        print(f'{path}: ' + ', '.join(f"{c['name']} {100 * c['probability']:.1f}%" for c in top))
  return 2 if len(good) < len(paths) else 0
