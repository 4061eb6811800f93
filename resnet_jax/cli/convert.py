"""Pretrained weights in and out: PyTorch state dicts <-> resnet_jax workdirs.

    python -m resnet_jax.cli.convert import resnet50.safetensors --workdir runs/tv_resnet50
        [--model resnet50] [--config configs/imagenet.py:resnet50 --config.x=y ...]
    python -m resnet_jax.cli.convert export --workdir runs/r56 --out r56.safetensors [--step N]

import reads a torchvision or timm ImageNet ResNet (18/34/50/101/152), or a CIFAR ResNet of the
CIFAR reference (akamaster/pytorch_resnet_cifar10), from `.safetensors` (numpy only) or from `.pth`
when PyTorch is importable, and writes a new workdir: config.json and a step-0 checkpoint that
`--mode=eval`, training (it continues from the imported weights) and `--config.init_from=` accept.
export writes a workdir's checkpoint with the reference's names, so that
`model.load_state_dict(safetensors.torch.load_file(path), strict=True)` loads it into torchvision's
ResNet (ImageNet family) or the CIFAR reference (CIFAR family) and computes what it computes here.
resnet_jax/models/interop.py holds the name table. Every mistake is one `error:` line, exit status
2, and nothing is written.
"""

import functools
import os

import jax
import numpy as np
import safetensors.numpy
from absl import app, flags, logging
from ml_collections import config_flags

from resnet_jax import models
from resnet_jax.common import errors, library_noise
from resnet_jax.common.errors import UserError, one_line
from resnet_jax.config import resolve
from resnet_jax.config.fields import base_config
from resnet_jax.config.run import DatasetFacts
from resnet_jax.models import interop
from resnet_jax.training.setup import Setup
from resnet_jax.workdir import checkpoints as checkpointing
from resnet_jax.workdir import record

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file(
    'config',
    None,
    'import: the config the workdir is for (default: configs/imagenet.py:<model>,torchvision for '
    'torchvision weights, configs/cifar10.py:<model> with per-channel normalisation for the CIFAR'
    ' reference).',
    lock_config=True,
)
flags.DEFINE_string(
    'workdir', None, 'import: the new workdir to write; export: the workdir to read.'
)
flags.DEFINE_string(
    'model',
    None,
    'import: the preset to read the weights as (default: detected from '
    'the keys; option-A CIFAR nets read as resnet<d>, say plain<d> for a plain twin).',
)
flags.DEFINE_string('out', None, 'export: the .safetensors file to write (must not exist).')
flags.DEFINE_integer('step', None, 'export: the checkpoint step (default: the latest).')
flags.mark_flags_as_required(['workdir'])

TORCH_FILES = ('.pth', '.pt', '.th', '.bin', '.ckpt')
USAGE = (
    'usage: python -m resnet_jax.cli.convert import WEIGHTS.safetensors --workdir NEW_DIR, or '
    'python -m resnet_jax.cli.convert export --workdir DIR --out FILE.safetensors'
)


# ----------------------------------------------------------------------------- reading weights


def _numpy_state_dict(loaded, path) -> dict:
  for wrapper in ('state_dict', 'model', 'module'):  # training scripts' checkpoint dicts
    if isinstance(loaded, dict) and isinstance(loaded.get(wrapper), dict):
      loaded = loaded[wrapper]
  if not isinstance(loaded, dict) or not loaded:
    raise UserError(
        f"{path} holds no state dict (a {type(loaded).__name__}); give a model's state_dict()"
    )
  state_dict = {}
  for key, value in loaded.items():
    if not hasattr(value, 'shape'):
      raise UserError(
          f'{path} is not a state dict: {key!r} is a {type(value).__name__}, not a tensor'
      )
    # DataParallel's 'module.' prefix; one published CIFAR-reference version names its convolutions
    # and classifier 'compressible_*'.
    key = key.removeprefix('module.').replace('compressible_', '')
    state_dict[key] = value.numpy() if hasattr(value, 'numpy') else np.asarray(value)
  return state_dict


def check_finite(state_dict: dict, path) -> None:
  """Weights holding NaN or inf cannot be trained or evaluated (every step would be skipped):
  refused, naming the tensors."""
  bad = [
      key
      for key, value in state_dict.items()
      if np.issubdtype(value.dtype, np.floating) and not np.isfinite(value).all()
  ]
  if bad:
    shown = ', '.join(bad[:5]) + (f', ... ({len(bad)} tensors)' if len(bad) > 5 else '')
    raise UserError(
        f'{path} holds NaN or infinite values in {shown}; a network with them cannot be trained or'
        ' evaluated: give an intact file'
    )


def read_state_dict(path: str) -> dict:
  """{name: numpy array} of a .safetensors file, or of a PyTorch file when torch is importable."""
  if not os.path.isfile(path):
    raise UserError(f'weights file {path} does not exist')
  if path.endswith(TORCH_FILES):
    try:
      import torch  # pylint: disable=import-outside-toplevel
    except ImportError:
      raise UserError(
          f'{path} is a PyTorch file and PyTorch is not installed here; convert it where it is:'
          ' python -c '
          f"\"import torch, safetensors.torch as s; s.save_file(torch.load('{path}',"
          " map_location='cpu'), "
          f"'{os.path.splitext(path)[0]}.safetensors')\""
      ) from None
    try:
      loaded = torch.load(path, map_location='cpu', weights_only=True)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(f'{path} cannot be read by torch.load ({one_line(e, 200)})') from None
  else:
    try:
      loaded = safetensors.numpy.load_file(path)
    except Exception as e:  # pylint: disable=broad-except
      raise UserError(
          f'{path} is not a .safetensors file ({one_line(e, 200)}); PyTorch files must end in '
          f'{", ".join(TORCH_FILES)}'
      ) from None
  return _numpy_state_dict(loaded, path)


# ----------------------------------------------------------------------------- import


def _default_config(preset: str, layout: str, num_classes: int):
  """The config an import without --config records: the weights' own dataset, read as their
  reference trains and scores them. torchvision's: ImageNet at 224, its random-resized crop, its
  per-channel normalisation and the centre crop (configs/imagenet.py:MODEL,torchvision's data and
  evaluation); the CIFAR reference's: CIFAR-10 or -100 with per-channel normalisation."""
  config = base_config(preset)
  if layout == 'torchvision':
    config.dataset.update(
        name='imagenet2012',
        eval_split='validation',
        image_size=224,
        augment='inception_crop',
        normalisation='per_channel',
        cache=False,
    )
    config.evaluation.protocol = 'center'
  else:
    config.dataset.update(
        name='cifar100' if num_classes == 100 else 'cifar10', normalisation='per_channel'
    )
  return config


def _dataset_facts(fields, num_classes: int) -> DatasetFacts:
  """What a run of `fields` feeds the model, from the dataset's description alone (no data is
  read: tfds_source.declared_facts); a UserError if the dataset has another number of classes than
  the weights' classifier (eval would refuse the workdir)."""
  with library_noise.silenced():  # Only here: the rest of the conversion needs no TensorFlow.
    from resnet_jax.data import tfds_source  # pylint: disable=import-outside-toplevel

    image_shape, classes = tfds_source.declared_facts(fields.dataset)
  if classes != num_classes:
    raise UserError(
        f"the weights' classifier has {num_classes} classes, but dataset"
        f" '{fields.dataset.name}' of --config has {classes}: eval would refuse the workdir."
        f' Import them with a config of a {num_classes}-class dataset (without --config: the'
        " preset's ImageNet or CIFAR-10 one), then start your run from that workdir with"
        ' --config.init_from, which gives the network a new classifier'
    )
  return DatasetFacts(num_classes, image_shape, num_train_examples=0, num_eval_examples=0)


def import_weights(path: str, workdir: str, *, model_name: str | None = None, config=None) -> str:
  """Writes `workdir` (new) from the state dict at `path`; returns the workdir's absolute path."""

  workdir = checkpointing.absolute_path(workdir)
  if workdir.exists() and any(workdir.iterdir()):
    raise UserError(
        f'--workdir {workdir} already holds files; import writes a new workdir, give another'
    )
  state_dict = read_state_dict(path)
  check_finite(state_dict, path)
  detected, num_classes = interop.detect(state_dict)
  model_name = model_name or (config.model.name if config is not None else detected)
  layout = interop.LAYOUTS[models.model_spec(model_name)['stem']]  # a UserError names valid ones
  config = config if config is not None else _default_config(model_name, layout, num_classes)
  if config.model.name != model_name:
    raise UserError(
        f'--config builds {config.model.name} but the weights are read as {model_name}; '
        f'use --config ...:{model_name} or --model {config.model.name}'
    )
  fields = resolve.check(config)
  facts = _dataset_facts(fields, num_classes)
  run = resolve.resolve(fields, device_count=1, process_count=1, training=False, dataset=facts)
  setup = Setup(run)
  abstract = jax.eval_shape(setup.init, jax.random.key(0))
  try:
    variables = interop.from_state_dict(
        setup.model, state_dict, {'params': abstract.params, 'batch_stats': abstract.batch_stats}
    )
  except interop.StateDictMismatchError as e:
    raise interop.StateDictMismatchError(
        f'{e}; {path} looks like a {detected} with {num_classes} classes'
    ) from None
  variables = jax.tree.map(jax.numpy.asarray, variables)
  state = setup.fresh_state().replace(
      params=variables['params'],
      batch_stats=variables['batch_stats'],
      opt_state=setup.tx.init(variables['params']),
  )
  meta = {
      'model': model_name,
      'num_classes': num_classes,
      'image_shape': list(run.dataset.image_shape),
      'dataset': fields.dataset.name,
      'imported_from': os.path.abspath(path),
  }
  try:
    workdir.mkdir(parents=True, exist_ok=True)
    record.write_first_config(workdir, run.record['config'], trained=False)
  except OSError as e:
    raise UserError(
        f'cannot write to --workdir {workdir} ({e.strerror or e}); choose a writable directory'
    ) from e
  checkpoints = checkpointing.Checkpoints(workdir, asynchronous=False)
  checkpoints.save(0, state, meta)
  checkpoints.close()
  return str(workdir)


# ----------------------------------------------------------------------------- export


def export_weights(workdir: str, out: str, *, step: int | None = None) -> dict:
  """Writes the checkpoint at `step` (default latest) of `workdir` as a reference state dict to
  `out` (.safetensors); returns {'file', 'step', 'layout', 'tensors'}."""

  if not out or not out.endswith('.safetensors'):
    raise UserError(f'--out must name a .safetensors file, got {out!r}')
  if os.path.exists(out):
    raise UserError(f'--out {out} exists; export never overwrites a file, give another name')
  workdir = checkpointing.absolute_path(workdir)
  if not (workdir / 'config.json').exists() or not (workdir / 'checkpoints').exists():
    raise UserError(
        f'--workdir {workdir} is not a resnet_jax workdir (it needs config.json and checkpoints/)'
    )
  checkpoints = checkpointing.Checkpoints(workdir, read_only=True)
  try:
    step = checkpoints.find_step(step)
    meta = checkpoints.read_meta(step)
    config = record.config_of_checkpoint(meta, workdir)  # the model that step was trained as
    state = checkpoints.restore_as_saved(step, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  finally:
    checkpoints.close()
  model = resolve.check(config).model.build(meta['num_classes'])
  state_dict = interop.to_state_dict(model, state, num_batches_tracked=int(state['step']))
  metadata = {
      'format': 'pt',
      'resnet_jax_model': meta['model'],
      'resnet_jax_step': str(step),
      'layout': interop.layout(model),
  }
  os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
  staged = f'{out}.tmp'  # renamed into place: a crash never leaves a torn `out` to refuse later
  safetensors.numpy.save_file(state_dict, staged, metadata=metadata)
  os.replace(staged, out)
  return {'file': out, 'step': step, 'layout': interop.layout(model), 'tensors': len(state_dict)}


# ----------------------------------------------------------------------------- command line


def _checked_config():
  config = errors.read_config_or_exit(
      lambda: FLAGS.config, config_flags.get_config_filename(FLAGS['config'])
  )
  resolve.check(config)  # a mistake is one line before the weights are read
  return config


def _command(argv) -> None:
  command, args = (argv[1], argv[2:]) if len(argv) > 1 else (None, [])
  if command == 'import' and len(args) == 1:
    workdir = import_weights(
        args[0],
        FLAGS.workdir,
        model_name=FLAGS.model,
        config=_checked_config() if FLAGS['config'].present else None,
    )
    print(
        f'wrote {workdir}: evaluate it with --mode=eval, continue training it, or start another'
        f' run from it with --config.init_from={workdir}'
    )
  elif command == 'export' and not args:
    written = export_weights(FLAGS.workdir, FLAGS.out, step=FLAGS.step)
    print(
        f"wrote {written['file']}: step {written['step']}, {written['tensors']} tensors with "
        f"{written['layout']} names"
    )
  else:
    raise UserError(USAGE)


def main(argv) -> int:
  logging.set_verbosity(logging.ERROR)  # orbax and TFDS log their every step, and read-only opens
  return errors.exit_status(lambda: _command(argv))


if __name__ == '__main__':
  app.run(main, flags_parser=functools.partial(errors.parse_flags_or_exit, FLAGS))
