"""`python -m resnet_jax.main --config configs/cifar10.py:resnet56 --workdir runs/r56`.

Optional `[--config.x=y ...]` flags override config fields. Parses flags and hands over to train.py.
Errors a user can fix end the run with one line on stderr and exit status 2; nothing already saved
is touched.
"""

import atexit
import functools
import json
import logging as logging_std
import os
import pathlib
import sys
import threading

from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax.common import errors, library_noise

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
    "train: train (resuming the workdir's run from its latest checkpoint); eval: evaluate a"
    ' checkpoint (--checkpoint_step) and print the metrics as JSON, with the config it was trained'
    ' with unless --config is given; predict: classify --images with a checkpoint.',
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
flags.DEFINE_string(
    'checkpoint_step',
    'latest',
    'eval, predict: the checkpoint to read: latest, best (the lowest eval top-1 error), or a step.',
)
flags.DEFINE_enum(
    'eval_protocol',
    None,
    ['center', '10crop', 'multiscale'],
    "eval: the evaluation protocol, instead of the config's evaluation.protocol: center (one"
    ' view), 10crop (corners and centre, and mirrored), multiscale (fully-convolutional, the'
    ' scales of evaluation.scales and mirrored); resnet_jax/training/evaluation.py.',
)
flags.DEFINE_list(
    'accept_changes',
    [],
    "train: config fields (e.g. train.batch_size,seed) that may differ from those the workdir's"
    ' checkpoints were trained with; a resume that changes any other field is refused.',
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

CONFIGS = pathlib.Path('configs')  # the recipes, where --list_presets looks (from the repository)
_HELP_FLAGS = ('--help', '-help', '-h', '-?', '--helpshort', '--helpfull')
_MORE_HELP = (
    'Every config field is documented, with a comment, in resnet_jax/config/fields.py; set any of'
    ' them with\n--config.<section>.<field>=value, e.g. --config.train.batch_size=256.'
    ' --list_presets lists\nthe models and config files. Classify images with a trained run:\n '
    ' --mode=predict --workdir runs/r56 --images a.png b.jpg [--checkpoint_step=N]'
    " [--json]\n--verbosity=0 shows the libraries' own logs (TensorFlow, XLA, TFDS, orbax), which"
    ' are off by default.'
)


class _QuietLibraries(logging_std.Filter):
  """Orbax logs every step of every save at INFO, its read-only mode at WARNING, and a failed save
  as pages of tracebacks at ERROR; CLU's TensorBoard writer logs a failed write's traceback. The
  failures come back to us as exceptions and are reported in one line. Their logs show with
  --verbosity."""

  def filter(self, record):
    return library_noise.verbose or not any(
        library in record.pathname for library in ('/orbax/', '/clu/')
    )


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


def _make_importable(config_folder: pathlib.Path) -> None:
  """Config files import their siblings as a package (`from configs import cifar10`): the folder
  that holds theirs goes on the module path, wherever the command runs from."""
  parent = str(config_folder.resolve().parent)
  if (config_folder / '__init__.py').is_file() and parent not in sys.path:
    sys.path.insert(0, parent)


def parse_flags(argv):
  """absl's parsing, plus what runs before main: --help, --list_presets, the required flags (none
  for --list_presets, no --config but to train) and --images' files given as arguments."""
  if any(arg in _HELP_FLAGS for arg in argv[1:]):
    _print_and_exit(_help())
  config_file = errors.config_flag_value(argv)
  _make_importable(pathlib.Path(config_file.split(':')[0]).parent if config_file else CONFIGS)
  argv = errors.parse_flags_or_exit(FLAGS, argv)
  if FLAGS.list_presets:
    from resnet_jax.cli import presets  # pylint: disable=import-outside-toplevel

    _make_importable(CONFIGS)
    _print_and_exit(presets.listing(CONFIGS))
  required = ('config', 'workdir') if FLAGS.mode == 'train' else ('workdir',)
  missing = [f'--{name}' for name in required if not FLAGS[name].present]
  if missing:
    errors.exit_with(f"{' and '.join(missing)} must be given (see --help)")
  if FLAGS.mode == 'predict' and FLAGS.images:
    FLAGS.images = [*FLAGS.images, *argv[1:]]
    argv = argv[:1]
  return argv


def checked_config():
  """(--config built, its Fields): every field checked once (config/resolve.py's stage 1), before
  JAX, data or the workdir are touched; (None, None) when --config is not given. A mistake is one
  `error:` line and exit status 2."""
  if not FLAGS['config'].present:
    return None, None
  from resnet_jax.config import resolve  # pylint: disable=import-outside-toplevel
  from resnet_jax.workdir import record  # pylint: disable=import-outside-toplevel

  config = errors.read_config_or_exit(
      lambda: FLAGS.config, config_flags.get_config_filename(FLAGS['config'])
  )
  try:
    if FLAGS.mode == 'eval' and FLAGS.eval_protocol:
      config.evaluation.protocol = FLAGS.eval_protocol
    fields = resolve.check(config)
    if FLAGS.mode == 'train':
      record.check_accept_changes(FLAGS.accept_changes, fields.config)
  except errors.UserError as e:
    errors.exit_with(e)
  return config, fields


def _quiet_libraries_unless_verbose() -> None:
  """At the default verbosity the console shows our lines only (console.py): the libraries' INFO
  logs (JAX's missing-TPU line, TFDS's readers, orbax) and TensorFlow's start-up notices are off.
  --verbosity=0 (INFO) or higher brings them back."""
  library_noise.verbose = FLAGS['verbosity'].present
  if not library_noise.verbose:
    logging.set_verbosity(logging.WARNING)
    os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '2')  # TensorFlow's own C++ INFO and WARNING


def _exit_after_error_lines(status: int) -> None:
  """Exits with `status`, the error lines printed being the last. Everything that writes has been
  closed on the way out; the background threads of a failed checkpoint read may still print
  tracebacks: send them nowhere, and skip the interpreter's teardown (and atexit)."""
  sys.stdout.flush()
  sys.stderr.flush()
  os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stderr.fileno())
  os._exit(status)


def _defer_background_tracebacks() -> None:
  """Errors that other threads print (tensorstore's callbacks under a failed checkpoint read, as
  "unraisable" exceptions) are shown at a normal exit, and dropped when the run ends with a
  one-line error (os._exit skips atexit)."""
  deferred, show_exception, show_unraisable = [], sys.excepthook, sys.unraisablehook

  def exception_hook(*exc_info):
    if threading.current_thread() is threading.main_thread():
      show_exception(*exc_info)
    else:
      deferred.append(functools.partial(show_exception, *exc_info))

  sys.excepthook = exception_hook
  sys.unraisablehook = lambda unraisable: deferred.append(
      functools.partial(show_unraisable, unraisable)
  )
  atexit.register(lambda: [show() for show in deferred])


def _split_cpu(fields) -> None:
  """parallelism.cpu_devices, or the auto rule's count (parallel.auto_cpu_devices) for 0."""
  from resnet_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  from resnet_jax.training import cpu_backend, parallel  # pylint: disable=import-outside-toplevel

  devices = fields.parallelism.cpu_devices if fields else 1
  if devices or 'xla_force_host_platform_device_count' in os.environ.get('XLA_FLAGS', ''):
    return parallel.split_cpu(devices)
  processes = FLAGS.num_processes or 1
  batches = (fields.batch_size, fields.eval_batch_size)
  if any(b % processes for b in batches):
    return parallel.split_cpu(1)  # resolve reports the batch size that does not divide
  with library_noise.silenced():  # a TFDS dataset's declared shape imports TensorFlow
    side = pipeline.image_side(fields.dataset)
  onednn = cpu_backend.onednn_may_run(
      fields.parallelism.cpu_backend,
      processes=processes,
      conv_kernel_grad=fields.model.overrides.get('conv_kernel_grad', 'xla'),
  )
  parallel.split_cpu(
      *parallel.auto_cpu_devices(side, tuple(b // processes for b in batches), onednn=onednn)
  )


def _evaluate(config) -> dict:
  """--mode=eval: the --checkpoint_step of --workdir scored with `config`, or the config that
  checkpoint was trained with; nothing is written."""
  from resnet_jax.config import resolve  # pylint: disable=import-outside-toplevel
  from resnet_jax.training import loop  # pylint: disable=import-outside-toplevel
  from resnet_jax.workdir.workdir import Workdir  # pylint: disable=import-outside-toplevel

  workdir = Workdir.read_only(FLAGS.workdir)
  try:
    step = workdir.checkpoints.find_step(FLAGS.checkpoint_step)
    if config is None:
      config = workdir.config_of(step)
      if FLAGS.eval_protocol:
        config.evaluation.protocol = FLAGS.eval_protocol
    run = resolve.resolve(config, training=False, **loop.device_counts())
    return loop.evaluate_checkpoint(run, workdir, step)
  finally:
    workdir.close()


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {" ".join(argv[1:])}')
  # Before any library starts a thread: CPU steps reuse the memory the last step freed.
  from resnet_jax.common import host_memory

  host_memory.keep_freed_memory()
  # Imported here so that --help is instant and flag errors come before TensorFlow loads.
  import jax

  from resnet_jax.config import resolve
  from resnet_jax.common.errors import UserError
  from resnet_jax.training import distributed, loop, preemption

  logging.get_absl_handler().addFilter(_QuietLibraries())
  _quiet_libraries_unless_verbose()
  _defer_background_tracebacks()
  config, fields = checked_config()
  if FLAGS.mode == 'predict':  # the run's own config from its workdir, unless --config is given
    with library_noise.silenced():  # it imports TensorFlow
      from resnet_jax.cli import predict

    status = predict.predict_files(
        FLAGS.workdir, FLAGS.images, step=FLAGS.checkpoint_step, as_json=FLAGS.json, config=config
    )
    if status:
      _exit_after_error_lines(status)
    sys.exit(0)
  try:
    _split_cpu(fields)  # before JAX starts its CPU backend
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
      print(json.dumps(_evaluate(config), sort_keys=True))
    else:
      loop.check_before_data(fields, FLAGS.workdir)
      run = resolve.resolve(fields, **loop.device_counts())  # the data is read here
      # The console shows its progress and ends with a summary; metrics.jsonl holds the values.
      loop.train_and_evaluate(run, FLAGS.workdir, accept_changes=frozenset(FLAGS.accept_changes))
  except UserError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    _exit_after_error_lines(2)
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
