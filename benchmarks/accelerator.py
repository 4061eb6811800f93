"""One command that measures an accelerator, and PyTorch on it (issue 15).

    python -m benchmarks.accelerator [--quick] [--torch_python PATH]
        [--only steps,loop,pmap,numerics,tests] [--json PATH] [--markdown PATH]

On the device JAX picks (it reports which: `jax.devices()[0].device_kind`):
  steps     the project's train step (benchmarks.train_step.ProductStep: the step the trainer
            runs, on one batch already on the device): ResNet-50 at 224 px, batch 256, bfloat16
            and float32; ResNet-20 at 32 px, batch 128 and 1024. Images/s, model FLOP
            utilisation (analytic FLOPs: 3 x forward multiply-adds x 2, over the chip's dense
            peak for the dtype: bf16, or TF32 for float32 on GPUs), XLA's memory estimate and
            the process's peak. Beside each, the same network in PyTorch (torchvision's ResNet-50,
            the CIFAR ResNet-20 of benchmarks/pytorch_reference.py; channels_last, bf16
            autocast) eager and under torch.compile, timed interleaved with it when torch
            imports in this Python, else run by `--torch_python` in its own process (then not
            interleaved).
  loop      the real training loop on synthetic data made on the device (configs/synthetic.py)
            against the pure step: what the loop itself costs.
  pmap      the step jitted on 1 device against the classic pmap step, and their parameters.
  numerics  one step in float32 and in bfloat16 on the device against float32 on the CPU.
  tests     the parts of the test suite that need no TensorFlow, run on the device.
Writes a JSON and a markdown table (default benchmarks/accelerator_<platform>[_quick].json/.md).
Full sizes are for a GPU or TPU: under 8 minutes on one H100. `--quick` runs small sizes (a few
minutes on 2 CPU cores): it checks the script, its figures are not the accelerator's.
"""

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import time

# JAX would take 75% of the GPU's memory at start: PyTorch shares it here, and the peak we report
# should be what the programs use.
os.environ.setdefault('XLA_PYTHON_CLIENT_PREALLOCATE', 'false')
os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')

try:  # before JAX, as in benchmarks/pytorch_reference.py
  from benchmarks import torch_step
except ImportError:  # no torch in this Python
  torch_step = None

import jax  # noqa: E402
import numpy as np  # noqa: E402

from benchmarks import common, train_step  # noqa: E402
from configs import synthetic  # noqa: E402
from resnet_jax.workdir import metrics as metric_logging  # noqa: E402
from resnet_jax.models import stats as model_stats  # noqa: E402
from resnet_jax.training import parallel, loop as train  # noqa: E402
from resnet_jax.config import resolve as run_lib  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# Dense (no sparsity) peak TFLOP/s per chip, from the vendors' datasheets: NVIDIA H100 (SXM5, PCIe,
# NVL) and H200 (SXM, NVL) Tensor Core GPU datasheets (the "with sparsity" figures halved); A100
# datasheet (SXM and PCIe alike); Google Cloud TPU system architecture pages (v4: 275, v5e: 197,
# v5p: 459, v6e: 918 bf16 TFLOP/s per chip). 'float32' is the GPUs' TF32 tensor-core rate, which
# XLA uses for float32 convolutions and matmuls at JAX's default precision; TPUs run float32 matmuls
# as several bfloat16 passes, so they have no float32 figure here. Matched in order, first hit.
PEAK_TFLOPS = (
    ('H100 PCIe', {'bfloat16': 756.5, 'float32': 378.0}),
    ('H100 NVL', {'bfloat16': 835.5, 'float32': 417.5}),
    ('H100', {'bfloat16': 989.4, 'float32': 494.7}),  # SXM5, e.g. 'NVIDIA H100 80GB HBM3'
    ('H200 NVL', {'bfloat16': 835.5, 'float32': 417.5}),
    ('H200', {'bfloat16': 989.4, 'float32': 494.7}),
    ('A100', {'bfloat16': 312.0, 'float32': 156.0}),
    ('TPU v4', {'bfloat16': 275.0}),
    ('TPU v5 lite', {'bfloat16': 197.0}),  # v5e
    ('TPU v5', {'bfloat16': 459.0}),  # v5p
    ('TPU v6 lite', {'bfloat16': 918.0}),  # v6e
)


@dataclasses.dataclass(frozen=True)
class Case:
  model: str
  image_size: int
  batch: int
  dtype: str

  @property
  def name(self) -> str:
    return f'{self.model} {self.image_size}px b{self.batch} {self.dtype}'


FULL = {
    'steps': [
        Case('resnet50', 224, 256, 'bfloat16'),
        Case('resnet50', 224, 256, 'float32'),
        Case('resnet20', 32, 128, 'float32'),
        Case('resnet20', 32, 128, 'bfloat16'),
        Case('resnet20', 32, 1024, 'float32'),
        Case('resnet20', 32, 1024, 'bfloat16'),
    ],
    'loop': Case('resnet20', 32, 128, 'float32'),  # the fastest step: the loop's cost shows most
    'pmap': Case('resnet20', 32, 1024, 'float32'),
    'numerics': Case('resnet20', 32, 128, 'float32'),
    'rounds': 6,
    'steps_per_call': 5,
    'loop_steps': 300,
    'tests': [
        'tests/test_models.py',
        'tests/test_padding.py',
        'tests/test_train_step.py',
        'tests/test_parallel.py',
        'tests/test_without_tensorflow.py',
    ],
}
QUICK = {
    'steps': [
        Case('resnet50', 64, 8, 'float32'),
        Case('resnet20', 32, 32, 'float32'),
        Case('resnet20', 32, 128, 'float32'),
    ],
    'loop': Case('resnet20', 32, 32, 'float32'),
    'pmap': Case('resnet20', 32, 32, 'float32'),
    'numerics': Case('resnet20', 32, 16, 'float32'),
    'rounds': 3,
    'steps_per_call': 1,
    'loop_steps': 30,
    'tests': ['tests/test_padding.py'],
}
# Tests that need 8 devices (conftest's simulated CPUs) or the CPU backend itself.
NEEDS_EIGHT_CPU_DEVICES = (
    'eight_device or per_device_batch_norm_differs or cpu_devices_splits or test_the_blocker'
)


def device_facts() -> dict:
  device = jax.devices()[0]
  peak = next((p for key, p in PEAK_TFLOPS if key in device.device_kind), None)
  return {
      'platform': device.platform,
      'device_kind': device.device_kind,
      'device_count': jax.device_count(),
      'peak_tflops': peak,
  }


def analytic_flops(case: Case) -> float:
  """Training FLOPs a step: forward multiply-adds x 2 (FLOPs) x 3 (forward + two for backward)."""
  config = train_step.config_for(case.model, batch=case.batch, image_size=case.image_size)
  image_shape, classes = train_step.shape_of(config)
  model = run_lib.check(config).model.build(classes)
  return 3 * 2 * model_stats.multiply_adds(model, image_shape) * case.batch


def product_step(case: Case, *, mode: str = 'jit', mesh=None, sync_every: int = 1):
  config = train_step.config_for(
      case.model, batch=case.batch, dtype=case.dtype, image_size=case.image_size
  )
  return train_step.ProductStep(config, mode=mode, mesh=mesh, sync_every=sync_every)


def memory_estimate(compiled) -> int | None:
  """XLA's own account of a program's device memory: arguments + outputs + temporaries."""
  try:
    m = compiled.memory_analysis()
    return int(
        m.argument_size_in_bytes
        + m.output_size_in_bytes
        - m.alias_size_in_bytes
        + m.temp_size_in_bytes
    )
  except (AttributeError, TypeError, NotImplementedError):
    return None


def process_peak_bytes() -> int | None:
  """The device's high-water mark of this process so far (None where the backend has none)."""
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get('peak_bytes_in_use')


# ------------------------------------------------------------------------------------ torch


def torch_cases(case: Case, torch_compile: str) -> list[tuple[str, str]]:
  """PyTorch's variants of a case: eager, and torch.compile where `torch_compile` asks for it
  ('bfloat16': the bfloat16 cases only, as each compilation takes about a minute; 'all'; 'off')."""
  base = f'{case.model}:{case.image_size}:{case.batch}:{case.dtype}'
  compiled = torch_compile == 'all' or torch_compile == case.dtype
  return [('torch_eager', f'{base}:eager')] + (
      [('torch_compile', f'{base}:compile')] if compiled else []
  )


def torch_in_other_python(torch_python: str, specs: list[str], steps: int) -> dict:
  """benchmarks.torch_step in another Python (not interleaved with JAX)."""
  with tempfile.NamedTemporaryFile(suffix='.json') as out:
    subprocess.run(
        [
            torch_python,
            '-m',
            'benchmarks.torch_step',
            '--cases',
            ','.join(specs),
            '--steps',
            str(steps),
            '--json',
            out.name,
        ],
        check=True,
        cwd=ROOT,
        timeout=1800,
    )
    with open(out.name) as f:
      return json.load(f)


def add_torch_from_other_python(result: dict, settings, torch_python: str, torch_compile) -> None:
  """Fills the steps' torch figures from benchmarks.torch_step run by another Python."""
  specs = [s for c in settings['steps'] for _, s in torch_cases(c, torch_compile)]
  other = torch_in_other_python(
      torch_python, specs, steps=settings['rounds'] * settings['steps_per_call']
  )
  result['torch'] = other['torch']
  by_spec = {r['case']: r for r in other['results']}
  for r in result['steps']:
    case = Case(r['model'], r['image_size'], r['batch'], r['dtype'])
    for name, spec in torch_cases(case, torch_compile):
      if spec in by_spec:
        r[name] = {**by_spec[spec], 'separate_process': True}


# ------------------------------------------------------------------------------------ sections


def measure_steps(settings, device: dict, *, torch_compile: str) -> list[dict]:
  results = []
  k = settings['steps_per_call']
  for case in settings['steps']:
    print(f'step {case.name}', file=sys.stderr, flush=True)
    jax_step = product_step(case, sync_every=k)
    runs = {'jax': jax_step}
    if torch_step is not None:
      for name, spec in torch_cases(case, torch_compile):
        torch_run = torch_step.TorchStep(**torch_step.parse_case(spec))
        runs[name] = lambda run=torch_run: [run() for _ in range(k)]
    times = common.interleaved(runs, rounds=settings['rounds'], warmup=2)
    flops = analytic_flops(case)
    peak = (device['peak_tflops'] or {}).get(case.dtype)
    result = {
        'case': case.name,
        **dataclasses.asdict(case),
        'compile_seconds': jax_step.compile_seconds,
        'flops_per_step': flops,
        'xla_memory_bytes': memory_estimate(jax_step.step),
        'process_peak_bytes': process_peak_bytes(),
    }
    for name in runs:
      seconds = common.median(times[name]) / k
      result[name] = {'step_seconds': seconds, 'images_per_second': case.batch / seconds}
      if peak:
        result[name]['mfu'] = flops / seconds / (peak * 1e12)
      if name != 'jax':
        result[name]['jax_over_it'] = common.paired_ratio(times, 'jax', name)
    results.append(result)
    del runs, jax_step
  return results


def measure_loop(settings) -> dict:
  """Images/s of the training loop on synthetic data, against the pure step (same config)."""
  case, steps = settings['loop'], settings['loop_steps']
  log_every = max(1, steps // 6)
  config = synthetic.get_config(case.model)
  config.dataset.update(image_size=case.image_size, num_eval_examples=4 * case.batch)
  config.model.dtype = case.dtype
  config.train.update(
      batch_size=case.batch,
      eval_batch_size=case.batch,
      num_steps=steps,
      log_every_steps=log_every,
      eval_every_steps=steps,
      checkpoint_every_steps=steps,
  )
  print(f'loop {case.name}: {steps} steps', file=sys.stderr, flush=True)
  with tempfile.TemporaryDirectory() as workdir:
    start = time.perf_counter()
    train.train_and_evaluate(run_lib.resolve(config, **train.device_counts()), workdir)
    loop_wall = time.perf_counter() - start
    windows = [
        r['images_per_second']
        for r in metric_logging.read_metrics(workdir)
        if 'images_per_second' in r
    ][
        1:
    ]  # the first window holds compilation
  pure = product_step(case, sync_every=log_every)
  times = common.interleaved({'pure_step': pure}, rounds=settings['rounds'], warmup=1)
  pure_ips = case.batch * log_every / common.median(times['pure_step'])
  loop_ips = common.median(windows)
  return {
      'case': case.name,
      'steps': steps,
      'log_every_steps': log_every,
      'loop_images_per_second': loop_ips,
      'pure_step_images_per_second': pure_ips,
      'loop_over_pure': loop_ips / pure_ips,
      'loop_wall_seconds': loop_wall,
      'loop_window_images_per_second': windows,
  }


def _params(step) -> list[np.ndarray]:
  return [np.asarray(x) for x in jax.tree.leaves(step.data_parallel.to_global(step.state).params)]


def _relative(a: list[np.ndarray], b: list[np.ndarray]) -> float:
  """||a - b|| / ||b|| over all leaves."""
  num = sum(float(np.sum((x.astype(np.float64) - y) ** 2)) for x, y in zip(a, b))
  return (num / sum(float(np.sum(y.astype(np.float64) ** 2)) for y in b)) ** 0.5


def measure_pmap(settings) -> dict:
  """The jitted step on 1 device against pmap on the same device: speed, and the same parameters
  after the same steps (both ran the same calls on the same batch from the same start)."""
  case = settings['pmap']
  mesh = parallel.make_mesh(jax.devices()[:1])
  k = settings['steps_per_call']
  runs = {
      'jit': product_step(case, mesh=mesh, sync_every=k),
      'pmap': product_step(case, mode='pmap', mesh=mesh, sync_every=k),
  }
  print(f'jit vs pmap {case.name}', file=sys.stderr, flush=True)
  times = common.interleaved(runs, rounds=settings['rounds'], warmup=2)
  return {
      'case': case.name,
      **{f'{n}_images_per_second': case.batch * k / common.median(times[n]) for n in runs},
      'jit_over_pmap': common.paired_ratio(times, 'jit', 'pmap'),
      'params_relative_difference': _relative(_params(runs['jit']), _params(runs['pmap'])),
  }


def measure_numerics(settings) -> dict:
  """One step from the same start on the same batch: the parameter update in float32 and in
  bfloat16 on the device, against float32 on the CPU (GPUs' float32 convolutions use TF32)."""
  case = settings['numerics']
  cpu = parallel.make_mesh(jax.devices('cpu')[:1])
  reference = product_step(case, mesh=cpu)
  start = _params(reference)
  reference()
  ref_update = [a - b for a, b in zip(_params(reference), start)]
  result = {'case': case.name, 'reference': 'float32 on the CPU'}
  for dtype in ('float32', 'bfloat16'):
    step = product_step(dataclasses.replace(case, dtype=dtype))
    step()
    update = [a - b for a, b in zip(_params(step), start)]
    result[f'{dtype}_update_relative_error'] = _relative(update, ref_update)
  return result


def run_tests(files: list[str], device_count: int) -> dict:
  """pytest on the files in a fresh process, JAX on this machine's default device."""
  env = dict(os.environ)
  env.pop('XLA_PYTHON_CLIENT_PREALLOCATE', None)
  command = [sys.executable, '-m', 'pytest', '-q', '-p', 'no:cacheprovider', *files]
  if jax.devices()[0].platform != 'cpu':
    command += ['-k', f'not ({NEEDS_EIGHT_CPU_DEVICES})']
  print(' '.join(command), file=sys.stderr, flush=True)
  start = time.perf_counter()
  done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
  lines = done.stdout.strip().splitlines()
  return {
      'command': ' '.join(command[1:]),
      'returncode': done.returncode,
      'summary': lines[-1] if lines else done.stderr[-500:],
      'failed': [line for line in lines if line.startswith(('FAILED', 'ERROR'))],
      'seconds': time.perf_counter() - start,
      'device_count': device_count,
  }


# ------------------------------------------------------------------------------------ output


def _gib(n) -> str:
  return f'{n / 2**30:.2f}' if n else ''


def markdown(result: dict) -> str:
  d = result['device']
  lines = [
      f"Accelerator benchmark on **{d['device_kind']}** ({d['platform']}, {d['device_count']}"
      f" device(s)), JAX {result['machine']['jax']}"
      + (f", PyTorch {result['torch']}" if result.get('torch') else '')
      + (' (quick sizes: checks the script, not the accelerator)' if result['quick'] else '')
      + f", {result['date']}.",
      '',
  ]
  if result.get('steps'):
    lines += [
        (
            '| train step | JAX images/s | MFU | XLA memory GiB | torch eager | torch.compile |'
            ' JAX / torch best |'
        ),
        '|---|---:|---:|---:|---:|---:|---:|',
    ]
    for r in result['steps']:
      torch_ips = {n: r[n]['images_per_second'] for n in ('torch_eager', 'torch_compile') if n in r}
      jax_ips, mfu = r['jax']['images_per_second'], r['jax'].get('mfu')
      cells = [
          r['case'],
          f'{jax_ips:,.0f}',
          f'{mfu:.1%}' if mfu else '',
          _gib(r['xla_memory_bytes']),
          *(
              f'{torch_ips[n]:,.0f}' if n in torch_ips else ''
              for n in ('torch_eager', 'torch_compile')
          ),
          f'x{jax_ips / max(torch_ips.values()):.2f}' if torch_ips else '',
      ]
      lines.append('| ' + ' | '.join(cells) + ' |')
    lines.append('')
  if result.get('loop'):
    r = result['loop']
    lines.append(
        f"Training loop on synthetic data, {r['case']}: {r['loop_images_per_second']:,.0f}"
        f" images/s against the pure step's {r['pure_step_images_per_second']:,.0f}"
        f" (x{r['loop_over_pure']:.2f}; log every {r['log_every_steps']} steps)."
    )
  if result.get('pmap'):
    r = result['pmap']
    lines.append(
        f"1-device jit vs pmap, {r['case']}: {r['jit_images_per_second']:,.0f} against"
        f" {r['pmap_images_per_second']:,.0f} images/s (x{r['jit_over_pmap']['median']:.2f});"
        f" parameters differ by {r['params_relative_difference']:.1e} (relative)."
    )
  if result.get('numerics'):
    r = result['numerics']
    lines.append(
        f"One step's update against float32 on the CPU ({r['case']}): float32"
        f" {r['float32_update_relative_error']:.1e}, bfloat16"
        f" {r['bfloat16_update_relative_error']:.1e} (relative)."
    )
  if result.get('tests'):
    r = result['tests']
    lines.append(f"Tests without TensorFlow on the device: {r['summary']}.")
  return '\n'.join(lines) + '\n'


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--quick', action='store_true', help='small sizes (CPU check)')
  parser.add_argument('--only', default='steps,loop,pmap,numerics,tests')
  parser.add_argument('--torch_python', help='a Python with torch, when this one has none')
  parser.add_argument(
      '--torch_compile',
      choices=('auto', 'all', 'bfloat16', 'off'),
      default='auto',
      help=(
          'the cases that also time torch.compile (auto: bfloat16 on an accelerator, none on a CPU)'
      ),
  )
  parser.add_argument('--json')
  parser.add_argument('--markdown')
  args = parser.parse_args()
  settings = QUICK if args.quick else FULL
  sections = set(args.only.split(','))
  device = device_facts()
  torch_compile = args.torch_compile
  if torch_compile == 'auto':
    torch_compile = 'off' if device['platform'] == 'cpu' else 'bfloat16'

  stem = f"benchmarks/accelerator_{device['platform']}{'_quick' if args.quick else ''}"
  json_path = args.json or os.path.join(ROOT, stem + '.json')
  markdown_path = args.markdown or os.path.join(ROOT, stem + '.md')
  start = time.perf_counter()
  result = {
      'benchmark': 'accelerator',
      'quick': args.quick,
      'date': time.strftime('%Y-%m-%d'),
      'device': device,
      'torch': torch_step.torch.__version__ if torch_step else None,
  }
  print(f"device: {device['device_kind']} ({device['platform']})", file=sys.stderr, flush=True)

  def save():  # after each section: a run stopped by its time limit keeps what it measured
    result['seconds'] = time.perf_counter() - start
    with open(json_path, 'w') as f:
      json.dump(result, f, indent=1, sort_keys=True, default=str)
    with open(markdown_path, 'w') as f:
      f.write(markdown(result))

  result['machine'] = common.machine()
  if 'steps' in sections:
    result['steps'] = measure_steps(settings, device, torch_compile=torch_compile)
    if torch_step is None and args.torch_python:
      add_torch_from_other_python(result, settings, args.torch_python, torch_compile)
    save()
  for name, measure in (
      ('loop', measure_loop),
      ('pmap', measure_pmap),
      ('numerics', measure_numerics),
  ):
    if name in sections:
      result[name] = measure(settings)
      save()
  if 'tests' in sections:
    result['tests'] = run_tests(settings['tests'], device['device_count'])
  save()
  print(markdown(result))
  print(f'wrote {json_path} and {markdown_path} in {result["seconds"]:.0f} s')
  if result.get('tests', {}).get('returncode'):
    sys.exit(1)


if __name__ == '__main__':
  main()
