"""PyTorch's training step for the accelerator benchmark: torchvision's ResNet-50 and the CIFAR
ResNet-20 (benchmarks/pytorch_reference.py), channels_last, float32 or bfloat16 autocast, eager or
torch.compile, on whatever device torch sees (CUDA if there is one).

    python -m benchmarks.torch_step --cases resnet50:224:256:bfloat16:compile,... --json out.json

benchmarks/accelerator.py times these interleaved with the JAX steps when torch imports beside JAX;
with `--torch_python` (a separate environment) it runs this module in that Python instead.
"""

import argparse
import json
import time

import torch
import torch.optim  # pylint: disable=unused-import
from torch.nn import functional as F

from benchmarks.pytorch_reference import ResNet20


def device() -> torch.device:
  return torch.device('cuda' if torch.cuda.is_available() else 'cpu')


class TorchStep:
  """One SGD step (forward, backward, update) per call, synchronised, on one random batch."""

  def __init__(self, model: str, image_size: int, batch: int, dtype: str, compiled: bool):
    import torchvision  # pylint: disable=import-outside-toplevel

    torch.manual_seed(0)
    self.device = device()
    if model == 'resnet50':
      net = torchvision.models.resnet50(num_classes=1000)
    elif model == 'resnet20':
      net = ResNet20(num_classes=10)
    else:
      raise SystemExit(f'no PyTorch twin for {model!r} (resnet50, resnet20)')
    self.model = net.to(self.device, memory_format=torch.channels_last).train()
    self.optimizer = torch.optim.SGD(
        self.model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4
    )
    classes = 1000 if model == 'resnet50' else 10
    self.images = torch.randn(batch, 3, image_size, image_size, device=self.device).contiguous(
        memory_format=torch.channels_last
    )
    self.labels = torch.randint(0, classes, (batch,), device=self.device)
    self.dtype = dtype
    self.forward = torch.compile(self.model) if compiled else self.model

  def __call__(self):
    self.optimizer.zero_grad(set_to_none=True)
    with torch.autocast(self.device.type, torch.bfloat16, enabled=self.dtype == 'bfloat16'):
      loss = F.cross_entropy(self.forward(self.images), self.labels)
    loss.backward()
    self.optimizer.step()
    if self.device.type == 'cuda':
      torch.cuda.synchronize()

  def peak_memory_bytes(self) -> int | None:
    return torch.cuda.max_memory_allocated() if self.device.type == 'cuda' else None


def parse_case(spec: str) -> dict:
  """'resnet50:224:256:bfloat16:compile' -> the case's fields."""
  model, size, batch, dtype, mode = spec.split(':')
  return {
      'model': model,
      'image_size': int(size),
      'batch': int(batch),
      'dtype': dtype,
      'compiled': mode == 'compile',
  }


def main():
  parser = argparse.ArgumentParser(description=__doc__)
  parser.add_argument('--cases', required=True, help='comma-separated model:size:batch:dtype:mode')
  parser.add_argument('--warmup', type=int, default=3)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--json', required=True)
  args = parser.parse_args()
  results = []
  for spec in args.cases.split(','):
    case = parse_case(spec)
    start = time.perf_counter()
    step = TorchStep(**case)
    for _ in range(args.warmup):
      step()
    warmup_seconds = time.perf_counter() - start
    times = []
    for _ in range(args.steps):
      start = time.perf_counter()
      step()
      times.append(time.perf_counter() - start)
    seconds = sorted(times)[len(times) // 2]
    results.append({
        'case': spec,
        **case,
        'step_seconds': seconds,
        'images_per_second': case['batch'] / seconds,
        'warmup_seconds': warmup_seconds,
        'peak_memory_bytes': step.peak_memory_bytes(),
    })
    print(f'  torch {spec}: {case["batch"] / seconds:.1f} images/s', flush=True)
    del step
  with open(args.json, 'w') as f:
    json.dump({'torch': torch.__version__, 'device': str(device()), 'results': results}, f)


if __name__ == '__main__':
  main()
