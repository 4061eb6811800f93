"""A sweep's results from its runs' metrics.jsonl: the paper's Table 6, Figure 6, diagnostics plots.

  python -m experiments.results --root runs/sweeps/degradation_digits_cpu [--out DIR]

Writes to --out (default: the root)
  table.md, table.csv     depth, parameters, final training and test error of every run, by family
  figure6.png             training error (dashed) and test error (solid) against iterations, one
                          panel per family (plain left, residual right), one colour per depth
  grad_norms.png          gradient norm of the stem, each stage and the head against iterations
  residual_ratios.png     ||F(x)|| / ||x|| of every block at the end of training
Every subdirectory of the root holding a config.json counts as a run.
"""

import argparse
import csv
import dataclasses
import math
import pathlib
import re
import sys

import matplotlib

matplotlib.use('Agg')
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

from resnet_jax.models import stats as model_stats
from resnet_jax import models
from resnet_jax.workdir import record as run_record
from resnet_jax.config.run import ModelSpec
from resnet_jax.workdir.metrics import read_metrics

FAMILY_ORDER = ('plain', 'resnet', 'preact_resnet')
FAMILY_TITLES = {'plain': 'plain', 'resnet': 'ResNet', 'preact_resnet': 'pre-activation ResNet'}
# Table 6 of the paper: CIFAR-10 test error (%) of ResNets with option A, for comparison on
# cifar10 runs.
PAPER_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}


@dataclasses.dataclass
class Run:
  name: str
  family: str
  depth: int
  config: dict
  records: list[dict]

  @property
  def steps(self) -> int | None:
    return self.records[-1]['step'] if self.records else None

  def last(self, key: str) -> float | None:
    """The last value logged as `key` (train_error, eval_top1_error, ...), None if none was."""
    values = self.series(key)[1]
    return values[-1] if values else None

  @property
  def test_protocol(self) -> str | None:
    """The evaluation protocol of the last evaluation (rows from before protocols: center)."""
    evals = [r for r in self.records if 'eval_top1_error' in r]
    return evals[-1].get('eval_protocol', 'center') if evals else None

  def series(self, key: str) -> tuple[list[int], list[float]]:
    pairs = [(r['step'], r[key]) for r in self.records if key in r]
    return [s for s, _ in pairs], [v for _, v in pairs]


def load_runs(root) -> list[Run]:
  runs = []
  for workdir in sorted(pathlib.Path(root).iterdir()):
    config = run_record.read_first_config(workdir)
    if config is None:  # not a run's workdir, or one whose first run died writing config.json
      continue
    name = config['model']['name']
    family = re.sub(r'^cifar_|\d+$', '', name)
    if config['model'].get('shortcut') == 'none':
      family = 'plain'  # a residual preset trained without shortcuts is a plain net
    runs.append(Run(workdir.name, family, models.model_depth(name), config, read_metrics(workdir)))
  order = {f: i for i, f in enumerate(FAMILY_ORDER)}
  return sorted(runs, key=lambda r: (order.get(r.family, len(order)), r.depth, r.name))


def build_model(run: Run, num_classes: int):
  """The model as the run's config.json describes it."""
  return ModelSpec(fields=tuple(run.config['model'].items())).build(num_classes)


def parameter_count(run: Run, root) -> int | None:
  """Parameters of the run's model, from its checkpoint's record of classes and image shape."""
  from resnet_jax.workdir import checkpoints as checkpointing  # orbax: only needed here

  checkpoints = checkpointing.Checkpoints(pathlib.Path(root).resolve() / run.name, read_only=True)
  step = checkpoints.latest_step()
  meta = None if step is None else checkpoints.read_meta(step)
  checkpoints.close()
  if meta is None:
    return None
  model = build_model(run, meta['num_classes'])
  return model_stats.count(
      model_stats.abstract_variables(model, tuple(meta['image_shape']))['params']
  )


# ---------------------------------------------------------------------------------------- table 6


def table_rows(runs: list[Run], root) -> list[dict]:
  on_cifar10 = runs and all(r.config['dataset']['name'] == 'cifar10' for r in runs)
  # A column only where some run was not scored on the single view (10crop, multiscale sweeps).
  protocols = {r.test_protocol for r in runs} - {None}
  rows = []
  for run in runs:
    row = {
        'family': run.family,
        'depth': run.depth,
        'run': run.name,
        'params': parameter_count(run, root),
        'steps': run.steps,
        'train_error_percent': run.last('train_error'),
        'test_error_percent': run.last('eval_top1_error'),
    }
    for key in ('train_error_percent', 'test_error_percent'):
      row[key] = None if row[key] is None else round(100 * row[key], 2)
    if protocols - {'center'}:
      row['test_protocol'] = run.test_protocol
    if on_cifar10:
      row['paper_test_error_percent'] = (
          PAPER_TABLE6.get(run.depth) if run.family == 'resnet' else None
      )
    rows.append(row)
  return rows


def write_csv(rows: list[dict], path) -> None:
  with open(path, 'w', newline='') as f:
    writer = csv.DictWriter(f, fieldnames=list(rows[0]) if rows else ['run'])
    writer.writeheader()
    writer.writerows({k: '' if v is None else v for k, v in row.items()} for row in rows)


def markdown_table(rows: list[dict]) -> str:
  headers = {
      'family': 'family',
      'depth': 'layers',
      'run': 'run',
      'params': 'params',
      'steps': 'iterations',
      'train_error_percent': 'train error (%)',
      'test_error_percent': 'test error (%)',
      'test_protocol': 'test protocol',
      'paper_test_error_percent': 'paper test error (%)',
  }
  keys = list(rows[0]) if rows else list(headers)[:7]
  lines = [
      '| ' + ' | '.join(headers[k] for k in keys) + ' |',
      '|' + '|'.join('---' if k in ('family', 'run') else '---:' for k in keys) + '|',
  ]
  lines += ['| ' + ' | '.join(_cell(k, row[k]) for k in keys) + ' |' for row in rows]
  return '\n'.join(lines) + (
      '\n\nTrain error: the mean over the batches of the last logged interval (augmented, BatchNorm'
      " in training mode), as the paper's training curves. Test error: the whole test split, final"
      ' weights.\n'
  )


def _cell(key: str, value) -> str:
  if value is None:
    return '—'
  if key == 'params':
    return f'{value:,}'
  return f'{value:.2f}' if isinstance(value, float) else str(value)


# ---------------------------------------------------------------------------------------- figures


def depth_colours(runs: list[Run]) -> dict[int, tuple]:
  depths = sorted({r.depth for r in runs})
  cmap = plt.get_cmap('viridis' if len(depths) > 10 else 'tab10')
  return {
      d: cmap(i / max(1, len(depths) - 1) if len(depths) > 10 else i) for i, d in enumerate(depths)
  }


def family_panels(runs: list[Run], rows: int = 1, height: float = 4.0):
  families = [f for f in FAMILY_ORDER if any(r.family == f for r in runs)]
  fig, axes = plt.subplots(
      rows, len(families), figsize=(5.5 * len(families), height * rows), squeeze=False, sharey='row'
  )
  return fig, families, axes


def figure6(runs: list[Run], path) -> None:
  """The paper's Figure 6: dashed training error, solid test error; deeper plain nets sit higher."""
  colours = depth_colours(runs)
  fig, families, axes = family_panels(runs)
  finals = [r.last(key) for r in runs for key in ('train_error', 'eval_top1_error')]
  # The paper's 0-20% when errors are small.
  top = min(100, max(20, 10 * math.ceil(15 * max((e for e in finals if e is not None), default=0))))
  for ax, family in zip(axes[0], families):
    for run in (r for r in runs if r.family == family):
      colour = colours[run.depth]
      ax.plot(*_percent(run.series('train_error')), '--', color=colour, linewidth=1)
      ax.plot(
          *_percent(run.series('eval_top1_error')),
          '-',
          color=colour,
          linewidth=2,
          label=f'{FAMILY_TITLES[family]}-{run.depth}'
          + (f' ({run.name})' if _ambiguous(run, runs) else ''),
      )
    ax.set(title=FAMILY_TITLES[family], xlabel='iterations', ylim=(0, top))
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  axes[0][0].set_ylabel('error (%): dashed training, solid test')
  save_figure(fig, path)


def grad_norm_figure(runs: list[Run], path) -> None:
  """Rows: stem, stage 1.., head. The first stage's is where a vanishing gradient would show."""
  prefix = 'train_grad_norm_'
  keys = {k for r in runs for rec in r.records for k in rec if k.startswith(prefix)}
  groups = sorted(
      (k.removeprefix(prefix) for k in keys), key=lambda g: (g != 'stem', g == 'head', g)
  )
  if not groups:
    return
  colours = depth_colours(runs)
  fig, families, axes = family_panels(runs, rows=len(groups), height=2.6)
  for row, group in enumerate(groups):
    for ax, family in zip(axes[row], families):
      for run in (r for r in runs if r.family == family):
        ax.plot(
            *run.series(prefix + group),
            color=colours[run.depth],
            linewidth=1,
            marker='.',
            markersize=2,
            label=f'{FAMILY_TITLES[family]}-{run.depth}',
        )
      ax.set_yscale('log')
      ax.grid(alpha=0.3)
      ax.set_title(f'{FAMILY_TITLES[family]}: {group}', fontsize=9)
    axes[row][0].set_ylabel('gradient norm')
  for ax in axes[-1]:
    ax.set_xlabel('iterations')
  for ax in axes[0]:
    ax.legend(fontsize=7)
  save_figure(fig, path)


def residual_ratio_figure(runs: list[Run], path) -> None:
  """||F(x)||/||x|| of each block over the last logged interval; small: it stays near identity."""
  prefix = 'train_residual_ratio_'
  colours = depth_colours(runs)
  fig, families, axes = family_panels(runs)
  plotted = False
  for ax, family in zip(axes[0], families):
    for run in (r for r in runs if r.family == family):
      ratios = (
          {k: v for k, v in rec.items() if k.startswith(prefix)} for rec in reversed(run.records)
      )
      last = next((r for r in ratios if r), {})  # the last record that holds them
      values = [last[k] for k in sorted(last, key=_block_order)]
      if values:
        plotted = True
        ax.plot(
            range(1, len(values) + 1),
            values,
            'o-',
            markersize=3,
            color=colours[run.depth],
            label=f'{FAMILY_TITLES[family]}-{run.depth}',
        )
    ax.set(
        title=FAMILY_TITLES[family]
        + (" (F(x): the block's layers, x: its input)" if family == 'plain' else ''),
        xlabel='block, input to output',
        yscale='log',
    )
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  axes[0][0].set_ylabel('||F(x)|| / ||x||, end of training')
  if plotted:
    save_figure(fig, path)
  else:
    plt.close(fig)


def _block_order(key: str) -> tuple[int, int]:
  stage, block = re.search(r'stage(\d+)_block(\d+)$', key).groups()
  return int(stage), int(block)


def _percent(series):
  steps, values = series
  return steps, [100 * v for v in values]


def _ambiguous(run: Run, runs: list[Run]) -> bool:
  return sum(r.family == run.family and r.depth == run.depth for r in runs) > 1


def save_figure(fig, path) -> None:
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


# ---------------------------------------------------------------------------------------- all of it


def write_results(root, out) -> None:
  """Writes every table and figure that the runs' metrics allow; prints the table and the paths."""
  runs = load_runs(root)
  out = pathlib.Path(out)
  out.mkdir(parents=True, exist_ok=True)
  rows = table_rows(runs, root)
  table = markdown_table(rows)
  (out / 'table.md').write_text(table)
  write_csv(rows, out / 'table.csv')
  figure6(runs, out / 'figure6.png')
  grad_norm_figure(runs, out / 'grad_norms.png')
  residual_ratio_figure(runs, out / 'residual_ratios.png')
  names = ('table.md', 'table.csv', 'figure6.png', 'grad_norms.png', 'residual_ratios.png')
  print(table)
  print('wrote ' + ', '.join(sorted(str(out / name) for name in names if (out / name).exists())))


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m experiments.results', description=__doc__.split('\n\n')[0]
  )
  parser.add_argument('--root', required=True, help="the sweep's root: one workdir per run")
  parser.add_argument('--out', help='where to write the table and figures (default: the root)')
  args = parser.parse_args(argv)
  if not pathlib.Path(args.root).is_dir():
    print(f'error: --root {args.root} is not a directory', file=sys.stderr)
    return 2
  write_results(args.root, args.out or args.root)
  return 0


if __name__ == '__main__':
  sys.exit(main())
