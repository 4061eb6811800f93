"""Where the project's train step spends its time on XLA CPU: a jax.profiler trace joined with XLA's
optimized HLO, summed by kind of operation.

    python -m benchmarks.step_profile [--model resnet20 --batch 128] [--devices 1]
        [--conv_kernel_grad xla] [--top 20] [--json out.json]

Traces a few steps of the step `resnet_jax.train` runs (benchmarks/train_step.ProductStep), dumps
the compiled HLO (XLA_FLAGS=--xla_dump_to, in a temporary directory), and files every operation the
trace shows under: convolution forward / input gradient / kernel gradient (YNNPACK fusions and
Eigen convolutions, told apart by window and op name), layout copies (transpose/copy fusions),
reductions, other elementwise fusions, dots. Times are CPU time summed over XLA's threads, per step;
the process's CPU time over wall time says how many cores the step kept busy. Eigen convolutions
hand their work to the intra-op pool, where the trace does not see it: their rows understate. With
PyTorch importable, --pytorch adds torch.profiler's table for PyTorch's step
(benchmarks/pytorch_reference.py).
About a minute.
"""

import argparse
import collections
import glob
import os
import re
import sys
import tempfile
import time

DUMP = tempfile.mkdtemp(prefix='step_profile_hlo_')


def _ensure_flags(devices: int) -> None:
  """Dump flags (and the device count) must be in XLA_FLAGS before JAX starts."""
  flags = os.environ.get('XLA_FLAGS', '')
  if '--xla_dump_to' not in flags:
    flags += f' --xla_dump_to={DUMP} --xla_dump_hlo_as_text'
  if devices > 1 and 'xla_force_host_platform_device_count' not in flags:
    flags += f' --xla_force_host_platform_device_count={devices}'
  os.environ['XLA_FLAGS'] = flags.strip()


def _entry_instructions(hlo: str) -> tuple[dict, dict]:
  computations = {
      m.group(1): m.group(2)
      for m in re.finditer(r'^(?:ENTRY )?%?([\w.\-]+) [^\n]*\{\n(.*?)\n\}', hlo, re.S | re.M)
  }
  entry = re.search(r'^ENTRY %?([\w.\-]+)', hlo, re.M).group(1)
  instructions = {}
  for line in computations[entry].splitlines():
    m = re.match(r'\s*(?:ROOT )?%?([\w.\-]+) = (\S+) ([\w\-]+)\(', line)
    if m:
      instructions[m.group(1)] = (m.group(2), m.group(3), line)
  return instructions, computations


def classify(name: str, instructions: dict, computations: dict) -> tuple[str, str]:
  """(kind, shape) of one traced operation."""
  if name not in instructions:
    return 'runtime (not an HLO op)', ''
  shape, op, line = instructions[name]
  body = line
  if op == 'fusion':
    called = re.search(r'calls=%?([\w.\-]+)', line)
    body = computations.get(called.group(1), '') if called else ''
  shape = shape.split('{')[0]
  convs = [c for c in body.splitlines() if ' convolution(' in c]
  if convs:
    window = re.search(r'size=(\d+)x', convs[0])
    op_name = re.search(r'op_name="([^"]*)"', line) or re.search(r'op_name="([^"]*)"', convs[0])
    if window and int(window.group(1)) > 3:  # the window is the feature map: a kernel gradient
      return 'conv kernel gradient', shape
    if op_name and 'transpose(' in op_name.group(1):
      return 'conv input gradient', shape
    return 'conv forward', shape
  if ' dot(' in body:
    return 'dot', shape
  if 'transpose' in name or name.startswith('copy'):
    return 'layout copy (transpose)', shape
  if re.search(r' reduce\(', body):
    return 'reduction (+ fused elementwise)', shape
  return 'elementwise', shape


def profile_jax(args) -> dict:
  import jax  # pylint: disable=import-outside-toplevel
  from jax.profiler import ProfileData  # pylint: disable=import-outside-toplevel

  from benchmarks import train_step  # pylint: disable=import-outside-toplevel
  from resnet_jax import parallel  # pylint: disable=import-outside-toplevel

  config = train_step.config_for(
      args.model, batch=args.batch, conv_kernel_grad=args.conv_kernel_grad
  )
  step = train_step.ProductStep(config, mesh=parallel.make_mesh(jax.devices()[: args.devices]))
  for _ in range(3):
    step()
  wall, cpu = time.perf_counter(), os.times()
  for _ in range(args.steps):
    step()
  end = os.times()
  wall = time.perf_counter() - wall
  cores = (end.user - cpu.user + end.system - cpu.system) / wall
  trace_dir = tempfile.mkdtemp(prefix='step_profile_trace_')
  with jax.profiler.trace(trace_dir):
    for _ in range(args.steps):
      step()
  dumps = sorted(glob.glob(f'{DUMP}/*jit_train_step*cpu_after_optimizations.txt'))
  instructions, computations = _entry_instructions(open(dumps[-1]).read())
  trace = glob.glob(f'{trace_dir}/**/*.xplane.pb', recursive=True)[0]
  by_kind, by_op = collections.Counter(), collections.Counter()
  for plane in ProfileData.from_file(trace).planes:
    if not plane.name.startswith('/host:CPU'):
      continue
    for line in plane.lines:
      if 'XLAEigen' not in line.name and 'PjRtCpuClient' not in line.name:
        continue
      for event in line.events:
        if event.name.startswith('ThunkExecutor'):
          continue
        kind, shape = classify(event.name, instructions, computations)
        ms = event.duration_ns / 1e6 / args.steps
        by_kind[kind] += ms
        by_op[kind, shape] += ms
  return {
      'step_ms': wall / args.steps * 1e3,
      'cores_busy': cores,
      'by_kind_ms': dict(by_kind.most_common()),
      'by_kind_and_shape_ms': [
          {'kind': k, 'shape': s, 'ms': v} for (k, s), v in by_op.most_common(args.top)
      ],
  }


def profile_torch(batch: int) -> str:
  import torch  # pylint: disable=import-outside-toplevel
  from torch.profiler import ProfilerActivity, profile  # pylint: disable=import-outside-toplevel

  from benchmarks import pytorch_reference  # pylint: disable=import-outside-toplevel

  runner = pytorch_reference.TorchRunner(batch)
  for _ in range(3):
    runner()
  with profile(activities=[ProfilerActivity.CPU]) as prof:
    for _ in range(5):
      runner()
  return f'PyTorch {torch.__version__}, 5 steps:\n' + prof.key_averages().table(
      sort_by='self_cpu_time_total', row_limit=12
  )


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--devices', type=int, default=1, help='CPU devices the step runs on')
  parser.add_argument('--conv_kernel_grad', default='xla')
  parser.add_argument('--steps', type=int, default=3)
  parser.add_argument('--top', type=int, default=20, help='rows of the by-shape table')
  parser.add_argument('--pytorch', action='store_true', help="also profile PyTorch's step")
  parser.add_argument('--json')
  args = parser.parse_args()
  torch_table = None
  if args.pytorch:  # torch before JAX (benchmarks/pytorch_reference.py)
    try:
      torch_table = profile_torch(args.batch)
    except ImportError:
      sys.exit('error: --pytorch needs PyTorch importable (see benchmarks/pytorch_reference.py)')
  _ensure_flags(args.devices)
  from benchmarks import common  # pylint: disable=import-outside-toplevel

  result = profile_jax(args)
  total = sum(result['by_kind_ms'].values())
  lines = [
      f"{args.model} batch {args.batch} on {args.devices} CPU device(s): {result['step_ms']:.0f}"
      f" ms/step, {result['cores_busy']:.2f} cores busy; traced op time {total:.0f} CPU-ms/step"
  ]
  lines += [f'  {k:<34} {v:7.1f} ms {v / total:6.1%}' for k, v in result['by_kind_ms'].items()]
  lines += ['  by kind and output shape:']
  lines += [
      f"    {r['ms']:7.1f} ms  {r['kind']:<32} {r['shape']}" for r in result['by_kind_and_shape_ms']
  ]
  if torch_table:
    lines.append(torch_table)
  result.update(
      benchmark='step_profile', model=args.model, batch=args.batch, machine=common.machine()
  )
  common.emit(result, '\n'.join(lines), args.json)


if __name__ == '__main__':
  main()
