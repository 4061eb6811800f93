"""`python -m resnet_jax.main --config configs/cifar10.py:resnet56 --workdir runs/r56`.

Optional `[--config.x=y ...]` flags override config fields. Parses flags and hands over to train.py.
Errors a user can fix end the run with one line on stderr and exit status 2; nothing already saved
is touched.
"""

import logging as logging_std
import os
import sys

from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import errors

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config', None, 'A config file and preset, e.g. configs/cifar10.py:resnet56.', lock_config=True
)
flags.DEFINE_string(
    'workdir', None, 'Directory for checkpoints, metrics.jsonl and TensorBoard summaries.'
)
flags.DEFINE_enum(
    'mode',
    'train',
    ['train', 'eval', 'predict'],
    "train: train (resuming from the workdir's latest checkpoint); eval: evaluate the latest "
    'checkpoint and print the metrics as JSON; predict: classify --images with the checkpoint '
    "(the workdir's own config.json; no --config).",
)
flags.DEFINE_enum(
    'distributed',
    'auto',
    ['auto', 'off'],
    'auto: join a multi-process job given by the flags below or detected by JAX (Cloud TPU, '
    'SLURM, Open MPI, Kubernetes), else run as one process; off: always one process.',
)
flags.DEFINE_string(
    'coordinator_address', None, 'host:port of process 0, for jobs JAX cannot detect.'
)
flags.DEFINE_integer(
    'num_processes', None, 'Number of processes in the job (with --coordinator_address).'
)
flags.DEFINE_integer(
    'process_id', None, "This process's index, 0..num_processes-1 (with --coordinator_address)."
)
flags.DEFINE_integer(
    'heartbeat_timeout',
    100,
    'Seconds without a heartbeat after which a process counts as dead and the job stops.',
)
flags.DEFINE_integer(
    'checkpoint_step', None, 'The checkpoint --mode=predict reads (default: the latest).'
)
flags.DEFINE_list(
    'images',
    None,
    'Image files for --mode=predict: --images a.png b.jpg (the files may follow as arguments).',
)
flags.DEFINE_bool('json', False, '--mode=predict: one JSON object per image, for scripts.')
flags.DEFINE_bool(
    'list_presets', False, 'Print the model zoo and the config files and their presets, then exit.'
)

_HELP_FLAGS = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull')
_MORE_HELP = (
    'Every config field is documented, with a comment, in configs/base.py; set any of them with\n'
    '--config.<section>.<field>=value, e.g. --config.train.batch_size=256. --list_presets lists\n'
    'the models and config files. Classify images with a trained run:\n'
    '  --mode=predict --workdir runs/r56 --images a.png b.jpg [--checkpoint_step=N] [--json]'
)


class _QuietLibraries(logging_std.Filter):
  """Orbax logs every step of every save at INFO; keep its warnings, drop the rest."""

  def filter(self, record):
    return record.levelno >= logging_std.WARNING or '/orbax/' not in record.pathname


def _print_and_exit(text: str) -> None:
  try:
    print(text, flush=True)
  except BrokenPipeError:  # `--help | head`: the reader has what it wanted
    os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
  sys.exit(0)


def _help() -> str:
  """--help: this file's docstring, the config fields' home and our flags (absl's own --help exits
  with status 1 and, from the installed `resnet-jax` script, finds no flags to show)."""
  module = FLAGS.find_module_defining_flag('workdir')
  return f'{__doc__.strip()}\n\n{_MORE_HELP}\n\nflags:\n{FLAGS.module_help(module)}'


def parse_flags(argv):
  """absl's parsing, plus what runs before main: --help, --list_presets, the required flags (none
  for --list_presets, no --config for --mode=predict) and --images' files given as arguments."""
  if any(arg in _HELP_FLAGS for arg in argv[1:]):
    _print_and_exit(_help())
  argv = errors.parse_flags_or_exit(FLAGS, argv)
  if FLAGS.list_presets:
    from resnet_jax import presets  # pylint: disable=import-outside-toplevel

    _print_and_exit(presets.listing())
  required = ('workdir',) if FLAGS.mode == 'predict' else ('config', 'workdir')
  missing = [f'--{name}' for name in required if not FLAGS[name].present]
  if missing:
    print(f"error: {' and '.join(missing)} must be given (see --help)", file=sys.stderr)
    sys.exit(2)
  if FLAGS.mode == 'predict' and FLAGS.images:
    FLAGS.images = [*FLAGS.images, *argv[1:]]
    argv = argv[:1]
  return argv


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  # Imported here so that --help is instant and flag errors come before TensorFlow loads.
  import jax

  from resnet_jax import distributed, parallel, preemption, train
  from resnet_jax.errors import UserError

  logging.get_absl_handler().addFilter(_QuietLibraries())
  if FLAGS.mode == 'predict':  # the run's own config, from its workdir: no --config
    from resnet_jax import predict

    sys.exit(
        predict.predict_files(
            FLAGS.workdir, FLAGS.images, step=FLAGS.checkpoint_step, as_json=FLAGS.json
        )
    )
  config = errors.read_config_or_exit(lambda: FLAGS.config)
  try:
    parallel.split_cpu(config.parallelism.cpu_devices)  # before JAX starts its CPU backend
    distributed.initialize(
        FLAGS.distributed,
        coordinator_address=FLAGS.coordinator_address,
        num_processes=FLAGS.num_processes,
        process_id=FLAGS.process_id,
        heartbeat_timeout_seconds=FLAGS.heartbeat_timeout,
    )  # before any device is used
    logging.info(
        'JAX process %d/%d, %d local devices of %d: %s',
        jax.process_index(),
        jax.process_count(),
        jax.local_device_count(),
        jax.device_count(),
        jax.devices()[0].platform,
    )
    if FLAGS.mode == 'eval':
      print(train.dumps(train.evaluate_latest(config, FLAGS.workdir)))
    else:
      metrics = train.train_and_evaluate(config, FLAGS.workdir)
      if jax.process_index() == 0:
        print(f'final: {train.dumps(metrics)}')
  except UserError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    sys.stdout.flush()
    # Everything that writes has been closed on the way out; skip the interpreter's teardown, where
    # the background threads of a failed checkpoint read would print tracebacks after this line.
    os._exit(2)
  except preemption.Stopped as e:
    print(e, file=sys.stderr)
    sys.exit(preemption.EXIT_STATUS)
  except jax.errors.JaxRuntimeError as e:
    if jax.process_count() == 1:
      raise
    cause = ' '.join(str(e).split())[:200]
    print(
        f'error: process {jax.process_index()} lost contact with the rest of the job ({cause});'
        ' another process has died or was preempted. Restart the whole job: it resumes from the'
        f' last complete checkpoint in {FLAGS.workdir}.',
        file=sys.stderr,
        flush=True,
    )
    os._exit(3)  # skip the runtime's orderly shutdown, which would wait for the dead process


def run():
  """The `resnet-jax` command (pyproject.toml)."""
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
