"""What a run is, saved with every checkpoint, so that only the same run resumes it.

The record is the run's config (every field, as JSON) and the facts derived from the data and the
devices that change what is trained. A resume compares its own record with the checkpoint's: a
field in `MAY_CHANGE` (how long, how often to log, evaluate and save, where the data lives) is
accepted and logged; any other difference (model, data, batch, optimizer, schedule, seed, per-device
BatchNorm's device count) stops the run with one line that lists each field old -> new, unless the
user accepts those fields deliberately with --accept_changes.

`workdir/config.json` keeps the config of the run that trained the first checkpoint (until one
exists, the latest run's: a workdir without checkpoints has trained nothing); each training
invocation appends a line to `workdir/history.jsonl` (when, which command, from which step, which
fields changed) once its state is restored.
"""

import datetime
import json
import socket
import sys

import ml_collections
from etils import epath
from flax import traverse_util

from resnet_jax.common import errors, jsonl
from resnet_jax.config import fields
from resnet_jax.common.errors import UserError
from resnet_jax.config.run import DERIVED

MAY_CHANGE = frozenset({
    'init_from',  # read only by a run's first start
    'init_from_partial',
    'train.num_steps',
    'train.num_epochs',
    'train.log_every_steps',
    'train.eval_every_steps',
    'train.checkpoint_every_steps',
    'train.keep_checkpoints',
    'train.async_checkpoints',
    'train.max_skipped_steps',
    'train.log_diagnostics',
    'train.eval_batch_size',
    'dataset.data_dir',
    'dataset.manual_dir',
    'dataset.cache',
    'parallelism.mode',  # jit and pmap train the same steps
    'parallelism.cpu_devices',  # the device count matters only to per-device BN (derived below)
    'parallelism.cpu_backend',  # the same step, another convolution library
    # how evaluation scores the network, not what is trained
    'evaluation.protocol',
    'evaluation.resize',
    'evaluation.scales',
    'evaluation.forward_batch',
})

# Fields added after workdirs were written, with the value that those runs trained with, so that a
# resume compares like with like: a run that now gets the paper's per-pixel mean instead of the
# per-channel normalisation it was trained with is told so, and refused unless accepted.
ADDED_FIELDS = {
    'dataset.normalisation': 'per_channel',
    'dataset.scale_range': [256, 480],
    'dataset.lighting_std': 0.0,
    'dataset.lighting_pca': 'train_split',
    'evaluation.protocol': 'center',
    'evaluation.resize': 0,
    'evaluation.scales': [224, 256, 384, 480, 640],
    'evaluation.forward_batch': 32,
}
# Values renamed since: (field, old value) -> the name it has now.
RENAMED_VALUES = {('dataset.augment', 'imagenet'): 'inception_crop'}


class ChangedRunError(UserError):
  """A resume whose config trains something else than the checkpoints it would continue."""


def flatten(tree: dict) -> dict:
  """A nested dict (a config's JSON) as {'section.field': value}."""
  return traverse_util.flatten_dict(tree, sep='.')


def upgraded(config: dict) -> dict:
  """A saved config (JSON) in today's terms: fields added since filled with the values its run
  used (ADDED_FIELDS), renamed values given their new names (RENAMED_VALUES)."""
  flat = flatten(config)
  if not flat:
    return config
  for field, value in ADDED_FIELDS.items():
    flat.setdefault(field, value)
  for (field, old), new in RENAMED_VALUES.items():
    if flat.get(field) == old:
      flat[field] = new
  return traverse_util.unflatten_dict(flat, sep='.')


def _fields(record: dict) -> dict:
  """A record's values by name: config fields by their flag name (`train.batch_size`), derived
  facts as `derived.<fact>`."""
  return flatten({**upgraded(record.get('config', {})), 'derived': record.get('derived', {})})


def changes(saved: dict, current: dict) -> dict[str, str]:
  """{field: `field old -> new`} for every field both records hold that differs."""
  old, new = _fields(saved), _fields(current)
  both = sorted(old.keys() & new.keys())
  return {f: f'{f} {json.dumps(old[f])} -> {json.dumps(new[f])}' for f in both if old[f] != new[f]}


def check_accept_changes(names, config_json: dict) -> None:
  """A UserError unless each of --accept_changes' `names` is a field a record holds (`config_json`:
  the run's, config/resolve.py's Fields.config): a mistyped name would otherwise accept nothing,
  silently."""
  known = [*flatten(config_json), *(f'derived.{fact}' for fact in DERIVED)]
  unknown = [name for name in names if name not in known]
  if unknown:
    said = [f'{name!r}{errors.did_you_mean(name, known)}' for name in unknown]
    raise UserError(
        f'--accept_changes names no config field {", ".join(said)}; give the fields that a refused'
        ' resume lists, e.g. --accept_changes=train.batch_size,seed (resnet_jax/config/fields.py'
        ' lists every field)'
    )


def check_resume(saved: dict, current: dict, *, accept: frozenset[str], where) -> list[str]:
  """The changes this resume makes (as `field old -> new` texts, for the history and the log), or
  ChangedRunError when a field outside MAY_CHANGE and `accept` differs."""
  changed = changes(saved, current)
  refused = [f for f in changed if f not in MAY_CHANGE and f not in accept]
  if refused:
    raise ChangedRunError(
        f'{where} was trained by another config: {"; ".join(changed[f] for f in refused)}. Resume'
        ' it with its own config, use another --workdir, or continue it with these changes'
        f' deliberately: --accept_changes={",".join(refused)}'
    )
  return list(changed.values())


# ----------------------------------------------------------------------------- the workdir's record


def read_first_config(workdir: epath.Path) -> dict | None:
  """config.json, or None if there is none (or a crash of an older version tore it)."""
  return jsonl.read_object(workdir / 'config.json')


def write_first_config(workdir: epath.Path, config_json: dict, *, trained: bool) -> None:
  """Writes config.json, unless it exists and the workdir has trained a checkpoint (`trained`): it
  keeps the config of the first checkpoint's run (see the module's docstring)."""
  path = workdir / 'config.json'
  if not trained or read_first_config(workdir) is None:
    jsonl.write_atomically(path, json.dumps(config_json, indent=2))


def append_history(workdir: epath.Path, *, from_step: int, changes: list[str]) -> int:
  """Appends this invocation to history.jsonl; returns the number of torn lines (a run killed
  while appending) that were cut off first."""
  path = workdir / 'history.jsonl'
  torn = jsonl.repair(path)
  invocation = {
      'time': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
      'host': socket.gethostname(),
      'command': sys.argv,
      'from_step': from_step,
      'changes': changes,
  }
  jsonl.append(path, invocation)
  return torn


def config_of_checkpoint(meta: dict, workdir: epath.Path) -> ml_collections.ConfigDict:
  """The config a checkpoint (its `meta`) was trained with; older checkpoints: config.json."""
  saved = (meta.get('record') or {}).get('config') or read_first_config(workdir)
  if not saved:
    raise UserError(f"--workdir {workdir} holds no config.json; give the run's --config")
  return config_from_record(saved)


def config_from_record(saved_config: dict) -> ml_collections.ConfigDict:
  """A run's config rebuilt from its saved JSON (a checkpoint's record or config.json), on its
  preset's base config so that every field keeps its type (JSON lists become tuples again)."""
  config = fields.base_config(saved_config['model']['name'])
  with config.unlocked():
    for field, value in flatten(upgraded(saved_config)).items():
      section, _, name = field.rpartition('.')
      target = config.get(section) if section else config
      # A data source's own fields (configs/synthetic.py's image_size, channels, ...) are kept; a
      # field of another section that fields.py does not list is one of an older version.
      if target is None or (name not in target and section != 'dataset'):
        continue
      target[name] = tuple(value) if isinstance(value, list) else value
  return config
