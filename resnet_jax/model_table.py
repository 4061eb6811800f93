"""Prints the model zoo as a Markdown table: `python -m resnet_jax.model_table`.

README's table is this output.
"""

from resnet_jax import model_stats, models

# (name, classes, input) rows: the paper's CIFAR-10 networks at 32x32, its ImageNet ones at 224x224.
ROWS = (
    [(f'{kind}{d}', 10, (32, 32, 3)) for d in models.CIFAR_DEPTHS for kind in ('resnet', 'plain')]
    + [(f'preact_resnet{d}', 10, (32, 32, 3)) for d in (110, 1202)]
    + [
        (f'{kind}{d}', 1000, (224, 224, 3))
        for d in models.IMAGENET_STAGES
        for kind in ('resnet', 'plain')
    ]
    + [('preact_resnet50', 1000, (224, 224, 3))]
)


def markdown_table(rows=ROWS) -> str:
  lines = [
      '| model | depth | block | shortcut | input | params | multiply-adds |',
      '|---|---:|---|---|---|---:|---:|',
  ]
  for name, num_classes, image_shape in rows:
    model = models.create_model(name, num_classes=num_classes)
    stats = model_stats.model_stats(model, image_shape)
    depth = name.rsplit('resnet', 1)[-1].removeprefix('plain')
    block = ('pre-act ' if model.preact else '') + model.block
    macs = stats.multiply_adds
    macs_text = f'{macs / 1e9:.2f} G' if macs >= 1e9 else f'{macs / 1e6:.1f} M'
    lines.append(
        f'| {name} | {depth} | {block} | {model.shortcut} | {"x".join(map(str, image_shape))} '
        f'| {stats.params:,} | {macs_text} |'
    )
  return '\n'.join(lines)


if __name__ == '__main__':
  print(markdown_table())
