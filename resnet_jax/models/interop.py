"""Our variables <-> the PyTorch reference implementations' state dicts, name by name.

ImageNet family (`stem='imagenet'`): torchvision's `resnet.py` names, which timm's ResNets share:
`conv1`, `bn1`, `layer{s}.{b}.conv{i}` / `.bn{i}`, `layer{s}.{b}.downsample.{0,1}`, `fc`.
CIFAR family (`stem='cifar'`): the names of the CIFAR reference, akamaster/pytorch_resnet_cifar10's
`resnet.py`: the same scheme with `shortcut.{0,1}` for projections and `linear` for the classifier.
Pre-activation nets follow the same scheme (`bn{i}` is the norm before `conv{i}`, `final_bn` the one
before the pooling); no PyTorch reference exists to load them into.

Option A differs by a relabelling only: we (like the paper's Torch code) append the zero channels
after the identity channels; the CIFAR reference puts a quarter of them before and a quarter after.
The CIFAR layout therefore permutes each stage's channels, so that a net exported here computes the
same function in the reference's unmodified code, and an imported one here.
"""

import re
from typing import Any, Mapping

import jax
import numpy as np

from resnet_jax import models
from resnet_jax.common.errors import UserError

LAYOUTS = {'imagenet': 'torchvision', 'cifar': 'cifar_reference'}
_LEAF_NAMES = {
    'kernel': 'weight',
    'scale': 'weight',
    'bias': 'bias',
    'mean': 'running_mean',
    'var': 'running_var',
}
_BLOCK = re.compile(r'^stage(\d+)_block(\d+)$')


class StateDictMismatchError(UserError):
  """A state dict that does not fit the network it is read into."""


def layout(model: models.ResNet) -> str:
  return LAYOUTS[model.stem]


# ----------------------------------------------------------------------------- scanned blocks


def unrolled(tree: Mapping[str, Any]) -> dict[str, Any]:
  """Variables of a `scan_blocks` model in the unrolled model's layout (stage<s>_block<i> each)."""
  tree = dict(tree)
  for name in [n for n in tree if n.endswith('_scan')]:
    stacked = tree.pop(name)['block']
    for index in range(jax.tree.leaves(stacked)[0].shape[0]):
      tree[f"{name.removesuffix('_scan')}_block{index + 2}"] = jax.tree.map(
          lambda x, i=index: _index(x, i), stacked
      )
  return tree


def _index(x, i: int):
  if isinstance(x, jax.ShapeDtypeStruct):
    return jax.ShapeDtypeStruct(x.shape[1:], x.dtype)
  return x[i]


def scanned(tree: Mapping[str, Any], stage_sizes) -> dict[str, Any]:
  """The inverse of `unrolled`: blocks 2..n of each stage stacked under stage<s>_scan/block."""
  tree = dict(tree)
  for stage, count in enumerate(stage_sizes, start=1):
    blocks = [tree.pop(f'stage{stage}_block{i}') for i in range(2, count + 1)]
    if blocks:
      tree[f'stage{stage}_scan'] = {'block': jax.tree.map(lambda *xs: np.stack(xs), *blocks)}
  return tree


# ----------------------------------------------------------------------------- the name table


def _stream_permutations(model: models.ResNet) -> dict[str, np.ndarray]:
  """Reference channel of each of our channels, for the residual stream after each block
  ('stem', 'stage1_block1', ...). Identity except after option-A blocks in the CIFAR layout."""
  expansion = 4 if model.block == 'bottleneck' else 1
  width = model.stage_widths[0]
  permutation = np.arange(width)
  permutations = {'stem': permutation}
  option_a = models.SHORTCUTS[model.shortcut] == 'identity' and layout(model) == 'cifar_reference'
  for stage, (count, filters) in enumerate(zip(model.stage_sizes, model.stage_widths), start=1):
    for index in range(1, count + 1):
      out = filters * expansion
      if option_a and width != out:
        # the reference: F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, planes // 4, planes // 4))
        before = out // 4
        if out != 2 * width:
          raise UserError(
              f'the CIFAR reference layout pads option A by a quarter on each side; {width} -> '
              f'{out} channels cannot be written in it'
          )
        zero_slots = [c for c in range(out) if not before <= c < before + width]
        permutation = np.concatenate([before + permutation, zero_slots])
      elif width != out:
        permutation = np.arange(out)  # a projection (or a plain net's conv) makes new channels
      permutations[f'stage{stage}_block{index}'] = permutation
      width = out
  return permutations


def _previous_block(name: str, stage_sizes) -> str:
  stage, index = map(int, _BLOCK.match(name).groups())
  if index > 1:
    return f'stage{stage}_block{index - 1}'
  return 'stem' if stage == 1 else f'stage{stage - 1}_block{stage_sizes[stage - 2]}'


def reference_names(
    model: models.ResNet, variables: Mapping[str, Any]
) -> dict[tuple[str, ...], tuple]:
  """{(collection, *path): (reference name, kind, out_permutation, in_permutation)} for every
  variable of `variables` (unrolled layout). kind: 'conv' (HWIO <-> OIHW), 'dense' (IO <-> OI),
  'vector'. A permutation gives the reference channel of each of ours (None: identity)."""
  streams = _stream_permutations(model)
  last_block = f'stage{len(model.stage_sizes)}_block{model.stage_sizes[-1]}'
  is_cifar = layout(model) == 'cifar_reference'
  table = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(dict(variables))[0]:
    keys = tuple(k.key for k in path)
    module, leaf_name = keys[1:-1], keys[-1]  # keys[0] is the collection
    out_perm = in_perm = None
    if module == ('stem_conv',):
      name, kind, out_perm = 'conv1', 'conv', streams['stem']
    elif module == ('stem_bn',):
      name, kind, out_perm = 'bn1', 'vector', streams['stem']
    elif module == ('final_bn',):
      name, kind, out_perm = 'final_bn', 'vector', streams[last_block]
    elif module == ('head',):
      name = 'linear' if is_cifar else 'fc'
      kind = 'dense' if leaf_name == 'kernel' else 'vector'
      in_perm = streams[last_block] if leaf_name == 'kernel' else None
    elif module and _BLOCK.match(module[0]):
      stage, index = map(int, _BLOCK.match(module[0]).groups())
      prefix = f'layer{stage}.{index - 1}'
      block_in, block_out = (
          streams[_previous_block(module[0], model.stage_sizes)],
          streams[module[0]],
      )
      layer, number = module[-1].rsplit('_', 1) if '_' in module[-1] else (module[-1], '')
      num_convs = 3 if model.block == 'bottleneck' else 2
      if module[1:] == ('Shortcut_0', 'projection'):
        name, kind = f"{prefix}.{'shortcut' if is_cifar else 'downsample'}.0", 'conv'
        out_perm, in_perm = block_out, block_in
      elif module[1:] == ('Shortcut_0', 'projection_bn'):
        name, kind, out_perm = (
            f"{prefix}.{'shortcut' if is_cifar else 'downsample'}.1",
            'vector',
            block_out,
        )
      elif layer == 'Conv' and len(module) == 2:
        i = int(number)
        name, kind = f'{prefix}.conv{i + 1}', 'conv'
        in_perm = block_in if i == 0 else None
        out_perm = block_out if i == num_convs - 1 else None
      elif layer == 'BatchNorm' and len(module) == 2:
        i = int(number)
        name, kind = f'{prefix}.bn{i + 1}', 'vector'
        if model.preact:
          out_perm = block_in if i == 0 else None
        else:
          out_perm = block_out if i == num_convs - 1 else None
      else:
        raise ValueError(f'no reference name for {"/".join(keys)}')
    else:
      raise ValueError(f'no reference name for {"/".join(keys)}')
    table[keys] = (f'{name}.{_LEAF_NAMES[leaf_name]}', kind, out_perm, in_perm)
  return table


def _bn_modules(table) -> list[str]:
  return sorted({
      name.rsplit('.', 1)[0]
      for name, kind, _, _ in table.values()
      if name.endswith('.running_mean')
  })


# ----------------------------------------------------------------------------- conversions


def _to_reference_array(x: np.ndarray, kind: str, out_perm, in_perm) -> np.ndarray:
  x = np.asarray(x)
  if kind == 'conv':
    x = x.transpose(3, 2, 0, 1)
  elif kind == 'dense':
    x = x.T
  if out_perm is not None:
    x = np.take(x, np.argsort(out_perm), axis=0)
  if in_perm is not None:
    x = np.take(x, np.argsort(in_perm), axis=1)
  return np.ascontiguousarray(x)


def _from_reference_array(x: np.ndarray, kind: str, out_perm, in_perm) -> np.ndarray:
  x = np.asarray(x)
  if out_perm is not None:
    x = np.take(x, out_perm, axis=0)
  if in_perm is not None:
    x = np.take(x, in_perm, axis=1)
  if kind == 'conv':
    x = x.transpose(2, 3, 1, 0)
  elif kind == 'dense':
    x = x.T
  return np.ascontiguousarray(x)


def _set(tree: dict, keys, value) -> None:
  for key in keys[:-1]:
    tree = tree.setdefault(key, {})
  tree[keys[-1]] = value


def to_state_dict(
    model: models.ResNet, variables: Mapping[str, Any], *, num_batches_tracked: int = 0
) -> dict[str, np.ndarray]:
  """{'params', 'batch_stats'} (either layout) -> the reference's state dict, as numpy arrays.

  Every BatchNorm also gets `num_batches_tracked` (torch keeps it; set to the training step).
  """
  variables = {c: unrolled(jax.device_get(variables[c])) for c in ('params', 'batch_stats')}
  table = reference_names(model, variables)
  state_dict = {}
  for keys, (name, kind, out_perm, in_perm) in table.items():
    leaf = variables
    for key in keys:
      leaf = leaf[key]
    state_dict[name] = _to_reference_array(leaf, kind, out_perm, in_perm)
  for module in _bn_modules(table):
    state_dict[f'{module}.num_batches_tracked'] = np.asarray(num_batches_tracked, np.int64)
  return state_dict


def _listing(names, limit: int = 4) -> str:
  names = sorted(names)
  more = f' (+{len(names) - limit} more)' if len(names) > limit else ''
  return ', '.join(names[:limit]) + more


def from_state_dict(
    model: models.ResNet, state_dict: Mapping[str, Any], like: Mapping[str, Any]
) -> dict[str, Any]:
  """The reference's state dict -> {'params', 'batch_stats'} shaped and laid out as `like` (this
  model's variables or their ShapeDtypeStructs). Every key must be used and every variable filled;
  else a StateDictMismatchError names what does not fit."""
  like_unrolled = {c: unrolled(like[c]) for c in ('params', 'batch_stats')}
  table = reference_names(model, like_unrolled)
  expected = {name for name, _, _, _ in table.values()}
  given = {k for k in state_dict if not k.endswith('.num_batches_tracked')}
  what = f'{layout(model)} {_describe(model)}'
  if given - expected:
    raise StateDictMismatchError(
        f'unexpected keys for a {what}: {_listing(given - expected)}; it holds another architecture'
        ' or depth (see --model)'
    )
  if expected - given:
    raise StateDictMismatchError(f'missing keys for a {what}: {_listing(expected - given)}')
  variables = {}
  for keys, (name, kind, out_perm, in_perm) in table.items():
    target = like_unrolled
    for key in keys:
      target = target[key]
    value = np.asarray(state_dict[name])
    want = _to_reference_array(np.zeros(target.shape, np.int8), kind, None, None).shape
    if value.shape != want:
      raise StateDictMismatchError(f'{name} has shape {tuple(value.shape)}, a {what} needs {want}')
    _set(
        variables, keys, _from_reference_array(value, kind, out_perm, in_perm).astype(target.dtype)
    )
  if model.scan_blocks:
    variables = {c: scanned(v, model.stage_sizes) for c, v in variables.items()}
  return variables


def _describe(model: models.ResNet) -> str:
  kind = 'pre-activation ' if model.preact else ''
  return (
      f'{kind}{model.block} ResNet with stages {tuple(model.stage_sizes)}, '
      f'{models.SHORTCUTS[model.shortcut]} shortcuts'
  )


# ----------------------------------------------------------------------------- which preset


def detect(state_dict: Mapping[str, Any]) -> tuple[str, int]:
  """(preset name, number of classes) of a reference state dict, from its keys and shapes.

  The CIFAR reference's option-A nets have no shortcut parameters, so a plain twin reads as a
  ResNet; say `--model plain56` to read it as one.
  """
  keys = set(state_dict)
  head = 'fc' if 'fc.weight' in keys else 'linear' if 'linear.weight' in keys else None
  if head is None or 'conv1.weight' not in keys:
    found = _listing(keys) if keys else 'nothing'
    raise StateDictMismatchError(
        'not a ResNet state dict of torchvision/timm or the CIFAR reference (no conv1.weight and '
        f'fc.weight or linear.weight; found {found})'
    )
  num_classes = int(np.shape(state_dict[f'{head}.weight'])[0])
  blocks = {}
  for key in keys:
    match = re.match(r'^layer(\d+)\.(\d+)\.', key)
    if match:
      blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
  stage_sizes = tuple(len(blocks.get(s, ())) for s in range(1, max(blocks, default=0) + 1))
  bottleneck = any('.conv3.' in k for k in keys)
  preact = 'final_bn.weight' in keys
  family = 'preact_resnet' if preact else 'resnet'
  if head == 'fc':
    for depth, (block, sizes) in models.IMAGENET_STAGES.items():
      if sizes == stage_sizes and (block == 'bottleneck') == bottleneck:
        has_projection = any('.downsample.' in k for k in keys)
        return (family if has_projection else 'plain') + str(depth), num_classes
  elif len(stage_sizes) == 3 and len(set(stage_sizes)) == 1 and not bottleneck:
    return f'{family}{6 * stage_sizes[0] + 2}', num_classes
  kind = 'bottleneck' if bottleneck else 'basic'
  raise StateDictMismatchError(
      f'no preset has {kind} blocks in stages {stage_sizes} with a {head!r} classifier; the presets'
      ' are ResNet-18/34/50/101/152 (torchvision layout) and CIFAR ResNets with 3 equal stages'
  )
