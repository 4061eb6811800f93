"""Print a filled-in SLURM batch script for multi-node GPU training, to read or pipe to sbatch.

  python -m experiments.slurm_job --nodes 4 --gpus_per_node 8 \
      --config configs/imagenet.py:resnet50,modern --workdir /shared/runs/r50 \
      [--tasks_per gpu|node] [--cpus_per_gpu 8] [--override --config.x=y ...] | sbatch

experiments/slurm/train.sbatch is the one source of the script: this renders that file, replacing
only the values of its #SBATCH lines and its CONFIG=, WORKDIR= and EXTRA_ARGS= lines. The checked-in
file stays a script you can submit directly
(CONFIG=... WORKDIR=... sbatch experiments/slurm/train.sbatch), and the two cannot drift apart.
"""

import pathlib
import re
import shlex
import sys

from experiments.launcher_cli import (
    ArgumentParser,
    add_override_argument,
    check_config_file,
    check_overrides,
)

TEMPLATE = pathlib.Path(__file__).resolve().parent / 'slurm' / 'train.sbatch'


def render(
    *,
    nodes: int,
    gpus_per_node: int,
    tasks_per: str,
    cpus_per_gpu: int,
    config: str,
    workdir: str,
    override: list[str],
    template: str | None = None,
) -> str:
  """The batch script; main passes vars(args), so all but `template` are named as the flags."""
  # One task per GPU is what JAX's SLURM detection assumes; one per node the script handles itself.
  tasks_per_node = gpus_per_node if tasks_per == 'gpu' else 1
  values = {
      r'#SBATCH --nodes=.*': f'#SBATCH --nodes={nodes}',
      r'#SBATCH --ntasks-per-node=.*': f'#SBATCH --ntasks-per-node={tasks_per_node}',
      r'#SBATCH --gpus-per-node=.*': f'#SBATCH --gpus-per-node={gpus_per_node}',
      r'#SBATCH --cpus-per-task=.*': (
          f'#SBATCH --cpus-per-task={cpus_per_gpu * gpus_per_node // tasks_per_node}'
      ),
      r'CONFIG=.*': f'CONFIG={shlex.quote(config)}',
      r'WORKDIR=.*': f'WORKDIR={shlex.quote(workdir)}',
      r'EXTRA_ARGS=\(.*\)': f'EXTRA_ARGS=({shlex.join(override)})',
  }
  text = TEMPLATE.read_text() if template is None else template
  for pattern, line in values.items():
    # A function as the replacement, so that backslashes in a value stay literal.
    text, count = re.subn(f'^{pattern}$', lambda _, line=line: line, text, flags=re.MULTILINE)
    if count != 1:
      raise ValueError(f'{TEMPLATE} needs exactly one line matching {pattern!r}, found {count}')
  return text


def main(argv: list[str] | None = None) -> int:
  parser = ArgumentParser(
      prog='python -m experiments.slurm_job', description=__doc__.split('\n\n')[0]
  )
  parser.add_argument('--nodes', type=int, required=True)
  parser.add_argument('--gpus_per_node', type=int, required=True)
  parser.add_argument(
      '--tasks_per',
      choices=('gpu', 'node'),
      default='gpu',
      help="gpu: one process per GPU (JAX's SLURM default); node: one process drives all its GPUs",
  )
  parser.add_argument(
      '--cpus_per_gpu', type=int, default=8, help='CPU cores for the input pipeline, per GPU'
  )
  parser.add_argument(
      '--config', required=True, help='config file and preset, relative to the repository root'
  )
  parser.add_argument(
      '--workdir', required=True, help='a directory all nodes share, or gs://bucket/path'
  )
  add_override_argument(
      parser, 'the rest of the line goes to resnet_jax.main, e.g. --config.train.batch_size=1024'
  )
  args = parser.parse_args(argv)
  for name in ('nodes', 'gpus_per_node', 'cpus_per_gpu'):
    if getattr(args, name) < 1:
      parser.error(f'--{name} must be at least 1, got {getattr(args, name)}')
  check_config_file(parser, args.config, 'where the job runs')
  check_overrides(parser, args.override)
  print(render(**vars(args)), end='')
  return 0


if __name__ == '__main__':
  sys.exit(main())
