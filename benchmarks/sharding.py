"""Sharding overhead: the same global batch on 8 simulated devices against 1 device, in one process.

    python -m benchmarks.sharding [--model resnet20 --batch 128 --devices 8] [--json out.json]

The process starts with `--xla_force_host_platform_device_count=N` (it re-executes itself to set
it before jax starts). In it, the project's step is compiled for a 1-device mesh and for the
N-device mesh (jit mode: batch split on the 'data' axis, XLA's all-reduces; and the pmap and
per-device BatchNorm modes), and optionally for meshes of the first k devices (--meshes 2,4), all
timed interleaved. The simulated devices share the same two cores, so a ratio of 1.0 means
sharding costs nothing; above 1.0, the split program runs faster than the whole one (on this CPU
it does: smaller per-device activations, and whole programs running concurrently on the cores).
"""

import argparse

from benchmarks import baseline_resnet20, common, train_step

MODES = {
    'jit': ('jit', 'global'),
    'pmap': ('pmap', 'global'),
    'jit_per_device_bn': ('jit', 'per_device'),
}


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--model', default='resnet20')
  parser.add_argument(
      '--batch', type=int, default=128, help='global batch, the same on 1 and N devices'
  )
  parser.add_argument('--devices', type=int, default=8)
  parser.add_argument(
      '--meshes',
      default='1',
      help='also time the jit step on meshes of the first k devices, e.g. 1,2,4',
  )
  parser.add_argument('--modes', default='jit,pmap', help=f'on all devices, of {sorted(MODES)}')
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--rounds', type=int, default=8)
  parser.add_argument(
      '--baseline',
      action='store_true',
      help='also time the plain Flax ResNet-20 (batch 128, one device)',
  )
  parser.add_argument('--json')
  args = parser.parse_args()
  train_step.ensure_devices(args.devices, 'benchmarks.sharding')
  import jax  # pylint: disable=import-outside-toplevel
  from resnet_jax.training import parallel  # pylint: disable=import-outside-toplevel

  config = train_step.config_for(args.model, batch=args.batch, dtype=args.dtype)
  runs = {}
  for count in sorted({1, *map(int, args.meshes.split(','))} - {args.devices}):
    runs[f"{count}_device{'s' if count > 1 else ''}"] = train_step.ProductStep(
        config, mesh=parallel.make_mesh(jax.devices()[:count])
    )
  for name in filter(None, args.modes.split(',')):
    mode, batch_norm = MODES[name]
    runs[f'{args.devices}_devices_{name}'] = train_step.ProductStep(
        config, mode=mode, batch_norm=batch_norm
    )
  if args.baseline:
    runs['baseline'] = baseline_resnet20.Runner(128)
  runs['matmul_peak'], peak_flops_per_run = common.matmul_peak_run()
  times = common.interleaved(runs, rounds=args.rounds)
  peak = peak_flops_per_run / common.median(times.pop('matmul_peak'))
  runs.pop('matmul_peak')
  # The work of a step is the same however it is split: count it as the 1-device program does.
  flops = {
      name: run.flops if name == 'baseline' else runs['1_device'].flops_per_step
      for name, run in runs.items()
  }
  results = []
  for name, run in runs.items():
    batch = 128 if name == 'baseline' else args.batch
    r = {
        'name': name,
        'step_seconds': common.median(times[name]),
        'compile_seconds': run.compile_seconds,
    }
    r['images_per_second'] = batch / r['step_seconds']
    if flops[name]:
      r['achieved_gflops'] = flops[name] / r['step_seconds'] / 1e9
      r['fraction_of_peak'] = flops[name] / r['step_seconds'] / peak
    if args.baseline and name != 'baseline':
      r['ratio_to_baseline'] = common.paired_ratio(
          times, name, 'baseline', per_call=(args.batch, 128)
      )
    if name not in ('1_device', 'baseline'):
      r['ratio_to_1_device'] = common.paired_ratio(times, name, '1_device')
      r['overhead'] = 1 / r['ratio_to_1_device']['median'] - 1
    results.append(r)
  lines = [
      f'{args.model} {args.dtype} global batch {args.batch}, {jax.device_count()} simulated'
      f' devices, load {common.load_average()}'
  ]
  lines += [
      f"  {r['name']:<24} {r['step_seconds'] * 1e3:8.1f} ms/step {r['images_per_second']:6.0f}"
      ' img/s'
      + (
          f"  overhead {100 * r['overhead']:+.1f}% (throughput"
          f" x{r['ratio_to_1_device']['median']:.2f}"
          f" [{r['ratio_to_1_device']['q25']:.2f}-{r['ratio_to_1_device']['q75']:.2f}])"
          if 'overhead' in r
          else ''
      )
      + (
          f"  vs baseline x{r['ratio_to_baseline']['median']:.2f}"
          f" [{r['ratio_to_baseline']['q25']:.2f}-{r['ratio_to_baseline']['q75']:.2f}]"
          if 'ratio_to_baseline' in r
          else ''
      )
      + f", {100 * r.get('fraction_of_peak', 0):.1f}% of peak, compile {r['compile_seconds']:.1f} s"
      for r in results
  ]
  lines.append(f'  float32 matmul peak {peak / 1e9:.0f} GFLOP/s')
  common.emit(
      {
          'benchmark': 'sharding',
          'model': args.model,
          'batch': args.batch,
          'devices': args.devices,
          'dtype': args.dtype,
          'results': results,
          'peak_gflops': peak / 1e9,
          'machine': common.machine(),
      },
      '\n'.join(lines),
      args.json,
  )


if __name__ == '__main__':
  main()
