"""PyTorch's CPU ResNet-20 step, side by side with the plain Flax baseline and the project's step.

    PYTHONPATH=/path/to/torch python -m benchmarks.pytorch_reference [--devices 8] [--json out.json]
        [--variants devices1,devices8,devices1+matmul_grad,devices2+xla:OPTION=VALUE]

PyTorch is not a dependency of this project: install a CPU build anywhere and put it on the path,
e.g. `pip install --target /tmp/torchlib torch --index-url https://download.pytorch.org/whl/cpu`.
In one process, interleaved round by round: the same ResNet-20 (option-A shortcuts, SGD momentum
0.9, weight decay 1e-4, batch 128, float32) in PyTorch with channels_last memory format (its fast
CPU layout), the plain Flax baseline (benchmarks/baseline_resnet20.py), and the project's step as
`resnet_jax.training.loop` builds it, on 1 CPU device and, with --devices N, on N CPU devices
(parallelism.cpu_devices=N). Every figure is also a ratio to PyTorch's, call by call.

--cpu_table times the defaults beside each CPU candidate (1 device on each backend, the split into
8 on XLA's two): the rows of README's and BENCHMARKS.md's CPU tables, with the processor named.

--variants replaces the project's two steps by a list of steps, each '+'-joined levers, all timed in
the same rounds (the process has max(devicesN) CPU devices):
  defaults         what a user who passes no flag gets: the CPU split of parallelism.cpu_devices=0
                   (parallel.auto_cpu_devices) and the backend of parallelism.cpu_backend=auto
                   (cpu_backend.choose: measured on first use, then cached)
  devicesN         the step on the first N CPU devices (parallelism.cpu_devices=N), same batch
  ynnpack, eigen,  parallelism.cpu_backend=NAME (XLA's convolutions on YNNPACK, its default, or
  onednn           on Eigen; or oneDNN's, as custom calls: resnet_jax/models/onednn_conv.py)
  matmul_grad      model.conv_kernel_grad='matmul' (resnet_jax/models/conv.py)
  conv=NAME        model.conv_kernel_grad=NAME (any of models.CONV_KERNEL_GRADS)
  xla:OPTION=VALUE an XLA debug option for this step's compilation only (e.g.
                   xla:xla_cpu_multi_thread_eigen=false), so flags compare within one process
"""

import argparse
import sys
import time

try:  # before TensorFlow and JAX load: imported after them, torch's optimizer set-up crashes
  import torch
  import torch.optim  # pylint: disable=unused-import
  from torch import nn
  from torch.nn import functional as F
except ImportError:
  sys.exit(
      'error: PyTorch is not importable; install a CPU build (pip install --target /tmp/torchlib'
      ' torch --index-url https://download.pytorch.org/whl/cpu) and run with'
      ' PYTHONPATH=/tmp/torchlib'
  )

# The JAX side is imported where it is used: benchmarks/torch_step.py borrows ResNet20 in an
# environment that has torch but not the whole project.


class Block(nn.Module):

  def __init__(self, cin: int, cout: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(cout)
    self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(cout)
    self.stride, self.extra = stride, cout - cin

  def forward(self, x):
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    if self.stride != 1 or self.extra:  # option A: subsample, zero-pad channels
      x = F.pad(x[:, :, :: self.stride, :: self.stride], (0, 0, 0, 0, 0, self.extra))
    return F.relu(x + y)


class ResNet20(nn.Module):

  def __init__(self, num_classes: int = 10):
    super().__init__()
    self.stem = nn.Sequential(nn.Conv2d(3, 16, 3, 1, 1, bias=False), nn.BatchNorm2d(16), nn.ReLU())
    blocks, cin = [], 16
    for stage, cout in enumerate((16, 32, 64)):
      for index in range(3):
        blocks.append(Block(cin, cout, 2 if stage > 0 and index == 0 else 1))
        cin = cout
    self.blocks = nn.Sequential(*blocks)
    self.head = nn.Linear(64, num_classes)

  def forward(self, x):
    return self.head(self.blocks(self.stem(x)).mean((2, 3)))


class TorchRunner:
  """One PyTorch training step per call (forward, backward, SGD update)."""

  def __init__(self, batch_size: int):
    from benchmarks import baseline_resnet20  # pylint: disable=import-outside-toplevel

    torch.manual_seed(0)
    self.model = ResNet20().to(memory_format=torch.channels_last).train()
    self.optimizer = torch.optim.SGD(
        self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4
    )
    batch = baseline_resnet20.random_batch(batch_size)
    self.images = (
        torch.from_numpy(batch['image'])
        .permute(0, 3, 1, 2)
        .contiguous(memory_format=torch.channels_last)
    )
    self.labels = torch.from_numpy(batch['label']).long()

  def __call__(self):
    self.optimizer.zero_grad(set_to_none=True)
    loss = F.cross_entropy(self.model(self.images), self.labels)
    loss.backward()
    self.optimizer.step()


def parse_variant(spec: str, batch: int = 128) -> dict:
  """'devices2+matmul_grad+xla:xla_cpu_multi_thread_eigen=false' -> the levers it names."""
  from resnet_jax.training import cpu_backend, parallel  # pylint: disable=import-outside-toplevel

  variant = {
      'name': spec,
      'devices': 1,
      'conv_kernel_grad': 'xla',
      'compiler_options': {},
      'kernels': 'xla',
  }
  for part in spec.split('+'):
    if part == 'defaults':
      onednn = cpu_backend.onednn_may_run('auto', processes=1, conv_kernel_grad='xla')
      variant['devices'] = parallel.auto_cpu_devices(32, (batch, batch), onednn=onednn)[0]
      variant['compiler_options'] = 'auto'
    elif part in cpu_backend.BACKENDS:
      variant['compiler_options'].update(cpu_backend.BACKENDS[part])
      variant['kernels'] = cpu_backend.kernels(part)
    elif part.startswith('devices') and part[7:].isdigit():
      variant['devices'] = int(part[7:])
    elif part == 'matmul_grad':
      variant['conv_kernel_grad'] = 'matmul'
    elif part.startswith('conv='):
      variant['conv_kernel_grad'] = part[5:]
    elif part.startswith('xla:') and '=' in part:
      option, value = part[4:].split('=', 1)
      variant['compiler_options'][option] = {'true': True, 'false': False}.get(value, value)
    else:
      raise SystemExit(f'unknown lever {part!r} in variant {spec!r}; see --help')
  return variant


def parallel_split(batch: int) -> int:
  from resnet_jax.training import parallel  # pylint: disable=import-outside-toplevel

  return max(parallel.auto_cpu_devices(32, (batch, batch))[0], 2)


def main():
  parser = argparse.ArgumentParser(
      description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument(
      '--devices', type=int, help='also time the project step on this many CPU devices'
  )
  parser.add_argument('--rounds', type=int, default=6)
  parser.add_argument(
      '--variants', help='instead of the product on 1 (and --devices) devices: see above'
  )
  parser.add_argument('--no_baseline', action='store_true', help='skip the plain Flax baseline')
  parser.add_argument(
      '--cpu_table', action='store_true', help='the defaults and each CPU candidate: see above'
  )
  parser.add_argument('--json')
  args = parser.parse_args()
  from benchmarks import baseline_resnet20, common, train_step  # pylint: disable=import-outside-toplevel

  if args.cpu_table:
    split = f'devices{parallel_split(args.batch)}'
    args.variants = (
        f'defaults,devices1+ynnpack,devices1+eigen,devices1+onednn,{split}+ynnpack,{split}+eigen'
    )
  variants = (
      [parse_variant(v, args.batch) for v in args.variants.split(',')] if args.variants else []
  )
  devices = max([args.devices or 0] + [v['devices'] for v in variants])
  train_step.ensure_devices(devices if devices > 1 else None, 'benchmarks.pytorch_reference')
  import jax  # pylint: disable=import-outside-toplevel
  from resnet_jax.training import parallel  # pylint: disable=import-outside-toplevel

  runs = {'pytorch': TorchRunner(args.batch)}
  if not args.no_baseline:
    runs['baseline'] = baseline_resnet20.Runner(args.batch)
  if not variants:
    variants = [dict(parse_variant('devices1'), name='product_1_device')]
    if args.devices:
      variants.append(
          dict(parse_variant(f'devices{args.devices}'), name=f'product_{args.devices}_devices')
      )
  for v in variants:
    config = train_step.config_for(
        'resnet20', batch=args.batch, conv_kernel_grad=v['conv_kernel_grad']
    )
    step = train_step.ProductStep(
        config,
        mesh=parallel.make_mesh(jax.devices()[: v['devices']]),
        compiler_options=v['compiler_options'] or None,
        kernels=v['kernels'],
    )
    if step.backend:  # the defaults: say what they came to
      v['name'] += f" = devices{v['devices']}+{step.backend.name} ({step.backend.how})"
    runs[v['name']] = step
  first = variants[0]['name']
  start = time.perf_counter()
  times = common.interleaved(runs, rounds=args.rounds)
  results = []
  for name in runs:
    r = {'name': name, 'step_seconds': common.median(times[name])}
    r['images_per_second'] = args.batch / r['step_seconds']
    if name != 'pytorch':
      r['ratio_to_pytorch'] = common.paired_ratio(times, name, 'pytorch')
    if name not in ('pytorch', 'baseline', first):
      # Between the project's own steps: the ratio that XLA CPU's load sensitivity leaves alone
      # (PyTorch's OpenMP step slows down far more than XLA's on a busy machine).
      r['ratio_to_first'] = common.paired_ratio(times, name, first)
    results.append(r)
  from resnet_jax.training import cpu_backend  # pylint: disable=import-outside-toplevel

  lines = [
      f'CPU: {cpu_backend.describe_processor()}',
      (
          f'ResNet-20 batch {args.batch} float32, PyTorch {torch.__version__}'
          f' ({torch.get_num_threads()} threads, channels_last) vs JAX {jax.__version__}; load'
          f' {common.load_average()}'
      ),
  ]
  lines += [
      f"  {r['name']:<24} {r['step_seconds'] * 1e3:8.1f} ms/step {r['images_per_second']:6.1f}"
      ' img/s'
      + (
          f"  vs pytorch x{r['ratio_to_pytorch']['median']:.2f}"
          f" [{r['ratio_to_pytorch']['q25']:.2f}-{r['ratio_to_pytorch']['q75']:.2f}]"
          if 'ratio_to_pytorch' in r
          else ''
      )
      + (
          f"  vs {first} x{r['ratio_to_first']['median']:.2f}"
          f" [{r['ratio_to_first']['q25']:.2f}-{r['ratio_to_first']['q75']:.2f}]"
          if 'ratio_to_first' in r
          else ''
      )
      for r in results
  ]
  common.emit(
      {
          'benchmark': 'pytorch_reference',
          'batch': args.batch,
          'torch': torch.__version__,
          'torch_threads': torch.get_num_threads(),
          'results': results,
          'seconds': time.perf_counter() - start,
          'machine': common.machine(),
          'processor': cpu_backend.processor(),
      },
      '\n'.join(lines),
      args.json,
  )


if __name__ == '__main__':
  main()
