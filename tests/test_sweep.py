"""experiments.sweep and experiments.results: the grid, the printed commands, and a tiny sweep run
through the real command on mock CIFAR-10 (table, figures, skip on re-run)."""

import csv
import os
import shlex
import subprocess
import sys

import pytest

from experiments import sweep
from tests import cli

TINY_SWEEP = """
import ml_collections

def get_config():
  sweep = ml_collections.ConfigDict()
  sweep.config = 'configs/cifar10.py'
  sweep.axes = ml_collections.ConfigDict(dict(family=('plain', 'resnet'), depth=(8,)))
  sweep.base_overrides = ml_collections.ConfigDict(dict(
      train=dict(batch_size=16, eval_batch_size=16, num_steps=4, log_every_steps=2,
                 eval_every_steps=2, checkpoint_every_steps=2),
      schedule=dict(boundaries=(2, 3))))
  sweep.workdir_root = 'unused'
  return sweep
"""


def printed(capsys, *args) -> list[list[str]]:
  assert sweep.main(list(args)) == 0
  return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def test_the_cifar10_grid_is_figure_6_and_table_6():
  points = sweep.sweep_points(
      sweep.load_sweep(cli.REPO / 'experiments/sweeps/degradation_cifar10.py')
  )
  assert [p.name for p in points] == [f'plain{d}' for d in (20, 32, 44, 56, 110)] + [
      f'resnet{d}' for d in (20, 32, 44, 56, 110, 1202)
  ]
  assert all(p.overrides == () for p in points)  # the paper's recipe is the config's own


def test_extra_axes_name_the_points_and_set_their_fields(tmp_path):
  definition = tmp_path / 'seeds.py'
  definition.write_text(
      TINY_SWEEP.replace('depth=(8,)', "depth=(8,), seed=(0, 1), shortcut=('A', 'B')").replace(
          'sweep.workdir_root',
          "sweep.exclude = ('plain8_seed-1_shortcut-B',)\n  sweep.workdir_root",
      )
  )
  points = {p.name: p for p in sweep.sweep_points(sweep.load_sweep(definition))}
  assert len(points) == 7 and 'plain8_seed-1_shortcut-B' not in points
  assert points['resnet8_seed-1_shortcut-B'].overrides[-2:] == (
      '--config.seed=1',
      '--config.model.shortcut=B',
  )
  assert '--config.schedule.boundaries=(2, 3)' in points['resnet8_seed-1_shortcut-B'].overrides


def test_print_commands_gives_one_runnable_command_per_point(tmp_path, capsys):
  definition = tmp_path / 'tiny.py'
  definition.write_text(TINY_SWEEP)
  commands = printed(
      capsys,
      '--sweep',
      str(definition),
      '--root',
      str(tmp_path / 'root'),
      '--print_commands',
      '--override',
      '--config.seed=7',
  )
  assert [c[:3] for c in commands] == [['python', '-m', 'resnet_jax.main']] * 2
  for command, preset in zip(commands, ('plain8', 'resnet8')):
    assert command[command.index('--config') + 1] == f'configs/cifar10.py:{preset}'
    assert command[command.index('--workdir') + 1] == str(tmp_path / 'root' / preset)
    assert '--config.train.num_steps=4' in command and command[-1] == '--config.seed=7'
  assert not (tmp_path / 'root').exists()  # nothing ran


def test_unknown_axes_are_refused_with_the_valid_ones(tmp_path, capsys):
  definition = tmp_path / 'bad.py'
  definition.write_text(TINY_SWEEP.replace('depth=(8,)', 'depth=(8,), width=(2,)'))
  assert sweep.main(['--sweep', str(definition), '--print_commands']) == 2
  assert 'family and depth, optionally seed, shortcut' in capsys.readouterr().err


@pytest.mark.slow
def test_a_tiny_sweep_trains_tabulates_plots_and_skips_finished_points_on_rerun(tmp_path):
  definition, root = tmp_path / 'tiny.py', tmp_path / 'root'
  definition.write_text(TINY_SWEEP)
  # The points run the real CLI on TFDS's mock data, on one CPU device each.
  launcher = shlex.join([sys.executable, '-m', 'benchmarks.tfds_mock', '40'])
  env = {**os.environ, 'XLA_FLAGS': '', 'PYTHONPATH': str(cli.REPO)}
  command = [
      sys.executable,
      '-m',
      'experiments.sweep',
      '--sweep',
      str(definition),
      '--root',
      str(root),
      '--parallel',
      '2',
      '--launcher',
      launcher,
  ]
  first = cli.check(
      subprocess.run(command, cwd=cli.REPO, env=env, capture_output=True, text=True, timeout=300)
  )
  assert 'plain8: finished' in first.stdout and 'resnet8: finished' in first.stdout

  with open(root / 'table.csv') as f:
    rows = list(csv.DictReader(f))
  assert [(r['family'], r['depth'], r['steps']) for r in rows] == [
      ('plain', '8', '4'),
      ('resnet', '8', '4'),
  ]
  assert rows[0]['params'] == rows[1]['params'] == '75290'  # option A shortcuts add no parameters
  assert all(0 <= float(r['test_error_percent']) <= 100 and r['train_error_percent'] for r in rows)
  table = (root / 'table.md').read_text()
  assert (
      '| plain | 8 | plain8 | 75,290 | 4 |' in table
      and '| resnet | 8 | resnet8 | 75,290 | 4 |' in table
  )
  for figure in ('figure6.png', 'grad_norms.png', 'residual_ratios.png'):
    assert (root / figure).read_bytes()[:8] == b'\x89PNG\r\n\x1a\n', figure

  metrics_before = (root / 'resnet8' / 'metrics.jsonl').read_text()
  second = cli.check(
      subprocess.run(command, cwd=cli.REPO, env=env, capture_output=True, text=True, timeout=300)
  )
  assert 'plain8: finished earlier, skipped' in second.stdout
  assert 'resnet8: finished earlier, skipped' in second.stdout and 'running' not in second.stdout
  assert (root / 'resnet8' / 'metrics.jsonl').read_text() == metrics_before
