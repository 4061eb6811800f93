"""Throughput of the project's train step, side by side with the plain baseline and the matmul peak.

    python -m benchmarks.train_step --model resnet20 --batch 128 [--dtype bfloat16] [--devices 8]
        [--variants product,no_diagnostics,bfloat16] [--rounds 8 --steps 1] [--json out.json]

The project's step is built exactly as `resnet_jax.training.loop` builds it (config -> model,
optimizer,
schedule -> `DataParallel.compile_train_step(train_step)`), on one in-memory batch already on the
devices, so only the step is timed. In the same process, interleaved round by round, it times the
plain Flax ResNet-20 (benchmarks/baseline_resnet20.py) and a 4096^2 float32 matmul, so each
variant is also a ratio to the baseline and a fraction of the machine's peak measured at that time.

Variants are levers switched without editing the product, joined with '+':
  product          the step `resnet_jax.training.loop` runs (donated state, diagnostics on)
  no_diagnostics   train.log_diagnostics=False (no per-block norms, no per-stage gradient norms)
  no_donation      the same step jitted without donating the old state
  scanK            K steps per dispatch (jax.lax.scan over K batches), e.g. scan2
                   (very slow on XLA CPU)
  asyncN           N steps dispatched back to back, one host synchronisation (as between log steps)
  bfloat16         model.dtype=bfloat16 (float32 parameters)
  remat            model.remat=True
  scan_blocks      model.scan_blocks=True (each stage's repeated blocks as one scan: compile time)
  matmul_grad      model.conv_kernel_grad='matmul'
                   (conv kernel gradients as one matmul, resnet_jax/models/conv.py)
"""

import argparse
import os
import sys

import jax
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from benchmarks import baseline_resnet20, common
from configs import cifar10, imagenet
from resnet_jax.config import run as run_spec
from resnet_jax.training import cpu_backend, parallel
from resnet_jax import models
from resnet_jax.config import resolve as run_lib
from resnet_jax.training.setup import Setup


def config_for(
    model_name: str,
    *,
    batch: int,
    dtype: str = 'float32',
    remat: bool = False,
    diagnostics: bool = True,
    image_size: int = 224,
    conv_kernel_grad: str = 'xla',
    scan_blocks: bool = False,
):
  """The run config a user would get for this preset: CIFAR-10 or ImageNet, with these overrides."""
  if models.model_spec(model_name)['stem'] == 'cifar':
    config = cifar10.get_config(model_name)
  else:
    config = imagenet.get_config(model_name)
    config.dataset.image_size = image_size
  config.train.batch_size = batch
  config.train.log_diagnostics = diagnostics
  # torchvision's v1.5 bottleneck (the paper's recipe trains v1): the network PyTorch's side of
  # the comparison runs and published throughputs measure.
  config.model.update(
      dtype=dtype,
      remat=remat,
      conv_kernel_grad=conv_kernel_grad,
      scan_blocks=scan_blocks,
      stride_in_1x1=False,
  )
  return config


def shape_of(config) -> tuple[tuple[int, int, int], int]:
  """(image shape, classes) of the config's dataset, without reading it."""
  if config.dataset.name == 'imagenet2012':
    return (config.dataset.image_size,) * 2 + (3,), 1000
  return (32, 32, 3), 10


def parse_variant(spec: str) -> dict:
  options = {
      'diagnostics': True,
      'donate': True,
      'per_dispatch': 1,
      'sync_every': 1,
      'dtype': None,
      'remat': None,
      'conv_kernel_grad': 'xla',
      'scan_blocks': False,
  }
  for part in spec.split('+'):
    if part == 'product':
      pass
    elif part == 'no_diagnostics':
      options['diagnostics'] = False
    elif part == 'no_donation':
      options['donate'] = False
    elif part == 'scan_blocks':
      options['scan_blocks'] = True
    elif part.startswith('scan'):
      options['per_dispatch'] = int(part[4:])
    elif part.startswith('async'):
      options['sync_every'] = int(part[5:])
    elif part in ('bfloat16', 'float32'):
      options['dtype'] = part
    elif part == 'remat':
      options['remat'] = True
    elif part == 'matmul_grad':
      options['conv_kernel_grad'] = 'matmul'
    else:
      raise SystemExit(f'unknown variant {part!r} in {spec!r}; see --help')
  return options


class ProductStep:
  """Calling it runs `steps_per_call` steps of the project's train step and waits for them."""

  def __init__(
      self,
      config,
      *,
      donate: bool = True,
      per_dispatch: int = 1,
      sync_every: int = 1,
      mesh=None,
      mode: str = 'jit',
      batch_norm: str = 'global',
      compiler_options: dict | str | None = None,
      kernels: str = 'xla',
  ):
    self.data_parallel = parallel.DataParallel(mode, batch_norm, mesh)
    image_shape, num_classes = shape_of(config)
    # CIFAR-10's 50,000 training images: the schedule of a real run (390 steps an epoch at 128).
    dataset = run_spec.DatasetFacts(num_classes, image_shape, 50_000, 10_000)
    run = run_lib.resolve(
        config,
        dataset=dataset,
        device_count=self.data_parallel.mesh.size,
        process_count=jax.process_count(),
    )
    self.run = run  # what the step was built from; nothing reads the config after this
    setup = Setup(run, self.data_parallel)  # the model, optimizer and state as training builds
    self.state = self.data_parallel.to_devices(setup.fresh_state())
    host_batch = baseline_resnet20.random_batch(run.batch.size, image_shape, num_classes, run.seed)
    if per_dispatch == 1:
      self.batch = self.data_parallel.place_batch(host_batch)
    else:
      if mode != 'jit' or batch_norm != 'global':
        raise SystemExit(
            'scanK variants are measured for the default jit mode with global BatchNorm'
        )
      stacked = jax.tree.map(lambda x: np.stack([x] * per_dispatch), host_batch)
      self.batch = jax.device_put(
          stacked, NamedSharding(self.data_parallel.mesh, P(None, parallel.DATA_AXIS))
      )

    def jitted(kernels: str):
      """The step to time, the model's convolutions on `kernels`' kernels."""
      step_fn = setup.train_step_fn(setup.model.clone(kernels=kernels))
      if per_dispatch == 1 and donate:
        return self.data_parallel.compile_train_step(step_fn)  # exactly the product's step
      if per_dispatch == 1:
        return jax.jit(
            step_fn,
            in_shardings=(self.data_parallel.replicated, self.data_parallel.batch_sharded),
            out_shardings=(self.data_parallel.replicated, self.data_parallel.replicated),
        )
      return jax.jit(
          lambda state, batches: jax.lax.scan(step_fn, state, batches),
          in_shardings=(
              self.data_parallel.replicated,
              NamedSharding(self.data_parallel.mesh, P(None, parallel.DATA_AXIS)),
          ),
          out_shardings=(self.data_parallel.replicated, self.data_parallel.replicated),
          donate_argnums=0 if donate else (),
      )

    # compiler_options: XLA debug options for this compilation only (e.g.
    # {'xla_cpu_multi_thread_eigen': False}), so that variants compare within one process;
    # 'auto': the CPU backend the product picks (cpu_backend.choose: measured, or cached).
    # `kernels`: 'onednn' for oneDNN's (parallelism.cpu_backend=onednn).
    self.backend = None
    if compiler_options == 'auto':
      self.backend, _ = cpu_backend.choose(
          lambda c: jitted(c).lower(self.state, self.batch),
          self.state,
          self.batch,
          configured='auto',
          signature=cpu_backend.step_signature(
              run, devices=self.data_parallel.mesh.size, processes=jax.process_count()
          ),
      )
      compiler_options = self.backend.options or None
      kernels = cpu_backend.kernels(self.backend.name)
    step = jitted(kernels)
    self.step, self.compile_seconds, flops = common.compile_timed(
        step, self.state, self.batch, compiler_options=compiler_options
    )
    self.steps_per_call = per_dispatch * sync_every
    self.sync_every = sync_every
    # XLA counts a scan's body once (measure() fills it in) and one device's share of a sharded
    # program.
    self.flops_per_step = (
        flops * self.data_parallel.mesh.size if per_dispatch == 1 and flops else None
    )

  def __call__(self):
    for _ in range(self.sync_every):
      self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))


def summary(
    name: str,
    times: dict[str, list[float]],
    *,
    steps_per_call: int,
    batch: int,
    flops_per_step,
    compile_seconds,
    peak_flops: float,
    reference: str | None = None,
    reference_images: int = 0,
) -> dict:
  step = common.median(times[name]) / steps_per_call
  result = {
      'variant': name,
      'step_seconds': step,
      'images_per_second': batch / step,
      'compile_seconds': compile_seconds,
      'flops_per_step': flops_per_step,
      'timed_steps': len(times[name]) * steps_per_call,
  }
  if flops_per_step:
    result['achieved_gflops'] = flops_per_step / step / 1e9
    result['fraction_of_peak'] = flops_per_step / step / peak_flops
  if reference in times and reference != name:
    # Throughput (images/s) over the reference's, call by call within the same rounds.
    result[f'ratio_to_{reference}'] = common.paired_ratio(
        times, name, reference, per_call=(batch * steps_per_call, reference_images)
    )
  return result


def measure(
    model_name: str,
    *,
    batch: int,
    variants: list[str],
    dtype: str = 'float32',
    remat: bool = False,
    image_size: int = 224,
    rounds: int = 8,
    steps: int = 1,
    baseline_batch: int = 128,
    with_baseline: bool = True,
    peak_size: int = 4096,
    mesh=None,
) -> dict:
  """Times the variants, the baseline and the matmul peak interleaved; returns the JSON result."""
  runs, built = {}, {}
  for spec in variants:
    options = parse_variant(spec)
    config = config_for(
        model_name,
        batch=batch,
        dtype=options['dtype'] or dtype,
        remat=remat if options['remat'] is None else options['remat'],
        diagnostics=options['diagnostics'],
        image_size=image_size,
        conv_kernel_grad=options['conv_kernel_grad'],
        scan_blocks=options['scan_blocks'],
    )
    built[spec] = ProductStep(
        config,
        donate=options['donate'],
        per_dispatch=options['per_dispatch'],
        sync_every=options['sync_every'],
        mesh=mesh,
    )
    runs[spec] = built[spec]
  if with_baseline:
    baseline = baseline_resnet20.Runner(baseline_batch)
    runs['baseline'] = baseline
  peak_run, peak_flops_per_run = common.matmul_peak_run(peak_size)
  runs['matmul_peak'] = peak_run
  runs['host_yardstick'] = common.host_yardstick()
  load_before = common.load_average()
  times = common.interleaved(runs, rounds=rounds, steps=steps)
  peak_flops = peak_flops_per_run / common.median(times['matmul_peak'])
  # scan/async variants count FLOPs per step as the single-step program does.
  single_step_flops = next((b.flops_per_step for b in built.values() if b.flops_per_step), None)
  first = variants[0]
  results = []
  for spec, b in built.items():
    r = summary(
        spec,
        times,
        steps_per_call=b.steps_per_call,
        batch=batch,
        compile_seconds=b.compile_seconds,
        flops_per_step=b.flops_per_step or single_step_flops,
        peak_flops=peak_flops,
        reference='baseline' if with_baseline else None,
        reference_images=baseline_batch,
    )
    if spec != first:
      r[f'ratio_to_{first}'] = common.paired_ratio(
          times, spec, first, per_call=(b.steps_per_call, built[first].steps_per_call)
      )
    results.append(r)
  out = {
      'benchmark': 'train_step',
      'model': model_name,
      'batch': batch,
      'dtype': dtype,
      'remat': remat,
      'devices': jax.device_count(),
      'image_size': shape_of(config)[0][0],
      'rounds': rounds,
      'steps_per_round': steps,
      'variants': results,
      'peak_gflops': peak_flops / 1e9,
      'load_average_before': load_before,
      'machine': common.machine(),
  }
  # XLA flags change every XLA program here; the numpy matmul is the one figure they leave alone.
  out['step_in_yardstick_units'] = common.paired_ratio(
      times, 'host_yardstick', first, per_call=(1, built[first].steps_per_call)
  )
  if with_baseline:
    out['baseline'] = summary(
        'baseline',
        times,
        steps_per_call=1,
        batch=baseline_batch,
        flops_per_step=baseline.flops,
        compile_seconds=baseline.compile_seconds,
        peak_flops=peak_flops,
    )
  return out


def ratio_text(ratio: dict | None) -> str:
  return f"x{ratio['median']:.2f} [{ratio['q25']:.2f}-{ratio['q75']:.2f}]" if ratio else '-'


def describe(result: dict) -> str:
  first = result['variants'][0]['variant']
  lines = [
      f"{result['model']} batch {result['batch']}"
      f" {result['dtype']}{' remat' if result['remat'] else ''} on {result['devices']} device(s);"
      f" matmul peak {result['peak_gflops']:.0f} GFLOP/s; load {result['machine']['load_average']}"
  ]
  for r in result['variants'] + ([result['baseline']] if 'baseline' in result else []):
    lines.append(
        f"  {r['variant']:<26} {r['step_seconds'] * 1e3:8.1f} ms/step {r['images_per_second']:6.1f}"
        f" img/s {r.get('achieved_gflops', 0):6.1f} GFLOP/s"
        f" {100 * r.get('fraction_of_peak', 0):5.1f}% of peak  vs baseline"
        f" {ratio_text(r.get('ratio_to_baseline')):<18} vs {first}"
        f" {ratio_text(r.get(f'ratio_to_{first}')):<18} compile {r['compile_seconds']:.1f} s"
    )
  return '\n'.join(lines)


def ensure_devices(count: int | None, module: str) -> None:
  """Re-executes `python -m module` with `count` simulated CPU devices.

  The flag must precede jax's start.
  """
  flag = f'--xla_force_host_platform_device_count={count}'
  if count and flag not in os.environ.get('XLA_FLAGS', ''):
    os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {flag}".strip()
    os.execv(sys.executable, [sys.executable, '-m', module, *sys.argv[1:]])


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--model', default='resnet20')
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--dtype', default='float32', choices=('float32', 'bfloat16'))
  parser.add_argument('--remat', action='store_true')
  parser.add_argument('--image_size', type=int, default=224, help='ImageNet presets only')
  parser.add_argument(
      '--devices', type=int, help='simulated CPU devices (re-executes with XLA_FLAGS)'
  )
  parser.add_argument('--variants', default='product', help='comma-separated, see above')
  parser.add_argument('--rounds', type=int, default=8)
  parser.add_argument('--steps', type=int, default=1, help='timed calls per variant per round')
  parser.add_argument('--no_baseline', action='store_true')
  parser.add_argument('--baseline_batch', type=int, default=128)
  parser.add_argument(
      '--peak_size',
      type=int,
      default=4096,
      help='side of the float32 matmul that measures the peak',
  )
  parser.add_argument('--json')
  args = parser.parse_args()
  ensure_devices(args.devices, 'benchmarks.train_step')
  result = measure(
      args.model,
      batch=args.batch,
      variants=args.variants.split(','),
      dtype=args.dtype,
      remat=args.remat,
      image_size=args.image_size,
      rounds=args.rounds,
      steps=args.steps,
      with_baseline=not args.no_baseline,
      baseline_batch=args.baseline_batch,
      peak_size=args.peak_size,
  )
  common.emit(result, describe(result), args.json)


if __name__ == '__main__':
  main()
