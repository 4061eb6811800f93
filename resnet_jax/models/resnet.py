"""The ResNet model zoo of He et al. 2015 and 2016, with the plain twins the paper compares against.

Two families share one `ResNet` module:
  * CIFAR (paper section 4.2): 3x3 stem with 16 filters, three stages of n blocks on 32/16/8 maps
    with 16/32/64 filters, depth 6n+2, option-A (identity) shortcuts.
  * ImageNet (paper Table 1): 7x7/2 stem + 3x3/2 max-pool, four stages at 64..512 filters, basic
    blocks for 18/34 and bottlenecks (x4 expansion) for 50/101/152, option-B (projection) shortcuts.

A plain twin is the same network with `shortcut='none'`; pre-activation (He et al. 2016) is
`preact=True`. Blocks receive `conv` and `norm` as partials so one block serves every dtype,
train/eval mode and BatchNorm axis.
"""

import difflib
import functools
import re
from typing import Any, Callable, Sequence

import flax.linen as nn
import jax.numpy as jnp

from resnet_jax.models.conv import conv_with_matmul_kernel_grad
from resnet_jax.models import onednn_conv
from resnet_jax.common.errors import UserError

ModuleDef = Any

# Paper section 3.3, "Identity vs. Projection Shortcuts": A, B and C, plus no shortcut at all.
SHORTCUTS = {
    'identity': 'identity',  # A: identity; subsample and zero-pad channels where the shape changes.
    'projection': 'projection',  # B: 1x1 projection only where the shape changes.
    'projection_all': 'projection_all',  # C: 1x1 projection on every shortcut.
    'none': 'none',  # the plain network.
    'A': 'identity',
    'B': 'projection',
    'C': 'projection_all',
}

# He init (paper section 3.4 cites [13]), fan_out as in the reference Torch/torchvision code.
conv_kernel_init = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')

# How a convolution's kernel gradient is computed; the forward pass is the same either way.
CONV_KERNEL_GRADS = {
    'xla': None,  # XLA's own (nn.Conv's default): the choice for GPUs and TPUs
    # one matmul of patches: faster on CPUs, more memory (resnet_jax/models/conv.py)
    'matmul': conv_with_matmul_kernel_grad,
}


def reference_padding(kernel_size: Sequence[int]) -> list[tuple[int, int]]:
  """(k-1)//2 on each side of every spatial axis, whatever the stride, as the paper's Torch code,
  torchvision and the CIFAR reference pad. `padding='SAME'` differs where it matters: a 3x3 stride-2
  window on an even-sized map gets (0, 1), so it is centred one pixel away from the pixel the
  shortcut samples (option A's x[::2, ::2], the 1x1/2 projection) and the network is another one."""
  return [((k - 1) // 2, (k - 1) // 2) for k in kernel_size]


def reference_conv(features: int, kernel_size: Sequence[int], **kwargs) -> nn.Conv:
  """nn.Conv with `reference_padding`."""
  return nn.Conv(features, kernel_size, padding=reference_padding(kernel_size), **kwargs)


class Shortcut(nn.Module):
  """The x of y = F(x) + x, reshaped to F(x)'s shape as the chosen option prescribes."""

  filters: int
  strides: int
  kind: str
  conv: ModuleDef
  norm: ModuleDef | None  # None in pre-activation blocks, whose projection sees normalised input.

  @nn.compact
  def __call__(self, x):
    shape_changes = self.strides != 1 or x.shape[-1] != self.filters
    if self.kind == 'projection_all' or (self.kind == 'projection' and shape_changes):
      x = self.conv(self.filters, (1, 1), strides=self.strides, name='projection')(x)
      return self.norm(name='projection_bn')(x) if self.norm else x
    if shape_changes:  # option A: parameter-free.
      x = x[:, :: self.strides, :: self.strides, :]
      extra = self.filters - x.shape[-1]
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, extra)))
    return x


def _squared_norm(x):
  return jnp.sum(jnp.square(x.astype(jnp.float32)))


class Block(nn.Module):
  """What every block is given; subclasses differ only in their layers."""

  filters: int
  strides: int
  shortcut: str  # see SHORTCUTS
  conv: ModuleDef
  norm: ModuleDef
  last_norm: ModuleDef  # the norm before the addition, zero-initialised on request
  stride_in_1x1: bool = False  # bottlenecks only: the paper's v1 stride placement

  def add_shortcut(self, branch, x, shortcut: Shortcut):
    """F(x) + x, or F(x) alone in a plain net. Sows ||F(x)||^2 and ||x||^2 (diagnostics collection;
    squares, so they sum over devices): the paper's claim is that residual branches stay small next
    to the identity."""
    identity = x if self.shortcut == 'none' else shortcut(x)
    if not self.is_initializing():  # variables are {'params', 'batch_stats'}, nothing else
      self.sow('intermediates', 'branch', branch)
      self.sow(
          'diagnostics',
          'squared_norms',
          jnp.stack([_squared_norm(branch), _squared_norm(identity)]),
      )
    return branch if self.shortcut == 'none' else branch + identity


class BasicBlock(Block):
  """Two 3x3 convs (paper Fig. 2 left), post-activation."""

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.filters, (3, 3), strides=self.strides)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.last_norm()(y)
    shortcut = Shortcut(self.filters, self.strides, self.shortcut, self.conv, self.norm)
    return nn.relu(self.add_shortcut(y, x, shortcut))


class BottleneckBlock(Block):
  """1x1 reduce, 3x3, 1x1 expand x4 (paper Fig. 5 right), post-activation.

  The stride sits on the 3x3 ("v1.5", as torchvision and most JAX code) unless `stride_in_1x1`,
  which is the paper's original placement (and its Table 1 FLOPs).
  """

  @nn.compact
  def __call__(self, x):
    stride_1x1, stride_3x3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    y = self.conv(self.filters, (1, 1), strides=stride_1x1)(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3), strides=stride_3x3)(y)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters * 4, (1, 1))(y)
    y = self.last_norm()(y)
    shortcut = Shortcut(self.filters * 4, self.strides, self.shortcut, self.conv, self.norm)
    return nn.relu(self.add_shortcut(y, x, shortcut))


class PreActBasicBlock(Block):
  """BN-ReLU-conv twice, added to an untouched identity path (He et al. 2016, Fig. 4e)."""

  @nn.compact
  def __call__(self, x):
    pre = nn.relu(self.norm()(x))
    y = self.conv(self.filters, (3, 3), strides=self.strides)(pre)
    y = nn.relu(self.last_norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    # The projection reads the pre-activated input, as in the 2016 paper's reference code.
    shortcut = Shortcut(self.filters, self.strides, self.shortcut, self.conv, None)
    return self.add_shortcut(y, x if self.shortcut == 'identity' else pre, shortcut)


class PreActBottleneckBlock(Block):
  """Pre-activation bottleneck (He et al. 2016)."""

  @nn.compact
  def __call__(self, x):
    stride_1x1, stride_3x3 = (self.strides, 1) if self.stride_in_1x1 else (1, self.strides)
    pre = nn.relu(self.norm()(x))
    y = self.conv(self.filters, (1, 1), strides=stride_1x1)(pre)
    y = self.conv(self.filters, (3, 3), strides=stride_3x3)(nn.relu(self.norm()(y)))
    y = self.conv(self.filters * 4, (1, 1))(nn.relu(self.last_norm()(y)))
    shortcut = Shortcut(self.filters * 4, self.strides, self.shortcut, self.conv, None)
    return self.add_shortcut(y, x if self.shortcut == 'identity' else pre, shortcut)


class ScanStep(nn.Module):
  """One block as the body of nn.scan: (carry, unused) -> (block(carry), None)."""

  block: Callable[..., nn.Module]  # the block class with every field but the name bound

  @nn.compact
  def __call__(self, x, _):
    return self.block(name='block')(x), None


def scanned_blocks(block: Callable[..., nn.Module], count: int, name: str) -> nn.Module:
  """`count` identical blocks as one jax.lax.scan: XLA compiles the block once, not `count` times.
  Their variables (and sown diagnostics) gain a leading axis of size `count`."""
  scan = nn.scan(
      ScanStep,
      variable_axes={'params': 0, 'batch_stats': 0, 'diagnostics': 0, 'intermediates': 0},
      split_rngs={'params': True},
      length=count,
  )
  return scan(block, name=name)


def block_squared_norms(diagnostics) -> dict[str, Any]:
  """{'stage1_block1': [||F(x)||^2, ||x||^2], ...} from the sown diagnostics collection; scanned
  blocks are unstacked under the names they have unrolled, so both layouts report the same."""
  norms = {}
  for name, values in diagnostics.items():
    if name.endswith('_scan'):
      for index, block_norms in enumerate(values['block']['squared_norms'][0]):
        norms[f"{name.removesuffix('_scan')}_block{index + 2}"] = block_norms
    else:
      norms[name] = values['squared_norms'][0]
  return norms


BLOCKS = {
    ('basic', False): BasicBlock,
    ('bottleneck', False): BottleneckBlock,
    ('basic', True): PreActBasicBlock,
    ('bottleneck', True): PreActBottleneckBlock,
}


class ResNet(nn.Module):
  """A residual (or plain) network; `stem` chooses the CIFAR or the ImageNet layout."""

  stage_sizes: Sequence[int]
  stage_widths: Sequence[int]
  num_classes: int
  block: str = 'basic'  # 'basic' | 'bottleneck'
  stem: str = 'imagenet'  # 'cifar' (3x3, stride 1) | 'imagenet' (7x7/2 + 3x3/2 max-pool)
  shortcut: str = 'projection'  # see SHORTCUTS
  preact: bool = False
  stride_in_1x1: bool = False
  zero_init_residual: bool = False  # zero the scale of each block's last BN (Goyal et al. 2017)
  dtype: Any = jnp.float32  # compute dtype; parameters stay float32
  bn_axis_name: str | None = None  # set under pmap/shard_map to average statistics across devices
  bn_momentum: float = 0.9
  bn_epsilon: float = 1e-5
  remat: bool = False  # recompute block activations in the backward pass to save memory
  conv_kernel_grad: str = 'xla'  # see CONV_KERNEL_GRADS
  # Whose kernels run the convolutions: 'xla' (lax's convolution) or, on a CPU only, 'onednn'
  # (onednn_conv.py: set by the CPU backend, parallelism.cpu_backend, never by a model config).
  kernels: str = 'xla'
  # Blocks 2..n of each stage as one scan (variables `stage<s>_scan`, stacked): compile time and
  # compiler memory stop growing with depth, which ResNet-1202 needs; the same function otherwise.
  # For accelerators: XLA's CPU backend runs a scanned body as a much slower while loop
  # (BENCHMARKS.md, "What each lever changed").
  scan_blocks: bool = False

  @nn.compact
  def __call__(self, x, train: bool = True, score_map: bool = False):
    """Logits [N, classes]; with `score_map`, the classifier applied as a 1x1 convolution at every
    position of the last feature map, [N, h, w, classes]: the fully-convolutional form of the
    paper's multi-scale testing (section 3.4, after [41]), whose spatial average is the logits.
    The last feature map is sown as `intermediates/features`."""
    conv = functools.partial(
        reference_conv,
        use_bias=False,
        dtype=self.dtype,
        kernel_init=conv_kernel_init,
        conv_general_dilated=(
            onednn_conv.conv_general_dilated
            if self.kernels == 'onednn'
            else CONV_KERNEL_GRADS[self.conv_kernel_grad]
        ),
    )
    norm = functools.partial(
        nn.BatchNorm,
        use_running_average=not train,
        momentum=self.bn_momentum,
        epsilon=self.bn_epsilon,
        dtype=self.dtype,
        axis_name=self.bn_axis_name,
    )
    last_norm = (
        functools.partial(norm, scale_init=nn.initializers.zeros)
        if self.zero_init_residual
        else norm
    )
    shortcut = SHORTCUTS[self.shortcut]
    block_cls = BLOCKS[self.block, self.preact]
    if self.remat:
      block_cls = nn.remat(block_cls)

    x = x.astype(self.dtype)
    if self.stem == 'cifar':
      x = conv(self.stage_widths[0], (3, 3), name='stem_conv')(x)
    else:
      x = conv(self.stage_widths[0], (7, 7), strides=2, name='stem_conv')(x)
    if not self.preact:  # pre-activation nets normalise at the start of every block instead.
      x = nn.relu(norm(name='stem_bn')(x))
    if self.stem == 'imagenet':  # max_pool pads with -inf
      x = nn.max_pool(x, (3, 3), strides=(2, 2), padding=reference_padding((3, 3)))

    for stage, (num_blocks, width) in enumerate(zip(self.stage_sizes, self.stage_widths)):
      stage_block = functools.partial(
          block_cls,
          filters=width,
          shortcut=shortcut,
          conv=conv,
          norm=norm,
          last_norm=last_norm,
          stride_in_1x1=self.stride_in_1x1,
      )
      # The first block may change the shape (stride 2, more channels); the rest repeat one shape.
      x = stage_block(strides=2 if stage > 0 else 1, name=f'stage{stage + 1}_block1')(x)
      block = functools.partial(stage_block, strides=1)
      if self.scan_blocks and num_blocks > 1:
        x, _ = scanned_blocks(block, num_blocks - 1, name=f'stage{stage + 1}_scan')(x, None)
      else:
        for index in range(1, num_blocks):
          x = block(name=f'stage{stage + 1}_block{index + 1}')(x)

    if self.preact:
      x = nn.relu(norm(name='final_bn')(x))
    if not self.is_initializing():
      self.sow('intermediates', 'features', x)
    head = nn.Dense(self.num_classes, dtype=self.dtype, name='head')
    # Dense acts on the last axis, so on a feature map it is the 1x1 convolution.
    x = head(x) if score_map else head(jnp.mean(x, axis=(1, 2)))
    # The loss is computed in float32 or wider whatever the compute dtype (bfloat16 -> float32).
    return x.astype(jnp.promote_types(self.dtype, jnp.float32))


# ----------------------------------------------------------------------------- registry

IMAGENET_STAGES = {
    18: ('basic', (2, 2, 2, 2)),
    34: ('basic', (3, 4, 6, 3)),
    50: ('bottleneck', (3, 4, 6, 3)),
    101: ('bottleneck', (3, 4, 23, 3)),
    152: ('bottleneck', (3, 8, 36, 3)),
}
CIFAR_DEPTHS = (20, 32, 44, 56, 110, 1202)  # paper Table 6; any 6n+2 is accepted
_NAME = re.compile(r'^(cifar_)?(resnet|plain|preact_resnet)(\d+)$')


def model_names() -> list[str]:
  """The preset names; CIFAR names also exist for every other 6n+2 depth."""
  names = []
  for kind in ('resnet', 'plain', 'preact_resnet'):
    names += [f'{kind}{d}' for d in CIFAR_DEPTHS] + [f'{kind}{d}' for d in IMAGENET_STAGES]
  return names


def _unknown(name: str, why: str = '') -> UserError:
  close = difflib.get_close_matches(name, model_names(), n=3)
  suggestion = f" (did you mean {' or '.join(map(repr, close))}?)" if close else ''
  return UserError(
      f"unknown model {name!r}{why}{suggestion}; valid names: {', '.join(model_names())}, and "
      'resnet/plain/preact_resnet<6n+2> or cifar_resnet<6n+2> for any other CIFAR depth'
  )


def model_depth(name: str) -> int:
  match = _NAME.match(name)
  if not match:
    raise _unknown(name)
  return int(match.group(3))


def model_spec(name: str) -> dict[str, Any]:
  """The ResNet fields that a preset name stands for."""
  match = _NAME.match(name)
  if not match:
    raise _unknown(name)
  force_cifar, kind, depth = match.group(1), match.group(2), int(match.group(3))
  spec = {'preact': kind == 'preact_resnet'}
  if depth in IMAGENET_STAGES and not force_cifar:
    block, stage_sizes = IMAGENET_STAGES[depth]
    spec.update(
        stage_sizes=stage_sizes,
        stage_widths=(64, 128, 256, 512),
        block=block,
        stem='imagenet',
        shortcut='projection',
    )
  elif depth >= 8 and (depth - 2) % 6 == 0:
    n = (depth - 2) // 6
    spec.update(
        stage_sizes=(n, n, n),
        stage_widths=(16, 32, 64),
        block='basic',
        stem='cifar',
        shortcut='identity',
    )
  else:
    raise _unknown(name, f' (depth {depth} is neither 6n+2 nor one of 18/34/50/101/152)')
  if kind == 'plain':
    spec['shortcut'] = 'none'
  return spec


def create_model(name: str, *, num_classes: int, **overrides) -> ResNet:
  """`create_model('resnet56', num_classes=10, dtype=jnp.bfloat16)` -> a ResNet module.

  Overrides reach every ResNet field: shortcut ('identity'/'projection'/'projection_all'/'none' or
  the paper's 'A'/'B'/'C'), dtype, zero_init_residual, stride_in_1x1 (v1), bn_axis_name, remat...
  """
  spec = model_spec(name)
  unknown = set(overrides) - set(ResNet.__dataclass_fields__) - {'name', 'parent'}
  if unknown:
    raise UserError(
        f'unknown override(s) {sorted(unknown)} for model {name!r}; '
        f'valid: {sorted(f for f in ResNet.__dataclass_fields__ if f not in ("name", "parent"))}'
    )
  if 'shortcut' in overrides and overrides['shortcut'] not in SHORTCUTS:
    raise UserError(f"unknown shortcut {overrides['shortcut']!r}; valid: {', '.join(SHORTCUTS)}")
  if overrides.get('conv_kernel_grad', 'xla') not in CONV_KERNEL_GRADS:
    raise UserError(
        f"unknown conv_kernel_grad {overrides['conv_kernel_grad']!r}; valid:"
        f" {', '.join(CONV_KERNEL_GRADS)}"
    )
  if isinstance(overrides.get('dtype'), str):
    overrides['dtype'] = jnp.dtype(overrides['dtype'])
  return ResNet(num_classes=num_classes, **{**spec, **overrides})
