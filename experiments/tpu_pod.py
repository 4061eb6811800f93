"""Print (or --run) the gcloud commands that train on every worker of a Cloud TPU VM pod slice.

  python -m experiments.tpu_pod --tpu my-pod --zone us-central2-b [--project P] \
      --config configs/imagenet.py:resnet50,modern --workdir gs://bucket/runs/r50 \
      [--tpu_create --accelerator_type v4-32 --runtime_version tpu-ubuntu2204-base] \
      [--setup] [--run] \
      [--override --config.train.batch_size=1024 ...]     # --override takes the rest of the line

Steps, in order: create the TPU VM (--tpu_create); ship and install the code on every worker
(--setup); start training on every worker. By default they are printed, one comment line and one
command each, for reading or pasting; --run executes them one after another, stopping at the first
that fails.

The code travels as a `git archive` of one commit (--git_ref, default HEAD) copied with
`tpu-vm scp`, not as a `git clone` on the workers: that needs no repository credentials on the TPU
and trains exactly the commit named. Uncommitted edits are not shipped; commit them first.

Training starts under nohup with its output appended to ~/resnet_jax.log on each worker, so the ssh
returns at once and the run survives a dropped connection. --foreground keeps it attached instead:
every worker's output streams to this terminal, and the run ends with the ssh session.

No process flags are passed: on a TPU VM `jax.distributed.initialize()` (--distributed=auto) reads
the pod's workers from the TPU metadata itself.
"""

import argparse
import dataclasses
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile

from experiments.launcher_cli import (
    REPO,
    ArgumentParser,
    add_override_argument,
    check_config_file,
    check_overrides,
)

# On every worker, in the login user's home; written unquoted so that the remote shell expands `~`.
REMOTE_DIR = '~/resnet_jax'
REMOTE_TARBALL = 'resnet_jax.tar.gz'
REMOTE_LOG = '~/resnet_jax.log'


@dataclasses.dataclass(frozen=True)
class Step:
  why: str
  argv: tuple[str, ...]

  def __str__(self):
    return shlex.join(self.argv)


def pinned_jax_version() -> str:
  """The jax version requirements.txt pins, so the TPU build matches the CPU one tested."""
  requirements = REPO / 'requirements.txt'
  match = re.search(r'^jax==([\w.+-]+)\s*$', requirements.read_text(), re.MULTILINE)
  if match is None:
    raise ValueError(f'{requirements} has no line jax==<version> to take the jax[tpu] version from')
  return match.group(1)


def install_command(python: str, jax_version: str) -> str:
  """Unpack the shipped code into a fresh REMOTE_DIR with its own venv and the TPU build of jax."""
  python = shlex.quote(python)
  # The pinned requirements (numpy 2.3+, recent jax) need Python 3.11; Ubuntu 22.04 runtimes
  # ship 3.10.
  version_check = (
      f'{python} -c "import sys; sys.exit(sys.version_info < (3, 11))" || '
      '{ echo "$(hostname): resnet_jax needs Python >= 3.11: install it (apt-get install '
      'python3.11 python3.11-venv) and pass --python python3.11" >&2; exit 1; }'
  )
  return ' && '.join([
      version_check,
      f'rm -rf {REMOTE_DIR}',
      f'mkdir -p {REMOTE_DIR}',
      f'tar -xzf ~/{REMOTE_TARBALL} -C {REMOTE_DIR}',
      f'cd {REMOTE_DIR}',
      f'{python} -m venv .venv',
      '.venv/bin/pip install -q -r requirements.txt',
      f'.venv/bin/pip install -q -U "jax[tpu]=={jax_version}"',
  ])


def train_command(config: str, workdir: str, overrides: list[str], foreground: bool) -> str:
  main = ['.venv/bin/python', '-m', 'resnet_jax.main', '--config', config, '--workdir', workdir]
  train = shlex.join([*main, '--distributed=auto', *overrides])
  if foreground:
    return f'cd {REMOTE_DIR} && {train}'
  # Inside braces only the nohup command goes to the background, with all of its output redirected,
  # so the remote shell exits at once and ssh returns.
  return (
      f'cd {REMOTE_DIR} && {{ nohup {train} >> {REMOTE_LOG} 2>&1 < /dev/null & }} && '
      f'echo "$(hostname): training in the background, log: {REMOTE_LOG}"'
  )


def build_steps(args: argparse.Namespace, jax_version: str) -> list[Step]:
  tpu_vm = ('gcloud', 'compute', 'tpus', 'tpu-vm')
  where = ('--zone', args.zone) + (('--project', args.project) if args.project else ())

  def on_every_worker(why: str, command: str) -> Step:
    return Step(why, (*tpu_vm, 'ssh', args.tpu, *where, '--worker=all', '--command', command))

  steps = []
  if args.tpu_create:
    slice_type = ('--accelerator-type', args.accelerator_type, '--version', args.runtime_version)
    create = (*tpu_vm, 'create', args.tpu, *where, *slice_type)
    steps.append(Step('Create the TPU VM: one VM per host of the slice.', create))
  if args.setup:
    # A private directory (mode 0700, unpredictable name): no other user of this machine can
    # put their own archive in its place between packing and copying it to every worker.
    tarball = str(pathlib.Path(tempfile.mkdtemp(prefix='resnet_jax-')) / f'{args.tpu}.tar.gz')
    git = ('git', '-C', str(REPO))
    pack = (*git, 'archive', '--format=tar.gz', f'--output={tarball}', args.git_ref)
    copy = (*tpu_vm, 'scp', tarball, f'{args.tpu}:{REMOTE_TARBALL}', *where, '--worker=all')
    steps += [
        Step(
            f'Pack the committed code of {args.git_ref} (uncommitted edits are not shipped).', pack
        ),
        Step('Copy it to every worker.', copy),
        on_every_worker(
            f'Unpack it into {REMOTE_DIR} and install the requirements and'
            f' jax[tpu]=={jax_version}.',
            install_command(args.python, jax_version),
        ),
    ]
  train = train_command(args.config, args.workdir, args.override, args.foreground)
  steps.append(on_every_worker('Train on every worker; JAX finds the pod by itself.', train))
  return steps


def run_steps(steps: list[Step], runner=subprocess.run) -> int:
  """Runs the steps in order; the exit status of the first that fails, or 0."""
  for number, step in enumerate(steps, 1):
    print(f'+ {step}', file=sys.stderr, flush=True)
    try:
      returncode = runner(list(step.argv)).returncode
    except FileNotFoundError:
      print(
          f'error: {step.argv[0]} not found; install it (gcloud: the Google Cloud CLI) or print the'
          ' commands without --run',
          file=sys.stderr,
      )
      return 127
    if returncode != 0:
      print(
          f'error: step {number}/{len(steps)} failed with exit status {returncode}: {step.why}',
          file=sys.stderr,
      )
      return returncode
  return 0


def parse_args(argv: list[str] | None) -> argparse.Namespace:
  parser = ArgumentParser(
      prog='python -m experiments.tpu_pod',
      description=__doc__.split('\n\n')[0],
      formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  parser.add_argument('--tpu', required=True, help='TPU VM name')
  parser.add_argument('--zone', required=True, help='e.g. us-central2-b')
  parser.add_argument('--project', help='Google Cloud project (default: gcloud config)')
  parser.add_argument(
      '--config', required=True, help='config file and preset, relative to the repository root'
  )
  parser.add_argument('--workdir', required=True, help='gs://bucket/path, shared by all workers')
  parser.add_argument(
      '--setup', action='store_true', help='ship the code to every worker and install it'
  )
  parser.add_argument(
      '--run', action='store_true', help='run the commands instead of printing them'
  )
  parser.add_argument(
      '--foreground', action='store_true', help='train attached to the ssh session, not nohup'
  )
  parser.add_argument('--tpu_create', action='store_true', help='first create the TPU VM')
  parser.add_argument('--accelerator_type', help='with --tpu_create: e.g. v4-32, v5litepod-16')
  parser.add_argument(
      '--runtime_version',
      help=(
          'with --tpu_create: e.g. tpu-ubuntu2204-base (v4); see '
          '`gcloud compute tpus tpu-vm versions list --zone ZONE`'
      ),
  )
  parser.add_argument('--git_ref', default='HEAD', help='with --setup: the commit to ship')
  parser.add_argument(
      '--python', default='python3', help="with --setup: the workers' Python 3.11+ for the venv"
  )
  add_override_argument(
      parser, 'the rest of the line goes to resnet_jax.main, e.g. --config.train.batch_size=1024'
  )
  args = parser.parse_args(argv)
  if args.tpu_create and not (args.accelerator_type and args.runtime_version):
    parser.error(
        '--tpu_create needs --accelerator_type (e.g. v4-32) and --runtime_version (e.g.'
        ' tpu-ubuntu2204-base; list them with `gcloud compute tpus tpu-vm versions list --zone'
        ' ZONE`)'
    )
  check_config_file(parser, args.config, 'as the workers run from there')
  check_overrides(parser, args.override)
  return args


def main(argv: list[str] | None = None, runner=subprocess.run) -> int:
  args = parse_args(argv)
  if not args.workdir.startswith('gs://'):
    print(
        f'warning: workdir {args.workdir} is not on GCS; the workers of a multi-host slice share no'
        ' disk, so checkpoints need a gs:// workdir',
        file=sys.stderr,
    )
  try:
    steps = build_steps(args, pinned_jax_version())
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.run:
    return run_steps(steps, runner)
  for number, step in enumerate(steps, 1):
    print(f'# {number}/{len(steps)} {step.why}\n{step}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
