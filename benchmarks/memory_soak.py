"""Memory soak: thousands of small training steps through the real loop; does host memory grow?

`python -m benchmarks.memory_soak --steps 3000 [--json out.json]` trains ResNet-8 on the offline
digits (evaluating and checkpointing every 500 steps), samples the process's resident memory every
0.5 s, and reports it at the start, middle and end of training, with the growth per 1,000 steps over
the second half (after warm-up, caches and compilation): a leak shows as steady growth there.
"""

import argparse
import json
import pathlib
import tempfile
import threading
import time


def resident_mib() -> float:
  for line in pathlib.Path('/proc/self/status').read_text().splitlines():
    if line.startswith('VmRSS:'):
      return int(line.split()[1]) / 1024
  raise RuntimeError('no VmRSS in /proc/self/status')


class Sampler(threading.Thread):

  def __init__(self, period: float = 0.5):
    super().__init__(daemon=True)
    self.period, self.samples, self.stop = period, [], threading.Event()

  def run(self):
    while not self.stop.is_set():
      self.samples.append((time.perf_counter(), resident_mib()))
      time.sleep(self.period)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--steps', type=int, default=3000)
  parser.add_argument('--json', type=pathlib.Path)
  args = parser.parse_args()

  from configs import digits
  from resnet_jax import metric_logging, train

  config = digits.get_config('resnet8')
  config.train.update(
      num_steps=args.steps,
      batch_size=32,
      log_every_steps=100,
      eval_every_steps=500,
      checkpoint_every_steps=500,
  )
  with tempfile.TemporaryDirectory() as workdir:
    sampler = Sampler()
    sampler.start()
    start = time.perf_counter()
    train.train_and_evaluate(config, workdir)
    elapsed = time.perf_counter() - start
    sampler.stop.set()
    sampler.join()
    records = metric_logging.read_metrics(workdir)

  samples = sampler.samples
  t0, t1 = samples[0][0], samples[-1][0]
  at = lambda fraction: min(samples, key=lambda s: abs(s[0] - (t0 + fraction * (t1 - t0))))[1]
  second_half = [s for s in samples if s[0] >= t0 + 0.5 * (t1 - t0)]
  (ta, ma), (tb, mb) = second_half[0], second_half[-1]
  steps_per_second = args.steps / elapsed
  growth_per_1000_steps = (mb - ma) / max((tb - ta) * steps_per_second / 1000, 1e-9)
  throughput = [r['images_per_second'] for r in records if 'images_per_second' in r]
  result = {
      'benchmark': 'memory_soak',
      'model': 'resnet8',
      'dataset': 'sklearn_digits',
      'steps': args.steps,
      'batch_size': 32,
      'seconds': round(elapsed, 1),
      'rss_mib_at_10_50_100_percent': [round(at(f), 1) for f in (0.1, 0.5, 1.0)],
      'rss_mib_peak': round(max(m for _, m in samples), 1),
      'rss_growth_mib_per_1000_steps_second_half': round(growth_per_1000_steps, 2),
      # Throughput of each logging window: windows with an eval or a checkpoint write should not be
      # slower.
      'images_per_second_min_median_max': [
          round(min(throughput)),
          round(sorted(throughput)[len(throughput) // 2]),
          round(max(throughput)),
      ],
  }
  print(
      f'memory soak: {args.steps} steps in {elapsed:.0f} s; RSS'
      f" {result['rss_mib_at_10_50_100_percent']} MiB at 10/50/100%, growth"
      f' {growth_per_1000_steps:+.2f} MiB per 1000 steps over the second half; images/s per window'
      f" min/median/max {result['images_per_second_min_median_max']}"
  )
  print(json.dumps(result))
  if args.json:
    args.json.write_text(json.dumps(result, indent=2))


if __name__ == '__main__':
  main()
