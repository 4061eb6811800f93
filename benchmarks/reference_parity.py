"""Our networks vs implementations nobody here wrote: torchvision's ResNets and the CIFAR reference.

    make parity        # creates .venv-torch (PyTorch, torchvision, jax, flax) once, then runs this
    .venv-torch/bin/python -m benchmarks.reference_parity [--models resnet18,resnet20] [--out FILE]

PyTorch is never a dependency of the project: this runs from a side environment. For every model the
PyTorch net gets random weights, random BatchNorm affine parameters and running statistics gathered
from random batches; resnet_jax.models.interop maps them onto our variables, and the two are
compared on
random images:
  * eval mode (running statistics), float32 and float64: max |ours - theirs| / max |theirs| over
    the logits, and whether the top class agrees;
  * train mode (batch statistics): the logits in float32 and float64, and the updated running
    averages. torch updates running_var with the unbiased batch variance (x n/(n-1), n = N*H*W at
    that layer), flax with the biased one: the table shows the raw difference and the one left
    after undoing that factor;
  * weights out: ours (the imported ones x 1.01) exported with the reference's names and loaded
    with load_state_dict(strict=True) into a fresh reference net: its eval logits against ours;
  * eval mode with padding='SAME' everywhere (this project before it padded as the references do):
    the size of the difference the padding convention makes.

    .venv-torch/bin/python -m benchmarks.reference_parity --write_reference tests/data

writes the small reference outputs the ordinary suite checks without PyTorch
(tests/test_reference_outputs.py; `make parity` rewrites them): see `write_reference`.

References: torchvision.models.resnet18..152 (v1.5: stride on the 3x3); timm's resnet50 when timm is
importable (the layout of its resnet50.* weights); the same ResNet-50 with the
stride moved to the first 1x1 (the paper's v1, our stride_in_1x1=True); torchvision's ResNet-34
without its additions (our plain34); the CIFAR reference (akamaster/pytorch_resnet_cifar10
`resnet.py`, written out below from its definition: option A pads zero channels on both sides,
option B projects) for ResNet-20/56/110, its option B ResNet-20 and its plain twin.
"""

import argparse
import copy
import functools
import json
import os
import sys
import time
import types

try:  # before JAX: torch's set-up must not follow XLA's
  import torch
  import torchvision
  from torch import nn
  from torch.nn import functional as F
except ImportError:
  sys.exit(
      'error: PyTorch and torchvision are not importable here; run `make parity`, which creates '
      '.venv-torch with them, or use an environment that has both'
  )

try:  # optional: timm's ResNet-50 (the layout of its resnet50.a1_in1k, .tv_in1k, ... weights)
  import timm
except ImportError:
  timm = None

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
import safetensors  # pylint: disable=wrong-import-position
import safetensors.numpy  # pylint: disable=wrong-import-position

from resnet_jax.models import interop, stats as model_stats  # pylint: disable=wrong-import-position
from resnet_jax import models  # pylint: disable=wrong-import-position
from tests import reference_weights  # pylint: disable=wrong-import-position

jax.config.update('jax_enable_x64', True)  # for the float64 column; float32 runs stay float32

# ----------------------------------------------------------------------------- the CIFAR reference


class LambdaLayer(nn.Module):

  def __init__(self, function):
    super().__init__()
    self.function = function

  def forward(self, x):
    return self.function(x)


class CifarBlock(nn.Module):
  """akamaster/pytorch_resnet_cifar10 BasicBlock; `add=False` gives the plain twin."""

  def __init__(self, in_planes: int, planes: int, stride: int, option: str, add: bool = True):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.add = add
    self.shortcut = nn.Sequential()
    if stride != 1 or in_planes != planes:
      if option == 'A':  # parameter-free: a quarter of the new channels before x, a quarter after
        self.shortcut = LambdaLayer(
            lambda x: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
        )
      else:
        self.shortcut = nn.Sequential(
            nn.Conv2d(in_planes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
        )

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    if self.add:
      out = out + self.shortcut(x)
    return F.relu(out)


class CifarResNet(nn.Module):
  """akamaster/pytorch_resnet_cifar10 ResNet (3x3/16 stem, stages of 16/32/64, avg pool, linear)."""

  def __init__(self, n: int, option: str = 'A', add: bool = True, num_classes: int = 10):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 16, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(16)
    layers, in_planes = [], 16
    for planes, stride in ((16, 1), (32, 2), (64, 2)):
      blocks = []
      for s in [stride] + [1] * (n - 1):
        blocks.append(CifarBlock(in_planes, planes, s, option, add))
        in_planes = planes
      layers.append(nn.Sequential(*blocks))
    self.layer1, self.layer2, self.layer3 = layers
    self.linear = nn.Linear(64, num_classes)

  def forward(self, x):
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.layer3(self.layer2(self.layer1(out)))
    out = F.avg_pool2d(out, out.size()[3]).flatten(1)
    return self.linear(out)


# ----------------------------------------------------------------------------- torchvision variants


def _stride_in_1x1(net):
  """torchvision's v1.5 bottlenecks turned into the paper's v1: the stride on the first 1x1."""
  for module in net.modules():
    if isinstance(module, torchvision.models.resnet.Bottleneck) and module.conv2.stride != (1, 1):
      module.conv1.stride, module.conv2.stride = module.conv2.stride, (1, 1)
  return net


def _without_additions(net):
  """torchvision's ResNet-18/34 with every identity addition removed: the plain twin."""

  def forward(block, x):
    out = block.relu(block.bn1(block.conv1(x)))
    return block.relu(block.bn2(block.conv2(out)))

  for module in net.modules():
    if isinstance(module, torchvision.models.resnet.BasicBlock):
      module.forward = types.MethodType(forward, module)
      module.downsample = None
  return net


# (our preset, our overrides, the PyTorch net, input size)
CASES = {
    'resnet18': ('resnet18', {}, lambda: torchvision.models.resnet18(), 224),
    'resnet34': ('resnet34', {}, lambda: torchvision.models.resnet34(), 224),
    'resnet50': ('resnet50', {}, lambda: torchvision.models.resnet50(), 224),
    'resnet101': ('resnet101', {}, lambda: torchvision.models.resnet101(), 224),
    'resnet152': ('resnet152', {}, lambda: torchvision.models.resnet152(), 224),
    'resnet50_v1': (
        'resnet50',
        {'stride_in_1x1': True},
        lambda: _stride_in_1x1(torchvision.models.resnet50()),
        224,
    ),
    'plain34': ('plain34', {}, lambda: _without_additions(torchvision.models.resnet34()), 224),
    'resnet20': ('resnet20', {}, lambda: CifarResNet(3), 32),
    'resnet56': ('resnet56', {}, lambda: CifarResNet(9), 32),
    'resnet110': ('resnet110', {}, lambda: CifarResNet(18), 32),
    'resnet20_scan': ('resnet20', {'scan_blocks': True}, lambda: CifarResNet(3), 32),
    'resnet20_optionB': ('resnet20', {'shortcut': 'projection'}, lambda: CifarResNet(3, 'B'), 32),
    'plain20': ('plain20', {}, lambda: CifarResNet(3, add=False), 32),
}
REFERENCE = {
    **{k: 'torchvision' for k in CASES if CASES[k][3] == 224},
    **{k: 'CIFAR reference' for k in CASES if CASES[k][3] == 32},
}
if timm is not None:
  CASES['timm_resnet50'] = ('resnet50', {}, lambda: timm.create_model('resnet50'), 224)
  REFERENCE['timm_resnet50'] = f'timm {timm.__version__}'


def randomise(net: nn.Module, image_size: int, seed: int) -> None:
  """Random BN affine parameters, then running statistics from a few random train-mode batches."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for module in net.modules():
      if isinstance(module, nn.BatchNorm2d):
        module.weight.copy_(torch.rand(module.weight.shape, generator=generator) + 0.5)
        module.bias.copy_(torch.randn(module.bias.shape, generator=generator) * 0.1)
    net.train()
    for _ in range(3):
      net(torch.randn(4, 3, image_size, image_size, generator=generator))


def relative(ours, theirs) -> float:
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def torch_batch_stats(net) -> dict[str, np.ndarray]:
  return {
      k: v.double().numpy().copy()
      for k, v in net.state_dict().items()
      if k.endswith(('running_mean', 'running_var'))
  }


def train_forward(net, images) -> tuple[np.ndarray, dict[str, int]]:
  """(train-mode logits, values each BatchNorm normalised over: N*H*W), updating the running
  statistics as torch does."""
  counts = {}
  hooks = [
      m.register_forward_hook(
          lambda m, i, o, name=name: counts.__setitem__(name, i[0][:, 0].numel())
      )
      for name, m in net.named_modules()
      if isinstance(m, nn.BatchNorm2d)
  ]
  net.train()
  with torch.no_grad():
    logits = net(images).numpy()
  for hook in hooks:
    hook.remove()
  return logits, counts


def compare(case: str, batch: int, seed: int) -> dict:
  preset, overrides, make_reference, size = CASES[case]
  torch.manual_seed(seed)
  reference = make_reference()
  randomise(reference, size, seed)
  model = models.create_model(preset, num_classes=1000 if size == 224 else 10, **overrides)
  like = model_stats.abstract_variables(model, (size, size, 3))
  state_dict = {k: v.numpy() for k, v in reference.state_dict().items()}
  variables = interop.from_state_dict(model, state_dict, like)
  images = np.random.default_rng(seed).standard_normal((batch, size, size, 3), np.float32)
  images_torch = torch.from_numpy(images.transpose(0, 3, 1, 2).copy())
  result = {
      'model': case,
      'reference': REFERENCE[case],
      'params': int(sum(p.numel() for p in reference.parameters())),
  }

  def ours(dtype, x, train=False, apply_model=model):
    cast = jax.tree.map(lambda v: jnp.asarray(v, dtype), variables)
    run = functools.partial(
        apply_model.clone(dtype=dtype).apply, cast, jnp.asarray(x, dtype), train=train
    )
    return run(mutable=['batch_stats']) if train else (run(), None)

  # Eval mode, float32 and float64.
  reference.eval()
  with torch.no_grad():
    theirs32 = reference(images_torch).numpy()
    theirs64 = reference.double()(images_torch.double()).numpy()
  reference.float()
  ours32, _ = ours(jnp.float32, images)
  ours64, _ = ours(jnp.float64, images.astype(np.float64))
  result.update(
      eval_f32=relative(ours32, theirs32),
      eval_f64=relative(ours64, theirs64),
      top1_agrees=bool((np.argmax(ours32, -1) == np.argmax(theirs32, -1)).all()),
  )

  # Train mode: batch statistics, and the running averages they update. In float64 first, on a copy
  # (a train-mode forward moves the running averages): deep nets amplify float32 round-off here.
  reference_64 = copy.deepcopy(reference).double().train()
  with torch.no_grad():
    theirs_train64 = reference_64(images_torch.double()).numpy()
  ours_train64, _ = ours(jnp.float64, images.astype(np.float64), train=True)
  old = torch_batch_stats(reference)
  theirs_train, counts = train_forward(reference, images_torch)
  new = torch_batch_stats(reference)
  ours_train, updated = ours(jnp.float32, images, train=True)
  ours_new = interop.to_state_dict(model, {'params': variables['params'], **updated})
  mean_keys = [k for k in new if k.endswith('running_mean')]
  var_keys = [k for k in new if k.endswith('running_var')]
  momentum = 0.1  # torch's; flax's 0.9 is 1 - this
  raw = max(relative(ours_new[k], new[k]) for k in var_keys)

  def biased(key):  # torch's update with the biased batch variance, as flax computes it
    n = counts[key.rsplit('.', 1)[0]]
    batch_var_unbiased = (new[key] - (1 - momentum) * old[key]) / momentum
    return (1 - momentum) * old[key] + momentum * batch_var_unbiased * (n - 1) / n

  result.update(
      train_logits_f32=relative(ours_train, theirs_train),
      train_logits_f64=relative(ours_train64, theirs_train64),
      running_mean_f32=max(relative(ours_new[k], new[k]) for k in mean_keys),
      running_var_raw_f32=raw,
      running_var_unbiased_corrected_f32=max(relative(ours_new[k], biased(k)) for k in var_keys),
      smallest_bn_count=int(min(counts.values())),
  )

  # Weights out: ours (scaled, so not the source's), exported with the reference's names, loaded
  # strictly into a fresh reference net, which must compute what ours computes.
  scaled = {**variables, 'params': jax.tree.map(lambda p: p * 1.01, variables['params'])}
  exported = make_reference()
  exported.load_state_dict(
      {k: torch.from_numpy(np.asarray(v)) for k, v in interop.to_state_dict(model, scaled).items()},
      strict=True,
  )
  exported.eval()
  with torch.no_grad():
    theirs_exported = exported(images_torch).numpy()
  ours_exported = model.apply(scaled, jnp.asarray(images), train=False)
  result.update(export_eval_f32=relative(ours_exported, theirs_exported))

  # The same weights with padding='SAME' (the convention this project had before).
  same = models.resnet.reference_padding  # what the blocks call
  models.resnet.reference_padding = lambda kernel_size: 'SAME'
  try:
    ours_same, _ = ours(jnp.float32, images)
  finally:
    models.resnet.reference_padding = same
  result.update(
      eval_f32_padding_same=relative(ours_same, theirs32),
      top1_agrees_padding_same=bool((np.argmax(ours_same, -1) == np.argmax(theirs32, -1)).all()),
  )
  return result


# ----------------------------------------------------------------------------- committed outputs

# file tests/data/reference_<name>.safetensors: (key -> shape table in
# tests/data/reference_state_dicts.json, the PyTorch net, batch, image size, whether the file holds
# the state dict itself). ResNet-20's (0.27M parameters, 1.1 MB) is stored; torchvision's ResNet-18
# and -50 state dicts (47 MB and 100 MB) are too big to commit, so the suite draws them again from
# the seed with tests/reference_weights.py, and the files hold their checksums.
WRITTEN = {
    'resnet18': (
        'torchvision.models.resnet18',
        lambda: torchvision.models.resnet18(),
        2,
        64,
        False,
    ),
    'resnet50': (
        'torchvision.models.resnet50',
        lambda: torchvision.models.resnet50(),
        2,
        64,
        False,
    ),
    'resnet20': ('CIFAR reference resnet20 (option A)', lambda: CifarResNet(3), 4, 32, True),
}
TABLES = 'tests/data/reference_state_dicts.json'


def write_reference(directory: str, seed: int) -> None:
  """reference_<name>.safetensors for every net of WRITTEN, computed by PyTorch alone: weights drawn
  in torch's layout (reference_weights.generate over torch's key -> shape table) and loaded with
  load_state_dict(strict=True); the tensors

    input              the batch, float32 NCHW (torch's layout)
    eval_logits        eval mode (running statistics)
    train_logits       train mode (batch statistics), from the same starting weights
    updated.<bn>.running_mean, updated.<bn>.running_var
                       after that one train-mode forward (momentum 0.1; torch's running_var
                       takes the unbiased batch variance, x n/(n-1))
    count.<bn>         n: the values per channel that BatchNorm saw (N*H*W), to undo that factor
    state_dict.<key>   (ResNet-20 only) the state dict itself

  and metadata: the table (JSON), the seed, the state dict's checksum, the versions, the command."""
  with open(TABLES) as f:
    tables = json.load(f)['models']
  for name, (table_name, make_reference, batch, size, store) in WRITTEN.items():
    table = tables[table_name]
    state_dict = reference_weights.generate(table, seed)
    checksum = reference_weights.checksum(state_dict)
    net = make_reference()
    own = [(k, list(v.shape)) for k, v in net.state_dict().items()]
    if own != [(k, list(v)) for k, v in table.items()]:
      sys.exit(f'error: {table_name} no longer has the key -> shape table of {TABLES}')
    net.load_state_dict({k: torch.from_numpy(v) for k, v in state_dict.items()}, strict=True)
    images = np.random.RandomState(seed + 1).standard_normal((batch, 3, size, size))
    images = images.astype(np.float32)
    record = {'input': images}
    net.eval()
    with torch.no_grad():
      record['eval_logits'] = net(torch.from_numpy(images)).numpy()
    record['train_logits'], counts = train_forward(net, torch.from_numpy(images))
    for key, value in net.state_dict().items():
      if key.endswith(('running_mean', 'running_var')):
        record[f'updated.{key}'] = value.numpy().copy()
    record.update({f'count.{k}': np.asarray(n, np.int64) for k, n in counts.items()})
    if store:
      record.update({f'state_dict.{k}': v for k, v in state_dict.items()})
    metadata = {
        'reference': table_name,
        'table': json.dumps(table),
        'seed': str(seed),
        'momentum': '0.1',
        **{f'state_dict_{k}': v for k, v in checksum.items()},
        'torch': torch.__version__,
        'torchvision': torchvision.__version__,
        'numpy': np.__version__,
        'command': f'python -m benchmarks.reference_parity --write_reference {directory}',
    }
    path = f'{directory}/reference_{name}.safetensors'
    if _holds(path, record, metadata):  # safetensors orders the metadata anew on every write
      print(f'{path} unchanged')
      continue
    safetensors.numpy.save_file(record, path, metadata=metadata)
    print(f'wrote {path}: {table_name}, batch {batch} at {size} px, state dict {checksum}')


def _holds(path: str, record: dict[str, np.ndarray], metadata: dict[str, str]) -> bool:
  """Whether the file at `path` holds exactly these tensors and this metadata."""
  if not os.path.exists(path):
    return False
  with safetensors.safe_open(path, 'numpy') as f:
    if f.metadata() != metadata or set(f.keys()) != set(record):
      return False
    return all(
        f.get_tensor(k).dtype == v.dtype and np.array_equal(f.get_tensor(k), v)
        for k, v in record.items()
    )


def markdown(results: list[dict]) -> str:
  lines = [
      (
          '| model | reference | eval f32 | eval f64 | top-1 agrees | train logits f32 / f64 |'
          ' running mean | running var raw / corrected | exported, eval f32 |'
          ' eval f32 with padding=SAME |'
      ),
      '|---|---|---:|---:|---|---:|---:|---:|---:|---:|',
  ]
  for r in results:
    lines.append(
        f"| {r['model']} | {r['reference']} | {r['eval_f32']:.1e} | {r['eval_f64']:.1e} |"
        f" {'yes' if r['top1_agrees'] else 'NO'} | {r['train_logits_f32']:.1e} /"
        f" {r['train_logits_f64']:.1e} | {r['running_mean_f32']:.1e} |"
        f" {r['running_var_raw_f32']:.1e} / {r['running_var_unbiased_corrected_f32']:.1e} |"
        f" {r['export_eval_f32']:.1e} |"
        f" {r['eval_f32_padding_same']:.2f} (top-1"
        f" {'same' if r['top1_agrees_padding_same'] else 'differs'}) |"
    )
  return '\n'.join(lines)


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument(
      '--models', default=','.join(CASES), help=f'comma-separated, of: {", ".join(CASES)}'
  )
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument(
      '--tolerance', type=float, default=1e-5, help='goal for the float32 eval column'
  )
  parser.add_argument('--out', default='benchmarks/reference_parity.json')
  parser.add_argument(
      '--markdown_only', action='store_true', help="print the table of --out's results"
  )
  parser.add_argument(
      '--write_reference',
      metavar='DIR',
      help='only write the reference outputs the ordinary suite checks (tests/data) into DIR',
  )
  args = parser.parse_args()
  if args.write_reference:
    torch.set_flush_denormal(True)
    write_reference(args.write_reference, args.seed)
    return
  if args.markdown_only:
    with open(args.out) as f:
      print(markdown(json.load(f)['results']))
    return
  unknown = [m for m in args.models.split(',') if m not in CASES]
  if unknown:
    sys.exit(f'error: unknown model(s) {unknown}; choose from {", ".join(CASES)}')
  torch.set_flush_denormal(True)
  results = []
  for case in args.models.split(','):
    start = time.perf_counter()
    results.append(compare(case, args.batch, args.seed))
    print(f'{case}: {json.dumps(results[-1])} ({time.perf_counter() - start:.0f} s)', flush=True)
  environment = {
      'torch': torch.__version__,
      'torchvision': torchvision.__version__,
      'jax': jax.__version__,
      'timm': timm.__version__ if timm else None,
      'date': time.strftime('%Y-%m-%d'),
      'batch': args.batch,
      'seed': args.seed,
  }
  with open(args.out, 'w') as f:
    json.dump({'environment': environment, 'results': results}, f, indent=1)
  print(markdown(results))
  failed = [r['model'] for r in results if r['eval_f32'] > args.tolerance or not r['top1_agrees']]
  if failed:
    sys.exit(
        f'error: {", ".join(failed)} differ from the reference by more than {args.tolerance:g} in'
        ' eval'
    )


if __name__ == '__main__':
  main()
