"""A run's training curves, workdir/curves.png, from its metrics.jsonl (written at the end of
every training run; `python -m experiments.plot --workdir DIR` redraws them).

Three panels against iterations: the loss (training, and test where evaluated), the top-1 error
(training dashed, test solid, as the paper's Figure 6) and the learning rate. Sweeps have their own
figures (experiments/results.py).
"""

import pathlib
import sys

import matplotlib

matplotlib.use('Agg')  # files only, never a window
import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top,wrong-import-position

from resnet_jax.common import jsonl  # pylint: disable=wrong-import-position
from resnet_jax.common.errors import UserError  # pylint: disable=wrong-import-position

# Each curve: (panel, label, style, metric keys, the first one logged is drawn). Older runs log the
# training error as 'train_error'.
CURVES = (
    ('loss', 'training', '--', ('train_loss',)),
    ('loss', 'test', '-', ('eval_loss',)),
    ('top-1 error (%)', 'training', '--', ('train_top1_error', 'train_error')),
    ('top-1 error (%)', 'test', '-', ('eval_top1_error',)),
    ('learning rate', None, '-', ('train_learning_rate',)),
)
PANELS = ('loss', 'top-1 error (%)', 'learning rate')


def series(records: list[dict], keys) -> tuple[list[int], list[float]]:
  """(steps, values) of the first of `keys` that the run logged."""
  for key in keys:
    pairs = [(r['step'], r[key]) for r in records if key in r]
    if pairs:
      return [s for s, _ in pairs], [v for _, v in pairs]
  return [], []


def plot_run(workdir) -> pathlib.Path:
  """Writes workdir/curves.png from workdir/metrics.jsonl; returns its path."""
  workdir = pathlib.Path(workdir)
  records, torn = jsonl.read(workdir / 'metrics.jsonl')
  if torn:  # a run killed while writing: the next resume drops the line too
    print(f'note: skipped {torn} torn line(s) of {workdir / "metrics.jsonl"}', file=sys.stderr)
  if not records:
    raise UserError(f'{workdir / "metrics.jsonl"} holds no metrics to plot')
  fig, axes = plt.subplots(1, len(PANELS), figsize=(15, 4))
  panels = dict(zip(PANELS, axes))
  for panel, label, style, keys in CURVES:
    steps, values = series(records, keys)
    if panel.endswith('(%)'):
      values = [100 * v for v in values]
    # A point alone (e.g. one evaluation) is invisible as a line.
    panels[panel].plot(steps, values, style, marker='o' if len(steps) == 1 else None, label=label)
  for panel, ax in panels.items():
    ax.set(title=panel, xlabel='iterations')
    ax.grid(alpha=0.3)
    if panel != 'learning rate' and ax.get_legend_handles_labels()[0]:
      ax.legend(fontsize=8)
  for panel in ('loss', 'learning rate'):  # both fall over orders of magnitude
    panels[panel].set_yscale('log')
  fig.suptitle(workdir.resolve().name)
  path = workdir / 'curves.png'
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
