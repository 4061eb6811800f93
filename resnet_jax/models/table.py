"""The model zoo as a Markdown table: `python -m resnet_jax.models.table`.

  python -m resnet_jax.models.table [--models resnet20,resnet56] [--input 28x28x1]
      [--num_classes 10]

README's table is this output with no options. Counts come from shapes alone (model_stats), so the
whole zoo takes seconds.
"""

import argparse
import dataclasses
import difflib
import sys

from resnet_jax.common import errors
from resnet_jax.models import stats as model_stats
from resnet_jax import models
from resnet_jax.common.errors import UserError

CIFAR_DEFAULTS = (10, (32, 32, 3))  # the paper's CIFAR-10 networks at 32x32
IMAGENET_DEFAULTS = (1000, (224, 224, 3))  # its ImageNet ones at 224x224

# (name, classes, input) rows of README's table.
ROWS = (
    [(f'{kind}{d}', *CIFAR_DEFAULTS) for d in models.CIFAR_DEPTHS for kind in ('resnet', 'plain')]
    + [(f'preact_resnet{d}', *CIFAR_DEFAULTS) for d in (110, 1202)]
    + [
        (f'{kind}{d}', *IMAGENET_DEFAULTS)
        for d in models.IMAGENET_STAGES
        for kind in ('resnet', 'plain')
    ]
    + [('preact_resnet50', *IMAGENET_DEFAULTS)]
)
ZOO = tuple(name for name, _, _ in ROWS)


@dataclasses.dataclass(frozen=True)
class Row:
  name: str
  depth: int
  block: str  # e.g. 'pre-act bottleneck'
  shortcut: str
  image_shape: tuple[int, int, int]
  params: int
  multiply_adds: int | None  # None where not asked for


def default_row(name: str) -> tuple[str, int, tuple[int, int, int]]:
  """(name, classes, input) at the model's own dataset's defaults; a one-line error with the
  closest names for a model that does not exist."""
  try:
    spec = models.model_spec(name)
  except UserError:
    close = difflib.get_close_matches(name, models.model_names(), n=1)
    hint = f'did you mean {close[0]}? ' if close else ''
    raise UserError(
        f'unknown model {name!r}; {hint}The zoo: {", ".join(ZOO)} (and any CIFAR depth 6n+2)'
    ) from None
  return (name, *(CIFAR_DEFAULTS if spec['stem'] == 'cifar' else IMAGENET_DEFAULTS))


def row(name: str, num_classes: int, image_shape, *, multiply_adds: bool = True) -> Row:
  model = models.create_model(name, num_classes=num_classes)
  stats = model_stats.model_stats(model, image_shape) if multiply_adds else None
  params = stats.params if stats else model_stats.parameter_count(model, image_shape)
  return Row(
      name=name,
      depth=models.model_depth(name),
      block=('pre-act ' if model.preact else '') + model.block,
      shortcut=model.shortcut,
      image_shape=tuple(image_shape),
      params=params,
      multiply_adds=stats.multiply_adds if stats else None,
  )


def _macs_text(macs: int) -> str:
  return f'{macs / 1e9:.2f} G' if macs >= 1e9 else f'{macs / 1e6:.1f} M'


def markdown_table(rows=ROWS) -> str:
  lines = [
      '| model | depth | block | shortcut | input | params | multiply-adds |',
      '|---|---:|---|---|---|---:|---:|',
  ]
  for name, num_classes, image_shape in rows:
    r = row(name, num_classes, image_shape)
    lines.append(
        f'| {r.name} | {r.depth} | {r.block} | {r.shortcut} | {"x".join(map(str, r.image_shape))} '
        f'| {r.params:,} | {_macs_text(r.multiply_adds)} |'
    )
  return '\n'.join(lines)


def parse_input(text: str) -> tuple[int, int, int]:
  """'28x28x1' -> (28, 28, 1)."""
  parts = text.lower().split('x')
  if len(parts) != 3 or not all(p.isdigit() and int(p) > 0 for p in parts):
    raise UserError(f'--input {text!r} is not HxWxC with positive integers, e.g. 32x32x3')
  return tuple(int(p) for p in parts)


def selected_rows(models_text: str | None, input_text: str | None, num_classes: int | None):
  """The rows the options ask for: each named model (default: the zoo) at its default classes and
  input unless --num_classes or --input say otherwise."""
  rows = ROWS if not models_text else [default_row(n.strip()) for n in models_text.split(',')]
  image_shape = parse_input(input_text) if input_text else None
  if num_classes is not None and num_classes < 1:
    raise UserError(f'--num_classes must be positive, not {num_classes}')
  return [(n, num_classes or c, image_shape or shape) for n, c, shape in rows]


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m resnet_jax.models.table', description=__doc__.split('\n\n')[0]
  )
  parser.add_argument('--models', help='comma-separated model names (default: the whole zoo)')
  parser.add_argument('--input', help="image shape HxWxC, e.g. 28x28x1 (default: each model's own)")
  parser.add_argument('--num_classes', type=int, help="default: each model's own (10 or 1000)")
  args = parser.parse_args(argv)
  return errors.exit_status(
      lambda: print(markdown_table(selected_rows(args.models, args.input, args.num_classes)))
  )


if __name__ == '__main__':
  sys.exit(main())
