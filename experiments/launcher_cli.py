"""Command-line pieces the launchers share (tpu_pod, slurm_job, sweep).

Each launcher starts `resnet_jax.main` from the repository root with a config file, a workdir and
whatever the user adds after --override; these check those inputs the same way everywhere.
"""

import argparse
import pathlib
import sys

# The runs start here, so config files are named relative to it.
REPO = pathlib.Path(__file__).resolve().parents[1]
# Flags the launchers set themselves; an override repeating one would silently replace theirs.
LAUNCHER_FLAGS = ('--config', '--workdir', '--distributed')


class ArgumentParser(argparse.ArgumentParser):
  """Usage mistakes end with one line on stderr and exit status 2, as resnet_jax.main does."""

  def error(self, message):
    print(f'error: {message}', file=sys.stderr)
    sys.exit(2)


def add_override_argument(parser: argparse.ArgumentParser, help_text: str) -> None:
  # REMAINDER: every later word goes to resnet_jax.main untouched, even ones that look like ours.
  parser.add_argument('--override', nargs=argparse.REMAINDER, default=[], help=help_text)


def check_overrides(parser: argparse.ArgumentParser, overrides: list[str]) -> None:
  for override in overrides:
    name = override.split('=', 1)[0]
    if not override.startswith('--'):
      parser.error(f'override {override!r} is not a flag; write it as --config.field=value')
    if name in LAUNCHER_FLAGS:
      parser.error(f'{name} is set by the launcher; give it as its own option before --override')


def check_config_file(parser: argparse.ArgumentParser, config: str, why_relative: str) -> None:
  """`config` is 'file.py:preset'; the file must exist relative to REPO, where the runs start."""
  config_file = config.split(':', 1)[0]
  if not (REPO / config_file).is_file():
    parser.error(
        f'no config file {config_file} in {REPO}; give it relative to the repository '
        f'root, {why_relative}'
    )
