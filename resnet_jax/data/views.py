"""The evaluation protocols' views of an image, which the input pipeline makes (tfds_source.py)
and the evaluator scores (training/evaluation.py, whose docstring describes the protocols)."""

import dataclasses

from resnet_jax.common.errors import UserError
from resnet_jax.config.run import EvalSpec

PROTOCOLS = ('center', '10crop', 'multiscale')


def eval_resize(image_size: int) -> int:
  """The shorter side torchvision's ImageNet evaluation resizes to: 256 for 224."""
  return int(round(image_size / 0.875))


def ten_crop_resize(spec: EvalSpec, image_size: int) -> int:
  """The shorter side 10crop resizes to: `resize`, or eval_resize's."""
  return spec.resize or eval_resize(image_size)


@dataclasses.dataclass(frozen=True)
class ViewGroup:
  """Views of one shape, sent together: batch['views'][name] is uint8 [B, count, h, w, C]."""

  name: str
  count: int  # views per example that the host sends
  size: tuple[int, int]  # (h, w)
  mirror: bool  # the device also scores each view's mirror image


def view_groups(spec: EvalSpec, image_shape) -> tuple[ViewGroup, ...]:
  """The views the input pipeline makes for a protocol (none for 'center': its 'image' is the
  one view, normalised on the host as in training)."""
  h, w = image_shape[:2]
  if spec.protocol == '10crop':
    # The mirrored five are crops of the mirrored image, as torchvision's TenCrop takes them: a
    # crop's own mirror image differs where the centre crop's margin is odd.
    return (ViewGroup('crops', 10, (h, w), False),)
  if spec.protocol == 'multiscale':
    return tuple(ViewGroup(f'scale{s}', 1, (s, s), True) for s in spec.scales)
  return ()


def num_views(spec: EvalSpec, image_shape) -> int:
  """Views averaged per example."""
  groups = view_groups(spec, image_shape)
  return sum(g.count * (2 if g.mirror else 1) for g in groups) if groups else 1


def check_data(spec: EvalSpec, data) -> None:
  """The protocol fits the data: views are made from images, which synthetic data has none of;
  10crop's crops must fit in the resized image."""
  if spec.protocol == 'center':
    return
  if not hasattr(data, 'normalisation'):
    raise UserError(
        f'--config.evaluation.protocol={spec.protocol} needs images (a TFDS dataset); synthetic'
        ' data is scored with --config.evaluation.protocol=center'
    )
  size = min(data.image_shape[:2])
  if spec.protocol == '10crop' and ten_crop_resize(spec, size) < size:
    raise UserError(
        f'--config.evaluation.resize={spec.resize} is smaller than the {size} px crops; use at'
        f' least {size} (0: {eval_resize(size)})'
    )
