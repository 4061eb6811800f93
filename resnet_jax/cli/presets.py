"""What `--config FILE:PRESET` can name: `python -m resnet_jax.main --list_presets`.

A preset is a model of the zoo; each config file (configs/*.py with a `get_config`) puts it in its
dataset's recipe. The config files are the user's recipes, not part of the package: they are read
from a folder (the repository's configs/) as `--config` reads them. Some files take a recipe after
a comma (`configs/imagenet.py:resnet50,modern`), listed in their `RECIPES`.
"""

import importlib
import inspect
import os
import pathlib
import re

from resnet_jax.models import table as model_table


def config_files(folder: pathlib.Path) -> list[tuple[str, object]]:
  """(path as the user types it, module) of every config file in `folder` that builds a run;
  main.py has put the folder that holds `folder` on the module path."""
  found = []
  for path in sorted(folder.resolve().glob('*.py')):
    module = importlib.import_module(f'{folder.resolve().name}.{path.stem}')
    if hasattr(module, 'get_config'):
      shown = os.path.relpath(path) if path.is_relative_to(pathlib.Path.cwd()) else str(path)
      found.append((shown, module))
  return found


def _columns(rows: list[tuple[str, ...]], right: tuple[int, ...]) -> list[str]:
  """Rows as aligned text columns, the `right` ones right-aligned (numbers)."""
  widths = [max(map(len, column)) for column in zip(*rows)]
  justify = [str.rjust if i in right else str.ljust for i in range(len(widths))]
  lines = ('  '.join(j(cell, w) for j, cell, w in zip(justify, row, widths)) for row in rows)
  return ['  ' + line.rstrip() for line in lines]


def _zoo_lines() -> list[str]:
  rows = [('model', 'depth', 'block', 'shortcut', 'input', 'params')]
  for name, num_classes, image_shape in model_table.ROWS:
    row = model_table.row(name, num_classes, image_shape, multiply_adds=False)
    shape = 'x'.join(map(str, row.image_shape))
    rows.append((name, str(row.depth), row.block, row.shortcut, shape, f'{row.params:,}'))
  return _columns(rows, right=(1, 5))


def _config_lines(folder: pathlib.Path) -> list[str]:
  rows = [('file and preset', 'default', 'runs')]
  for path, module in config_files(folder):
    parameters = list(inspect.signature(module.get_config).parameters.values())
    default = parameters[0].default if parameters else ''
    recipes = getattr(module, 'RECIPES', ())
    recipes = f"[{'|'.join(f',{r}' for r in recipes)}]" if recipes else ''  # one of them, or none
    # The docstring's first line, less the example command most of them end with.
    summary = re.sub(r':\s*`[^`]*`\.?$', '', (module.__doc__ or '').strip().split('\n')[0])
    rows.append((f'{path}:MODEL{recipes}', str(default), summary))
  return _columns(rows, right=())


def listing(folder: pathlib.Path = pathlib.Path('configs')) -> str:
  """The zoo, and the config files of `folder` (the repository's configs/) where it exists."""
  if not folder.is_dir():
    files = [
        f'  none here: {folder.resolve()} is not a folder. The config files are in the'
        " repository's configs/; give --config a path to one, e.g. --config"
        ' ~/resnet_jax/configs/cifar10.py:resnet56'
    ]
  else:
    files = _config_lines(folder)
  return '\n'.join([
      'Models (parameters at the default input and classes; any CIFAR depth 6n+2 works too):',
      *_zoo_lines(),
      '',
      (
          'Config files: --config FILE:MODEL with any model above, e.g.'
          ' --config configs/cifar10.py:resnet56'
      ),
      *files,
      '',
      (
          'Every config field is documented in resnet_jax/config/fields.py; set one with'
          ' --config.<section>.<field>=value.'
      ),
  ])


if __name__ == '__main__':
  print(listing())
