"""ImageNet input pipelines per CPU core: the paper's augmentation, torchvision's, the eval views.

    python -m benchmarks.imagenet_inputs [--cores 1] [--windows 5] [--batches 8] [--json out.json]

Each case is `resnet_jax.data.pipeline`, unchanged, on 500x375 JPEGs (ImageNet's most common size,
photo-like: benchmarks/input_pipeline.py's generator) served through `tfds.testing.mock_data`:
  paper        configs/imagenet.py's default training input: decode, shorter side to a random size
               in [256, 480], random 224 crop, flip, PCA lighting, per-pixel mean (section 3.4)
  torchvision  configs/imagenet.py:<model>,torchvision: random-resized crop 224 + flip, per channel
  center, 10crop, multiscale  the evaluation protocols' views (resnet_jax/training/evaluation.py)
The process is pinned to `--cores` cores (os.sched_setaffinity), so tf.data's threads share those
and images/s divided by the cores is the rate per core. Cases are timed in alternating windows (a
fresh iterator, warmed up, then `--batches` batches of 32); each figure is the median over the
windows, with the quartiles of the per-window ratio to `torchvision`. A 16-core host's rate is the
per-core rate times 16: an extrapolation (tf.data scales about linearly with cores on decode-bound
maps; measured here on 1 and 2 cores only).
"""

import argparse
import os
import sys
import time

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from benchmarks import common
from benchmarks.input_pipeline import _smooth_jpegs
from configs import imagenet
from resnet_jax.data import pipeline as input_pipeline
from resnet_jax.config import resolve as run_lib

TRAIN_CASES = ('paper', 'torchvision')
EVAL_CASES = ('center', '10crop', 'multiscale')
BATCH = 32


def _as_dataset(jpegs: list[bytes], count: int):
  def as_dataset(self, *args, **kwargs):  # replaces the builder's reader; the split is ignored
    del self, args, kwargs
    images = [jpegs[i % len(jpegs)] for i in range(count)]
    return tf.data.Dataset.from_tensor_slices(
        {'image': images, 'label': np.arange(count, dtype=np.int64) % 1000}
    )

  return as_dataset


def config_of(case: str):
  config = imagenet.get_config('resnet50' if case == 'paper' else 'resnet50,torchvision')
  config.train.batch_size = config.train.eval_batch_size = BATCH
  if case in EVAL_CASES:
    config.evaluation.protocol = case
  return config


def make_iterator(config, case: str, seed: int):
  # per-pixel statistics: computed once, cached
  run = run_lib.resolve(config, device_count=1, process_count=1, training=case in TRAIN_CASES)
  if case in TRAIN_CASES:
    return input_pipeline.create_train_iterator(run.data, run.batch, seed=seed)
  return input_pipeline.create_eval_iterator(
      run.data, local_batch_size=BATCH, eval_spec=run.evaluation
  )


def time_case(config, case: str, *, warmup: int, batches: int, seed: int) -> float:
  """Images per second of a fresh iterator after `warmup` batches."""
  iterator = make_iterator(config, case, seed)
  for _ in range(warmup):
    next(iterator)
  start = time.perf_counter()
  for _ in range(batches):
    next(iterator)
  seconds = time.perf_counter() - start
  del iterator
  return batches * BATCH / seconds


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--cores', type=int, default=1, help='cores the process is pinned to')
  parser.add_argument('--windows', type=int, default=5)
  parser.add_argument('--batches', type=int, default=8, help='timed batches of 32 per window')
  parser.add_argument('--cases', default=','.join(TRAIN_CASES + EVAL_CASES), help='comma-separated')
  parser.add_argument(
      '--stats_images',
      type=int,
      default=2_000,
      help=(
          'images of the split (at most 10,000, what the per-pixel mean uses) for timing the'
          " paper's statistics at start-up"
      ),
  )
  parser.add_argument('--json')
  args = parser.parse_args()
  cases = args.cases.split(',')
  unknown = sorted(set(cases) - set(TRAIN_CASES + EVAL_CASES))
  available = sorted(os.sched_getaffinity(0))
  if unknown or not 1 <= args.cores <= len(available):
    sys.stderr.write(
        f'error: --cases {",".join(unknown)} unknown (use {",".join(TRAIN_CASES + EVAL_CASES)})\n'
        if unknown
        else f'error: --cores={args.cores}: this process may use 1 to {len(available)} cores\n'
    )
    sys.exit(2)
  os.sched_setaffinity(0, available[: args.cores])

  count = max(BATCH * (args.batches + 4) * 2, min(args.stats_images, 10_000))
  configs = {case: config_of(case) for case in cases}
  rates = {case: [] for case in cases}
  stats = None
  with tfds.testing.mock_data(as_dataset_fn=_as_dataset(_smooth_jpegs(64), count)):
    if 'paper' in cases:  # the per-pixel mean and PCA pass, once per process (then cached)
      start = time.perf_counter()
      run_lib.resolve(configs['paper'], device_count=1, process_count=1)
      seconds = time.perf_counter() - start
      images = min(count, 10_000)
      stats = {
          'images': images,
          'seconds': seconds,
          'seconds_per_10000_images_per_core': seconds * 10_000 / images * args.cores,
      }
      print(f'  statistics: {images} images in {seconds:.1f} s', file=sys.stderr, flush=True)
    for window in range(args.windows):
      order = cases if window % 2 == 0 else cases[::-1]
      for case in order:
        rates[case].append(
            time_case(configs[case], case, warmup=3, batches=args.batches, seed=window)
        )
      print(
          f'  window {window + 1}/{args.windows}: '
          + ', '.join(f'{c} {rates[c][-1]:.0f}' for c in cases)
          + ' images/s',
          file=sys.stderr,
          flush=True,
      )
  results = []
  for case in cases:
    per_core = common.median(rates[case]) / args.cores
    row = {
        'case': case,
        'cores': args.cores,
        'images_per_second': common.median(rates[case]),
        'images_per_second_per_core': per_core,
        'windows': rates[case],
        'extrapolated_16_cores': 16 * per_core,
    }
    if 'torchvision' in rates and case != 'torchvision':
      times = {c: [1 / r for r in rates[c]] for c in (case, 'torchvision')}
      row['vs_torchvision'] = common.paired_ratio(times, case, 'torchvision')
    results.append(row)
  lines = [
      f"{r['case']}: {r['images_per_second_per_core']:.0f} images/s per core on {r['cores']}"
      f" core(s) (16 cores: ~{r['extrapolated_16_cores']:,.0f})"
      + (
          f"; x{r['vs_torchvision']['median']:.2f}"
          f" ({r['vs_torchvision']['q25']:.2f}-{r['vs_torchvision']['q75']:.2f}) torchvision's"
          if 'vs_torchvision' in r
          else ''
      )
      for r in results
  ]
  if stats:
    lines.append(
        f"the paper's statistics at start-up: {stats['seconds_per_10000_images_per_core']:.0f} s"
        ' per core for the 10,000 images'
    )
  common.emit(
      {
          'benchmark': 'imagenet_inputs',
          'results': results,
          'statistics': stats,
          'machine': common.machine(),
      },
      '\n'.join(lines),
      args.json,
  )


if __name__ == '__main__':
  main()
