"""ResNet-20's convolutions one by one: XLA CPU against PyTorch (oneDNN): forward, input gradient
and kernel gradient, interleaved in one process.

    PYTHONPATH=/path/to/torch python -m benchmarks.conv_vs_pytorch [--rounds 5]
        [--xla_options default,ynn_dot_only] [--json out.json]

For each layer shape of ResNet-20 at batch 128 (float32, NHWC / channels_last) it times, round by
round, PyTorch's `conv2d` and `aten.convolution_backward` (input gradient alone, kernel gradient
alone) against the same three computations jitted in JAX (`lax.conv_general_dilated` and its VJP),
and reports ms per call, the ratio to PyTorch (call by call), the cores the JAX call kept busy
(process CPU time over wall time), and each part's total per ResNet-20 step (layer time x how many
such layers the net has). --xla_options compiles the JAX side once per named set of XLA options
(Lowered.compile(compiler_options=...)), all in the same rounds. About two minutes on 2 cores.
"""

import argparse
import contextlib
import io
import os
import sys
import time

try:  # before JAX: see benchmarks/pytorch_reference.py
  import torch
except ImportError:
  sys.exit(
      'error: PyTorch is not importable; install a CPU build (pip install --target /tmp/torchlib'
      ' torch --index-url https://download.pytorch.org/whl/cpu) and run with'
      ' PYTHONPATH=/tmp/torchlib'
  )

import jax
from jax import lax

from benchmarks import common

NHWC = ('NHWC', 'HWIO', 'NHWC')
# name, input height = width, input channels, output channels, stride, such layers in ResNet-20
LAYERS = (
    ('stem', 32, 3, 16, 1, 1),
    ('stage1', 32, 16, 16, 1, 6),
    ('stage2_first', 32, 16, 32, 2, 1),
    ('stage2', 16, 32, 32, 1, 5),
    ('stage3_first', 16, 32, 64, 2, 1),
    ('stage3', 8, 64, 64, 1, 5),
)
PARTS = ('forward', 'input_grad', 'kernel_grad')
XLA_OPTION_SETS = {
    'default': {},
    # YNNPACK only for dots: convolutions go to XLA's Eigen kernels (multi-threaded).
    'ynn_dot_only': {'xla_cpu_experimental_ynn_fusion_type': 'LIBRARY_FUSION_TYPE_DOT'},
    'no_xnnpack': {'xla_cpu_use_xnnpack': False},
}
CALLS = 5  # calls per timed run: a single convolution takes about a millisecond


def jax_runs(hw, cin, cout, stride, batch, options):
  key = jax.random.key(0)
  x = jax.random.normal(key, (batch, hw, hw, cin))
  w = jax.random.normal(key, (3, 3, cin, cout)) * 0.1
  dy = jax.random.normal(key, (batch, (hw - 1) // stride + 1, (hw - 1) // stride + 1, cout))

  def conv(x, w):
    return lax.conv_general_dilated(x, w, (stride,) * 2, ((1, 1), (1, 1)), dimension_numbers=NHWC)

  functions = {
      'forward': (conv, (x, w)),
      'input_grad': (lambda x, w, dy: jax.vjp(lambda x: conv(x, w), x)[1](dy)[0], (x, w, dy)),
      'kernel_grad': (lambda x, w, dy: jax.vjp(lambda w: conv(x, w), w)[1](dy)[0], (x, w, dy)),
  }
  runs = {}
  for part, (fn, args) in functions.items():
    compiled = jax.jit(fn).lower(*args).compile(compiler_options=options or None)
    runs[part] = lambda c=compiled, a=args: [c(*a).block_until_ready() for _ in range(CALLS)]
  return runs


def torch_runs(hw, cin, cout, stride, batch):
  cl = torch.channels_last
  x = torch.randn(batch, cin, hw, hw).contiguous(memory_format=cl)
  w = (torch.randn(cout, cin, 3, 3) * 0.1).contiguous(memory_format=cl)
  out = (hw - 1) // stride + 1
  dy = torch.randn(batch, cout, out, out).contiguous(memory_format=cl)

  def backward(mask):
    return torch.ops.aten.convolution_backward(
        dy, x, w, None, [stride] * 2, [1, 1], [1, 1], False, [0, 0], 1, mask
    )

  parts = {
      'forward': lambda: torch.nn.functional.conv2d(x, w, None, stride, 1),
      'input_grad': lambda: backward([True, False, False]),
      'kernel_grad': lambda: backward([False, True, False]),
  }
  return {p: lambda f=f: [f() for _ in range(CALLS)] for p, f in parts.items()}


def cores_used(run, calls: int = 3) -> float:
  """Process CPU time over wall time while `run` runs alone: how many cores it kept busy."""
  run()
  wall, cpu = time.perf_counter(), os.times()
  for _ in range(calls):
    run()
  end = os.times()
  return (end.user - cpu.user + end.system - cpu.system) / (time.perf_counter() - wall)


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--rounds', type=int, default=5)
  parser.add_argument(
      '--xla_options', default='default', help=f'comma-separated, of {sorted(XLA_OPTION_SETS)}'
  )
  parser.add_argument('--json')
  args = parser.parse_args()
  option_sets = args.xla_options.split(',')
  torch.set_grad_enabled(False)
  rows, totals = [], {}
  for name, hw, cin, cout, stride, count in LAYERS:
    runs = {f'torch {p}': r for p, r in torch_runs(hw, cin, cout, stride, args.batch).items()}
    for option_set in option_sets:
      built = jax_runs(hw, cin, cout, stride, args.batch, XLA_OPTION_SETS[option_set])
      runs.update({f'{option_set} {p}': r for p, r in built.items()})
    cores = {n: cores_used(r) for n, r in runs.items()}
    with contextlib.redirect_stderr(io.StringIO()):  # the per-round lines of 18 small runs
      times = common.interleaved(runs, rounds=args.rounds)
    row = {'layer': name, 'shape': f'{hw}x{hw} {cin}->{cout} stride {stride}', 'count': count}
    for run_name in runs:
      ms = common.median(times[run_name]) / CALLS * 1e3
      row[run_name] = {'ms': ms, 'cores': cores[run_name]}
      totals[run_name] = totals.get(run_name, 0.0) + ms * count
      if not run_name.startswith('torch'):
        part = run_name.split(' ', 1)[1]
        row[run_name]['vs_pytorch'] = common.paired_ratio(times, run_name, f'torch {part}')
    rows.append(row)
    line = f"{name:<13} {row['shape']:<22} x{count}"
    for part in PARTS:
      line += f" | {part} torch {row[f'torch {part}']['ms']:.2f}"
      for option_set in option_sets:
        r = row[f'{option_set} {part}']
        line += (
            f" {option_set} {r['ms']:.2f} (x{r['vs_pytorch']['median']:.2f},"
            f" {r['cores']:.1f} cores)"
        )
    print(line, flush=True)
  lines = [
      f'ResNet-20 convolutions per step (batch {args.batch}, ms summed over its layers), PyTorch'
      f' {torch.__version__} ({torch.get_num_threads()} threads) vs XLA (jax {jax.__version__});'
      f' load {common.load_average()}'
  ]
  for side in ['torch'] + option_sets:
    parts = {p: totals[f'{side} {p}'] for p in PARTS}
    lines.append(
        f'  {side:<14} '
        + ', '.join(f'{p} {v:6.1f}' for p, v in parts.items())
        + f', all {sum(parts.values()):6.1f}'
    )
  common.emit(
      {
          'benchmark': 'conv_vs_pytorch',
          'batch': args.batch,
          'torch': torch.__version__,
          'layers': rows,
          'per_step_ms': totals,
          'machine': common.machine(),
      },
      '\n'.join(lines),
      args.json,
  )


if __name__ == '__main__':
  main()
