"""Run a sweep: every point of a grid (experiments/sweeps/) as an ordinary `resnet_jax.main` run.

  python -m experiments.sweep --sweep experiments/sweeps/degradation_digits_cpu.py \
      [--root runs/sweeps/NAME] [--parallel N] [--print_commands] [--launcher CMD] \
      [--override --config.x=y ...]     # --override takes the rest of the line, for every point

Each point trains in `<root>/<point>` and logs to `<root>/<point>/sweep.log`. A point whose run
exited 0 gets a marker file and is skipped when the sweep runs again; an interrupted point simply
resumes, because resnet_jax.main continues from its workdir's latest checkpoint. Afterwards the
table and figures are written to the root (experiments/results.py).

--parallel N runs N points at once, each pinned to its own share of the CPU cores (so that N
single-device XLA processes do not fight over the same cores). --print_commands prints one command
per point instead of running anything: for a TPU pod, a job array or another machine.
"""

import argparse
import dataclasses
import importlib.util
import itertools
import json
import os
import pathlib
import shlex
import signal
import subprocess
import sys
import time

import ml_collections

from experiments.launcher_cli import REPO, ArgumentParser, add_override_argument, check_overrides
from resnet_jax.common import jsonl

MARKER = 'sweep_finished.json'  # written after a point's run exits 0
FAMILIES = ('plain', 'resnet', 'preact_resnet')
# Axes beyond family x depth, and the config field each one sets.
AXIS_FIELDS = {'seed': 'seed', 'shortcut': 'model.shortcut'}


@dataclasses.dataclass(frozen=True)
class Point:
  name: str  # also its workdir's name
  preset: str  # the zoo name passed to the config file: 'plain56'
  depth: int
  overrides: tuple[str, ...]  # --config.x=y flags of this point


def load_sweep(path) -> ml_collections.ConfigDict:
  spec = importlib.util.spec_from_file_location('sweep_definition', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config()


def _flag_value(value) -> str:
  # Tuples as Python literals, which is how ml_collections parses a tuple override.
  return repr(tuple(value)) if isinstance(value, (tuple, list)) else str(value)


def flatten_overrides(fields: dict, prefix: str = '') -> list[str]:
  """{'train': {'num_steps': 800}} -> ['--config.train.num_steps=800']."""
  flags = []
  for key, value in fields.items():
    if isinstance(value, dict):
      flags += flatten_overrides(value, f'{prefix}{key}.')
    else:
      flags.append(f'--config.{prefix}{key}={_flag_value(value)}')
  return flags


def sweep_points(sweep: ml_collections.ConfigDict) -> list[Point]:
  """The grid in reading order: family, then depth, then the other axes."""
  axes = sweep.axes.to_dict()
  unknown = set(axes) - {'family', 'depth', *AXIS_FIELDS}
  if unknown or not {'family', 'depth'} <= set(axes):
    raise ValueError(
        f'a sweep\'s axes are family and depth, optionally {", ".join(AXIS_FIELDS)}; got '
        f'{", ".join(sorted(axes))}'
    )
  bad_families = set(axes['family']) - set(FAMILIES)
  if bad_families:
    raise ValueError(
        f'unknown famil{"ies" if len(bad_families) > 1 else "y"} {sorted(bad_families)}; '
        f'valid: {", ".join(FAMILIES)}'
    )
  others = sorted(set(axes) - {'family', 'depth'})
  base = flatten_overrides(sweep.base_overrides.to_dict())
  exclude = set(sweep.get('exclude', ()))
  points = []
  for family, depth, *values in itertools.product(
      axes['family'], axes['depth'], *(axes[a] for a in others)
  ):
    name = f'{family}{depth}' + ''.join(f'_{axis}-{value}' for axis, value in zip(others, values))
    if name not in exclude:
      own = [
          f'--config.{AXIS_FIELDS[axis]}={_flag_value(value)}'
          for axis, value in zip(others, values)
      ]
      points.append(Point(name, f'{family}{depth}', depth, tuple(base + own)))
  return points


def point_args(point: Point, sweep, root: str, overrides: list[str]) -> list[str]:
  """resnet_jax.main's arguments for a point; the command line's --override comes last, and wins."""
  config = f'{sweep.config}:{point.preset}'
  return ['--config', config, '--workdir', f'{root}/{point.name}', *point.overrides, *overrides]


# --------------------------------------------------------------------------------------- local runs


def cpu_shares(parallel: int) -> list[list[int] | None]:
  """Disjoint sets of this process's CPU cores, one per concurrent run (None: no pinning)."""
  if parallel <= 1 or not hasattr(os, 'sched_getaffinity'):
    return [None] * parallel
  cpus = sorted(os.sched_getaffinity(0))
  if len(cpus) < parallel:
    return [[cpus[i % len(cpus)]] for i in range(parallel)]
  return [
      cpus[i * len(cpus) // parallel : (i + 1) * len(cpus) // parallel] for i in range(parallel)
  ]


def start(args: list[str], launcher: list[str], workdir: pathlib.Path, cpus: list[int] | None):
  workdir.mkdir(parents=True, exist_ok=True)
  log = (workdir / 'sweep.log').open('a')
  log.write(f'\n$ {shlex.join(launcher + args)}\n')
  log.flush()
  pin = (lambda: os.sched_setaffinity(0, cpus)) if cpus else None
  # TF_CPP_MIN_LOG_LEVEL: TensorFlow's start-up chatter would bury the run's own log lines.
  env = {**os.environ, 'TF_CPP_MIN_LOG_LEVEL': os.environ.get('TF_CPP_MIN_LOG_LEVEL', '2')}
  process = subprocess.Popen(
      launcher + args, cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=pin
  )
  log.close()  # the child holds its own copy
  return process


def run_locally(
    points: list[Point],
    args_of: dict[str, list[str]],
    root: pathlib.Path,
    launcher: list[str],
    parallel: int,
) -> list[str]:
  """Runs the unfinished points, `parallel` at a time; returns the names of those that failed."""
  todo = []
  for point in points:
    # No marker, or a torn one: the point's run resumes, and finishes at once if it had.
    done = (jsonl.read_object(root / point.name / MARKER) or {}).get('args')
    if done is None:
      todo.append(point)
      continue
    note = (
        '' if done == args_of[point.name] else ' (with other arguments; delete its marker to rerun)'
    )
    print(f'{point.name}: finished earlier, skipped{note}', flush=True)
  if parallel > 1:
    todo.sort(key=lambda p: -p.depth)  # deepest first, so that the longest runs do not start last
  free, running, failed = cpu_shares(parallel), {}, []
  try:
    while todo or running:
      while todo and free:
        point, cpus = todo.pop(0), free.pop(0)
        process = start(args_of[point.name], launcher, root / point.name, cpus)
        running[point.name] = (process, cpus, time.time())
        print(
            f'{point.name}: running{f" on CPUs {cpus}" if cpus else ""}, log'
            f' {root / point.name / "sweep.log"}',
            flush=True,
        )
      time.sleep(0.5)
      for name, (process, cpus, started) in list(running.items()):
        if process.poll() is None:
          continue
        del running[name]
        free.append(cpus)
        seconds = time.time() - started
        if process.returncode == 0:
          jsonl.write_atomically(
              root / name / MARKER,
              json.dumps({'args': args_of[name], 'seconds': round(seconds, 1)}),
          )
          print(f'{name}: finished in {seconds:.0f} s', flush=True)
        else:
          failed.append(name)
          print(
              f'{name}: failed with exit status {process.returncode}; see'
              f' {root / name / "sweep.log"}',
              flush=True,
          )
  except KeyboardInterrupt:
    for process, _, _ in running.values():
      process.terminate()
      process.wait()
    raise
  return failed


# ------------------------------------------------------------------------------------- command line


def parse_args(argv):
  parser = ArgumentParser(
      prog='python -m experiments.sweep',
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument(
      '--sweep',
      required=True,
      help='a sweep definition, e.g. experiments/sweeps/degradation_cifar10.py',
  )
  parser.add_argument(
      '--root', help="directory of the points' workdirs (default: the sweep's workdir_root)"
  )
  parser.add_argument(
      '--parallel', type=int, default=1, help='points to run at once on this machine'
  )
  parser.add_argument(
      '--print_commands', action='store_true', help='print one command per point; run nothing'
  )
  parser.add_argument(
      '--launcher',
      help=(
          'the command that starts one run (default: this Python -m resnet_jax.main '
          'locally, `python -m resnet_jax.main` in printed commands)'
      ),
  )
  add_override_argument(
      parser, "the rest of the line goes to every point's resnet_jax.main, e.g. --config.seed=1"
  )
  args = parser.parse_args(argv)
  if args.parallel < 1:
    parser.error(f'--parallel must be at least 1, got {args.parallel}')
  check_overrides(parser, args.override)
  return args


def _stop(signum, frame):
  raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    sweep = load_sweep(args.sweep)
    points = sweep_points(sweep)
  except (OSError, ValueError, AttributeError) as e:
    print(f'error: sweep {args.sweep}: {e}', file=sys.stderr)
    return 2
  if not (REPO / sweep.config).is_file():
    print(f'error: sweep {args.sweep}: no config file {sweep.config} in {REPO}', file=sys.stderr)
    return 2
  root = args.root or sweep.workdir_root
  if '://' not in root:
    root = str(pathlib.Path(root).resolve())  # the runs start in the repository root
  args_of = {p.name: point_args(p, sweep, root, args.override) for p in points}
  if args.print_commands:
    launcher = shlex.split(args.launcher or 'python -m resnet_jax.main')
    for point in points:
      print(shlex.join(launcher + args_of[point.name]))
    return 0

  if '://' in root:
    print(
        f'error: local runs need a local --root, not {root}; use --print_commands to run elsewhere',
        file=sys.stderr,
    )
    return 2
  launcher = (
      shlex.split(args.launcher) if args.launcher else [sys.executable, '-m', 'resnet_jax.main']
  )
  print(f'{len(points)} points in {root}', flush=True)
  # A killed sweep stops its runs too, rather than orphaning them.
  signal.signal(signal.SIGTERM, _stop)
  try:
    failed = run_locally(points, args_of, pathlib.Path(root), launcher, args.parallel)
  except KeyboardInterrupt:
    print('interrupted: run the same command again to resume', file=sys.stderr)
    return 130
  from experiments import results  # matplotlib and jax: loaded only now, so the runs start at once

  results.write_results(root, root)
  if failed:
    print(
        f'error: {len(failed)} of {len(points)} points failed: {", ".join(failed)}', file=sys.stderr
    )
    return 1
  return 0


if __name__ == '__main__':
  sys.exit(main())
