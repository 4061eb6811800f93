"""The standard set: every benchmark in its own process, one JSON, and the table in BENCHMARKS.md.

    python -m benchmarks.run_all [--only train_step,sharding] [--json benchmarks/results.json]
        [--no_markdown]

About an hour on the idle 2-core machine, longer when it is shared. The table between the
`results` markers of BENCHMARKS.md is rewritten from the JSON (`--markdown_only` rewrites it from
an existing JSON without measuring).
"""

import argparse
import importlib.util
import json
import os
import sys
import time

from benchmarks import common

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LEVERS = 'product,no_diagnostics,no_donation,async4,bfloat16,matmul_grad,fused_bn'

# name -> (module, arguments): the commands BENCHMARKS.md quotes.
STANDARD = {
    'resnet20_levers': (
        'benchmarks.train_step',
        ['--model', 'resnet20', '--batch', '128', '--variants', LEVERS, '--rounds', '6'],
    ),
    # The CPU settings: the batch split over 8 CPU devices (parallelism.cpu_devices=8), on top of
    # each lever.
    'resnet20_cpu8': (
        'benchmarks.train_step',
        [
            '--model',
            'resnet20',
            '--batch',
            '128',
            '--devices',
            '8',
            '--variants',
            'product,matmul_grad,bfloat16',
            '--rounds',
            '6',
        ],
    ),
    'resnet56': (
        'benchmarks.train_step',
        [
            '--model',
            'resnet56',
            '--batch',
            '128',
            '--variants',
            'product,matmul_grad,bfloat16',
            '--rounds',
            '4',
        ],
    ),
    'resnet56_cpu8': (
        'benchmarks.train_step',
        [
            '--model',
            'resnet56',
            '--batch',
            '128',
            '--devices',
            '8',
            '--variants',
            'product',
            '--rounds',
            '4',
        ],
    ),
    'resnet50': (
        'benchmarks.train_step',
        [
            '--model',
            'resnet50',
            '--batch',
            '8',
            '--image_size',
            '224',
            '--variants',
            'product,matmul_grad,bfloat16',
            '--rounds',
            '3',
        ],
    ),
    'sharding': (
        'benchmarks.sharding',
        [
            '--model',
            'resnet20',
            '--batch',
            '128',
            '--devices',
            '8',
            '--meshes',
            '2,4',
            '--modes',
            'jit,pmap',
            '--baseline',
        ],
    ),
    'sharding_bf16': (
        'benchmarks.sharding',
        [
            '--model',
            'resnet20',
            '--batch',
            '128',
            '--devices',
            '8',
            '--dtype',
            'bfloat16',
            '--modes',
            'jit',
            '--baseline',
        ],
    ),
    # Needs PyTorch on PYTHONPATH (not a dependency; see benchmarks/pytorch_reference.py); skipped
    # without it.
    'pytorch_reference': ('benchmarks.pytorch_reference', ['--devices', '8']),
    'input_pipeline': ('benchmarks.input_pipeline', ['--style', 'both']),
    'train_loop': (
        'benchmarks.train_loop',
        ['--model', 'resnet20', '--batch', '128', '--steps', '30'],
    ),
    'train_loop_cpu8': (
        'benchmarks.train_loop',
        ['--model', 'resnet20', '--batch', '128', '--steps', '30', '--devices', '8'],
    ),
    'checkpoint': ('benchmarks.checkpoint', ['--model', 'resnet20']),
    'checkpoint_cpu8': ('benchmarks.checkpoint', ['--model', 'resnet20', '--devices', '8']),
    'memory': ('benchmarks.memory', []),
}


def command(name: str) -> str:
  module, args = STANDARD[name]
  return f"python -m {module} {' '.join(args)}".strip()


def fmt_ratio(r) -> str:
  return f"x{r['median']:.2f} ({r['q25']:.2f}-{r['q75']:.2f})" if r else ''


def run_cell(name: str, result: dict) -> str:
  """Which run produced a row, and the machine's 1-minute load average when it ended."""
  return f"`{name}` (load {result['machine']['load_average'][0]:.1f})"


def step_rows(result: dict, name: str) -> list[str]:
  rows = []
  for v in result['variants'] + ([result['baseline']] if 'baseline' in result else []):
    devices = f" on {result['devices']} CPU devices" if result.get('devices', 1) > 1 else ''
    label = (
        f"{result['model']} {v['variant']}{devices}"
        if v['variant'] != 'baseline'
        else 'plain Flax ResNet-20 (baseline)'
    )
    batch = result['batch'] if v['variant'] != 'baseline' else 128
    size = (
        ', ' + str(result['image_size']) + 'px'
        if result['image_size'] != 32 and v['variant'] != 'baseline'
        else ''
    )
    rows.append(
        f'| {label}, batch'
        f' {batch}{size}'
        f" | {v['step_seconds'] * 1e3:.0f} | {v['images_per_second']:.1f} |"
        f" {v.get('achieved_gflops', 0):.1f} | {100 * v.get('fraction_of_peak', 0):.1f}% |"
        f" {fmt_ratio(v.get('ratio_to_baseline'))} |"
        f" {fmt_ratio(v.get('ratio_to_' + result['variants'][0]['variant']))} |"
        f" {v['compile_seconds']:.0f} | {run_cell(name, result)} |"
    )
  return rows


def markdown(results: dict) -> str:
  out = [
      (
          '| what | ms/step | images/s | GFLOP/s | of peak | images/s vs baseline (quartiles) | vs'
          ' first variant | compile s | run |'
      ),
      '|---|---:|---:|---:|---:|---|---|---:|---|',
  ]
  for name in ('resnet20_levers', 'resnet20_cpu8', 'resnet56', 'resnet56_cpu8', 'resnet50'):
    if name in results:
      r = results[name]
      out += step_rows(r, name)
      out.append(
          f"| float32 matmul peak (4096^2, same run) | | | {r['peak_gflops']:.0f} | 100% | | | |"
          f' {run_cell(name, r)} |'
      )
  out += ['', '| what | figure | run |', '|---|---|---|']
  if 'input_pipeline' in results:
    for r in results['input_pipeline']['results']:
      out.append(
          f"| {r['style']}-style input pipeline, batch {r['pipeline_batch']} |"
          f" {r['pipeline_images_per_second']:.0f} images/s, {fmt_ratio(r['headroom'])} what the"
          f" {r['step_model']} step (batch {r['step_batch']}) consumes"
          f" ({r['step_images_per_second']:.1f} images/s) |"
          f" {run_cell('input_pipeline', results['input_pipeline'])} |"
      )
  if 'pytorch_reference' in results:
    r = results['pytorch_reference']
    for p in r['results']:
      vs = (
          f", {fmt_ratio(p['ratio_to_pytorch'])} PyTorch's"
          if 'ratio_to_pytorch' in p
          else f" (PyTorch {r['torch']}, channels_last)"
      )
      out.append(
          f"| ResNet-20 batch {r['batch']}, {p['name'].replace('_', ' ')} |"
          f" {p['images_per_second']:.1f} images/s{vs} | {run_cell('pytorch_reference', r)} |"
      )
  for name in ('train_loop', 'train_loop_cpu8'):
    if name not in results:
      continue
    r = results[name]
    out.append(
        f"| training loop vs pure step, {r['model']} batch {r['batch']} on {r['devices']} device(s)"
        f" (log every {r['log_every']}, checkpoint every {r['checkpoint_every']}) | loop"
        f" {r['loop_images_per_second']:.1f} images/s, step {r['step_images_per_second']:.1f}"
        f" images/s: overhead {100 * r['loop_overhead']:+.1f}% | {run_cell(name, r)} |"
    )
  for name in ('checkpoint', 'checkpoint_cpu8'):
    if name in results:
      r = results[name]
      out.append(
          f"| checkpoint save, {r['model']} state ({r['megabytes']:.1f} MB, {r['arrays']} arrays)"
          f" on {r['devices']} device(s) | training blocked {r['first_blocking_seconds']:.2f} s by"
          f" the first save of a run, {r['later_blocking_seconds']:.2f} s by later ones (written"
          f" after {r['later_complete_seconds']:.2f} s) | {run_cell(name, r)} |"
      )
  for name in ('sharding', 'sharding_bf16'):
    if name not in results:
      continue
    r = results[name]
    for s in r['results']:
      if s['name'] == 'baseline':
        continue
      what = (
          f"ResNet-20 {r.get('dtype', 'float32')}, global batch {r['batch']},"
          f" {s['name'].replace('_', ' ')}"
      )
      figures = [f"{s['images_per_second']:.1f} images/s"]
      if 'overhead' in s:
        figures.append(
            f"sharding overhead {100 * s['overhead']:+.0f}% (throughput"
            f" {fmt_ratio(s['ratio_to_1_device'])} 1 device)"
        )
      if 'ratio_to_baseline' in s:
        figures.append(f"{fmt_ratio(s['ratio_to_baseline'])} the baseline")
      if 'fraction_of_peak' in s:
        figures.append(
            f"{100 * s['fraction_of_peak']:.0f}% of the {r['peak_gflops']:.0f} GFLOP/s peak"
        )
      out.append(f"| {what} | {'; '.join(figures)} | {run_cell(name, r)} |")
  if 'memory' in results:
    for r in results['memory']['results']:
      if 'error' in r:
        out.append(
            f"| peak host memory, `{r['case']}` | {r['error']} "
            f"| {run_cell('memory', results['memory'])} |"
        )
        continue
      out.append(
          f"| peak host memory, `{r['case']}` | {r['peak_rss_mib']:.0f} MiB"
          f" (+{r['step_peak_mib']:.0f} MiB over start-up; XLA temporaries {r['xla_temp_mib']:.0f}"
          f" MiB; step compiled in {r['compile_seconds']:.0f} s) |"
          f" {run_cell('memory', results['memory'])} |"
      )
  machine = next(
      (r['machine'] for r in results.values() if isinstance(r, dict) and 'machine' in r), {}
  )
  out += [
      '',
      (
          f"Machine: {machine.get('cpu')}, {machine.get('nproc')} cores"
          f" ({', '.join(machine.get('simd', []))}), {machine.get('memory_gib')} GiB, jax/jaxlib"
          f" {machine.get('jax')}/{machine.get('jaxlib')}, flax {machine.get('flax')}. The load in"
          ' each row is the 1-minute load average when its run ended (2 cores). Commands:'
      ),
      '',
  ]
  out += [f'- `{name}`: `{command(name)}`' for name in STANDARD if name in results]
  return '\n'.join(out)


def update_markdown(results: dict, path: str) -> None:
  begin, end = (
      '<!-- results:begin (written by python -m benchmarks.run_all) -->',
      '<!-- results:end -->',
  )
  text = open(path).read() if os.path.exists(path) else f'# Benchmarks\n\n{begin}\n{end}\n'
  if begin not in text:
    text += f'\n{begin}\n{end}\n'
  head, rest = text.split(begin, 1)
  tail = rest.split(end, 1)[1]
  with open(path, 'w') as f:
    f.write(f'{head}{begin}\n{markdown(results)}\n{end}{tail}')


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--only', help=f'comma-separated of {list(STANDARD)}')
  parser.add_argument('--json', default=os.path.join(ROOT, 'benchmarks', 'results.json'))
  parser.add_argument('--markdown', default=os.path.join(ROOT, 'BENCHMARKS.md'))
  parser.add_argument('--no_markdown', action='store_true')
  parser.add_argument('--markdown_only', action='store_true')
  args = parser.parse_args()
  results = json.load(open(args.json)) if os.path.exists(args.json) else {}
  if not args.markdown_only:
    for name in (args.only.split(',') if args.only else STANDARD):
      module, module_args = STANDARD[name]
      if name == 'pytorch_reference' and importlib.util.find_spec('torch') is None:
        print(f'== {name}: skipped, PyTorch is not on PYTHONPATH', file=sys.stderr, flush=True)
        continue
      print(
          f'== {name}: {command(name)}  (load {common.load_average()})', file=sys.stderr, flush=True
      )
      start = time.perf_counter()
      results[name] = common.run_module(module, module_args)
      results[name]['wall_seconds'] = time.perf_counter() - start
      with open(args.json, 'w') as f:  # after each, so a long run keeps what it has
        json.dump(results, f, indent=1, sort_keys=True)
  if not args.no_markdown:
    update_markdown(results, args.markdown)
  print(markdown(results))


if __name__ == '__main__':
  main()
