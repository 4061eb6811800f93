"""Peak host memory of a train step, and of deep nets with and without rematerialisation.

    python -m benchmarks.memory [--cases resnet20:128,resnet1202:16,resnet1202:16:remat]
        [--json out.json]

Each case runs in a fresh process (peak resident memory is per process and never goes down): it
builds the project's step (benchmarks.train_step.ProductStep), compiles it, runs two steps, and
reports the process's peak resident set (VmHWM, as getrusage's ru_maxrss), the same before the
state was built (interpreter, jax, TensorFlow), and XLA's own plan for the step
(`compiled.memory_analysis()`: temporaries, arguments, outputs). Case syntax:
model:batch[:remat][:scan] (scan: model.scan_blocks=True). A case whose process dies (out of memory)
is reported as such.
"""

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import time

# ResNet-1202 with its blocks scanned: unrolled, XLA CPU compiled its initialisation for 6 min and
# was killed for lack of memory (24 GiB) while compiling the remat step
# (`--cases resnet1202:32:remat`).
DEFAULT_CASES = (
    'resnet20:128',
    'resnet20:128:remat',
    'resnet152:8',
    'resnet152:8:remat',
    'resnet1202:32:scan',
    'resnet1202:32:scan:remat',
)


def peak_rss_mib() -> float:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # kB on Linux


def parse_case(case: str) -> dict:
  """'resnet1202:32:scan:remat' -> what the result rows say about the case."""
  model, batch, *flags = case.split(':')
  return {
      'case': case,
      'model': model,
      'batch': int(batch),
      'remat': 'remat' in flags,
      'scan': 'scan' in flags,
  }


def measure_here(case: str) -> dict:
  """The measurement itself, in this process (run by the parent in a fresh one)."""
  described = parse_case(case)
  from benchmarks import train_step  # pylint: disable=import-outside-toplevel  (after the RSS baseline)
  import jax  # pylint: disable=import-outside-toplevel

  before = peak_rss_mib()
  config = train_step.config_for(
      described['model'],
      batch=described['batch'],
      remat=described['remat'],
      scan_blocks=described['scan'],
      image_size=224,
  )
  step = train_step.ProductStep(config)
  analysis = step.step.memory_analysis()
  step()
  step()
  jax.block_until_ready(step.state)
  mib = lambda name: getattr(analysis, name, 0) / 2**20 if analysis is not None else None
  return {
      **described,
      'peak_rss_mib': peak_rss_mib(),
      'rss_before_state_mib': before,
      'step_peak_mib': peak_rss_mib() - before,
      'xla_temp_mib': mib('temp_size_in_bytes'),
      'xla_argument_mib': mib('argument_size_in_bytes'),
      'xla_output_mib': mib('output_size_in_bytes'),
      'compile_seconds': step.compile_seconds,
  }


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--cases', default=','.join(DEFAULT_CASES))
  parser.add_argument('--one', help=argparse.SUPPRESS)  # internal: measure one case in this process
  parser.add_argument('--json')
  args = parser.parse_args()
  if args.one:
    with open(args.json, 'w') as f:
      json.dump(measure_here(args.one), f)
    return
  from benchmarks import common  # pylint: disable=import-outside-toplevel

  results = []
  for case in args.cases.split(','):
    print(f'memory: {case} ...', file=sys.stderr, flush=True)
    start = time.perf_counter()
    try:
      results.append(
          common.run_module(
              'benchmarks.memory', ['--one', case], xla_flags=os.environ.get('XLA_FLAGS', '')
          )
      )
    except subprocess.CalledProcessError as e:  # a case that dies is a finding too; keep the others
      how = (
          'killed (out of memory?)'
          if e.returncode == -signal.SIGKILL
          else f'exit status {e.returncode}'
      )
      results.append(
          {**parse_case(case), 'error': f'{how} after {time.perf_counter() - start:.0f} s'}
      )
  lines = [
      f"{r['case']}: "
      + (
          r['error']
          if 'error' in r
          else (
              f"peak RSS {r['peak_rss_mib']:7.0f} MiB (step {r['step_peak_mib']:6.0f} MiB over"
              f" {r['rss_before_state_mib']:.0f} MiB at start; XLA temporaries"
              f" {r['xla_temp_mib']:6.0f} MiB), compile {r['compile_seconds']:.0f} s"
          )
      )
      for r in results
  ]
  common.emit(
      {'benchmark': 'memory', 'results': results, 'machine': common.machine()},
      '\n'.join(lines),
      args.json,
  )


if __name__ == '__main__':
  main()
