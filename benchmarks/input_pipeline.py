"""Input pipeline throughput against what the train step consumes, in the same process.

    python -m benchmarks.input_pipeline [--style cifar|imagenet|both] [--windows 3]
        [--json out.json]

The pipeline is `resnet_jax.data.pipeline.create_train_iterator`, unchanged, on generated data
served through `tfds.testing.mock_data` (no download):
  cifar     cifar10 config: uint8 32x32x3, cached decoded in memory, pad-4 random crop + flip.
  imagenet  imagenet2012 config: JPEG bytes of 500x375 images (ImageNet's typical size), decoded
            and cropped after the shuffle, random-resized-crop to 224 + flip.
Windows alternate: the pipeline alone (a fresh iterator, warmed up, then timed; then deleted, so its
background threads stop), then the project's train step alone (ResNet-20 batch 128 for cifar,
ResNet-50 224 for imagenet). The headroom is pipeline images/s over step images/s, window by window;
in training both share the same two cores, which benchmarks/train_loop.py measures.
"""

import argparse
import sys
import time

import jax
import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from benchmarks import common, train_step
from resnet_jax.data import pipeline as input_pipeline
from resnet_jax.config import resolve as run_lib

JPEG_SHAPE = (375, 500, 3)  # ImageNet's most common size; a typical train JPEG is ~110 kB


def _smooth_jpegs(count: int, seed: int = 0) -> list[bytes]:
  """Images with photo-like spatial correlation (upsampled noise), so JPEG sizes and decode cost are
  realistic; white noise would compress far worse than photographs."""
  rng = np.random.default_rng(seed)
  jpegs = []
  for _ in range(count):
    coarse = rng.integers(
        0, 256, (JPEG_SHAPE[0] // 8 + 1, JPEG_SHAPE[1] // 8 + 1, 3), dtype=np.uint8
    )
    image = tf.image.resize(coarse[None].astype(np.float32), JPEG_SHAPE[:2], method='bicubic')[0]
    image += rng.normal(0, 8, JPEG_SHAPE).astype(np.float32)  # some texture
    jpegs.append(
        tf.io.encode_jpeg(tf.cast(tf.clip_by_value(image, 0, 255), tf.uint8), quality=90).numpy()
    )
  return jpegs


def _imagenet_as_dataset(jpegs: list[bytes], num_examples: int):
  """A finite split (the pipeline counts it, as it does a dataset without metadata)."""

  def as_dataset(self, *args, **kwargs):  # replaces the builder's reader; the split is ignored
    del self, args, kwargs
    images = [jpegs[i % len(jpegs)] for i in range(num_examples)]
    labels = np.arange(num_examples, dtype=np.int64) % 1000
    return tf.data.Dataset.from_tensor_slices({'image': images, 'label': labels})

  return as_dataset


def pipeline_config(style: str, batch: int):
  if style == 'cifar':
    config = train_step.config_for('resnet20', batch=batch)
  else:  # torchvision's recipe, as before the paper's existed (the paper's: imagenet_inputs.py)
    config = train_step.config_for('resnet50', batch=batch, image_size=224)
    config.dataset.update(augment='inception_crop', normalisation='per_channel', lighting_std=0.0)
  return config


def time_pipeline(config, *, batch: int, warmup: int, batches: int, window: int) -> float:
  """Seconds per batch of a fresh iterator after `warmup` batches."""
  assert config.train.batch_size == batch
  run = run_lib.resolve(config, device_count=1, process_count=1)  # one host's stream
  iterator = input_pipeline.create_train_iterator(run.data, run.batch, seed=window)
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  seconds = (time.perf_counter() - start) / batches
  iterator.close()
  return seconds


def measure(
    style: str,
    *,
    windows: int,
    pipeline_batch: int,
    pipeline_batches: int,
    step_model: str,
    step_batch: int,
    step_calls: int,
) -> dict:
  config = pipeline_config(style, pipeline_batch)
  # cifar: the first epoch fills the in-memory cache, so warm-up is one epoch and the timed batches
  # are read from the cache, as in training after the first epoch.
  epoch = pipeline_batches + 4
  mock = (
      tfds.testing.mock_data(num_examples=pipeline_batch * epoch)
      if style == 'cifar'
      else tfds.testing.mock_data(
          as_dataset_fn=_imagenet_as_dataset(_smooth_jpegs(64), pipeline_batch * epoch)
      )
  )
  warmup = epoch if style == 'cifar' else 4
  step = train_step.ProductStep(train_step.config_for(step_model, batch=step_batch))
  step()
  pipeline_seconds, step_seconds = [], []
  with mock:
    for window in range(windows):
      pipeline_seconds.append(
          time_pipeline(
              config, batch=pipeline_batch, warmup=warmup, batches=pipeline_batches, window=window
          )
      )
      calls = []
      for _ in range(step_calls):
        start = time.perf_counter()
        step()
        calls.append(time.perf_counter() - start)
      step_seconds.append(common.median(calls))
      print(
          f'  {style} window {window + 1}/{windows}: pipeline'
          f' {pipeline_batch / pipeline_seconds[-1]:.0f} images/s, step'
          f' {step_batch / step_seconds[-1]:.1f} images/s',
          file=sys.stderr,
          flush=True,
      )
  times = {'pipeline': pipeline_seconds, 'step': step_seconds}
  pipeline_rate = pipeline_batch / common.median(pipeline_seconds)
  return {
      'style': style,
      'pipeline_batch': pipeline_batch,
      'pipeline_images_per_second': pipeline_rate,
      'step_model': step_model,
      'step_batch': step_batch,
      'step_images_per_second': step_batch / common.median(step_seconds),
      'headroom': common.paired_ratio(
          times, 'pipeline', 'step', per_call=(pipeline_batch, step_batch)
      ),
      'windows': windows,
  }


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--style', default='both', choices=('cifar', 'imagenet', 'both'))
  parser.add_argument('--windows', type=int, default=3)
  parser.add_argument('--batches', type=int, default=20, help='timed pipeline batches per window')
  parser.add_argument('--step_calls', type=int, default=3, help='timed train steps per window')
  parser.add_argument('--cifar_batch', type=int, default=128)
  parser.add_argument('--imagenet_batch', type=int, default=32)
  parser.add_argument(
      '--imagenet_step_batch',
      type=int,
      default=8,
      help='ResNet-50 batch the headroom is compared to',
  )
  parser.add_argument('--cifar_step_model', default='resnet20')
  parser.add_argument('--imagenet_step_model', default='resnet50')
  parser.add_argument('--json')
  args = parser.parse_args()
  styles = ('cifar', 'imagenet') if args.style == 'both' else (args.style,)
  results = []
  for style in styles:
    cifar = style == 'cifar'
    results.append(
        measure(
            style,
            windows=args.windows,
            pipeline_batch=args.cifar_batch if cifar else args.imagenet_batch,
            pipeline_batches=args.batches,
            step_model=args.cifar_step_model if cifar else args.imagenet_step_model,
            step_batch=args.cifar_batch if cifar else args.imagenet_step_batch,
            step_calls=args.step_calls,
        )
    )
  lines = [
      f"{r['style']}-style pipeline: {r['pipeline_images_per_second']:.0f} images/s (batch"
      f" {r['pipeline_batch']}); {r['step_model']} step consumes {r['step_images_per_second']:.1f}"
      f" images/s (batch {r['step_batch']}); headroom x{r['headroom']['median']:.1f}"
      f" [{r['headroom']['q25']:.1f}-{r['headroom']['q75']:.1f}]"
      for r in results
  ]
  common.emit(
      {
          'benchmark': 'input_pipeline',
          'results': results,
          'machine': common.machine(),
          'devices': jax.device_count(),
      },
      '\n'.join(lines),
      args.json,
  )


if __name__ == '__main__':
  main()
