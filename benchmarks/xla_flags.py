"""XLA CPU options: the project's step under each set of XLA_FLAGS, one fresh process per run.

    python -m benchmarks.xla_flags [--model resnet20 --batch 128] [--repeats 2] [--json out.json]

XLA reads its flags once per process, so each set runs in its own process, in the order
A B C A B C ... so that the machine's load drifts over all of them alike. Processes are compared
through the step time in units of a numpy matmul timed interleaved with it (XLA flags cannot touch
numpy), and also by absolute images/s. These are machine options: if one helps, it belongs in the
launch environment (XLA_FLAGS) of CPU runs, never in code paths that GPUs and TPUs share.
"""

import argparse

from benchmarks import common

FLAG_SETS = {
    'default': '',
    'fast_math': '--xla_cpu_enable_fast_math=true',
    'no_multi_thread_eigen': '--xla_cpu_multi_thread_eigen=false',
    'no_xnnpack': '--xla_cpu_use_xnnpack=false',
    'onednn': '--xla_cpu_use_onednn=true',
    'xnn_convolution': '--xla_cpu_experimental_xnn_fusion_type=+individual_convolution',
    'prefer_vector_width_256': '--xla_cpu_prefer_vector_width=256',
}


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument(
      '--sets',
      default='default,fast_math,no_multi_thread_eigen,xnn_convolution',
      help=f'of {sorted(FLAG_SETS)}',
  )
  parser.add_argument('--repeats', type=int, default=2)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument('--json')
  args = parser.parse_args()
  names = args.sets.split(',')
  runs = {name: [] for name in names}
  for _ in range(args.repeats):
    for name in names:
      runs[name].append(
          common.run_module(
              'benchmarks.train_step',
              [
                  '--model',
                  args.model,
                  '--batch',
                  str(args.batch),
                  '--rounds',
                  str(args.rounds),
                  '--no_baseline',
              ],
              xla_flags=FLAG_SETS[name],
          )
      )
  reference = common.median([r['step_in_yardstick_units']['median'] for r in runs[names[0]]])
  results = []
  for name in names:
    units = common.median([r['step_in_yardstick_units']['median'] for r in runs[name]])
    results.append({
        'name': name,
        'xla_flags': FLAG_SETS[name],
        'step_in_yardstick_units': units,
        'speedup_vs_default': reference / units,
        'images_per_second': [r['variants'][0]['images_per_second'] for r in runs[name]],
        'load_average': [r['machine']['load_average'] for r in runs[name]],
    })
  lines = [f'{args.model} batch {args.batch}, XLA flag sets, {args.repeats} process(es) each:']
  lines += [
      f"  {r['name']:<24} x{r['speedup_vs_default']:.2f} vs {names[0]} (step ="
      f" {r['step_in_yardstick_units']:.1f} numpy matmuls), images/s"
      f" {', '.join(f'{x:.0f}' for x in r['images_per_second'])}  {r['xla_flags']}"
      for r in results
  ]
  common.emit(
      {
          'benchmark': 'xla_flags',
          'model': args.model,
          'batch': args.batch,
          'results': results,
          'machine': common.machine(),
      },
      '\n'.join(lines),
      args.json,
  )


if __name__ == '__main__':
  main()
