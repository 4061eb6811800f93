"""Orbax checkpoints of the train state, with a small JSON record of what model they hold."""

import contextlib
import re

import jax
import jax.numpy as jnp
from flax import traverse_util
import orbax.checkpoint as ocp
from orbax.checkpoint import checkpoint_managers as policies
from orbax.checkpoint._src.metadata import array_metadata_store
from etils import epath

from resnet_jax.common import errors
from resnet_jax.common.errors import UserError, one_line


def absolute_path(path) -> epath.Path:
  """`path` as orbax needs it: absolute, unless it is an object-store URL such as gs://..."""
  path = epath.Path(path)
  return path if '://' in str(path) else path.resolve()


class CheckpointMismatchError(UserError):
  """A checkpoint that does not fit the model or shapes of this run, or cannot be read."""


class NoCheckpointError(UserError):
  """A workdir with no checkpoint where one is needed (eval, fine-tuning, export)."""


class CheckpointSaveError(UserError):
  """A checkpoint could not be written (a full disk, lost permissions): the run stops at once."""


def best_rank(metrics: dict) -> tuple[float, int]:
  """What "best" means, everywhere (the checkpoint kept, --checkpoint_step=best, the summary):
  the lowest eval top-1 error; of equal errors, the earliest step, which reached it first.
  `metrics`: a metrics.jsonl row, or the metrics a checkpoint was saved with."""
  return metrics['eval_top1_error'], metrics.get('step', 0)


def _cause(error: Exception) -> str:
  """The reason a save failed, short: the OS's words (`No space left on device`) when there are
  any, else the error's first 160 characters."""
  for e in errors.causes(error):
    if isinstance(e, OSError) and e.strerror:
      return e.strerror
  said = re.search(r': ([^:\[\]]+?) \[os_error_code', str(error))  # tensorstore's OS errors
  return said[1] if said else one_line(error, 160)


def _describe(meta) -> str:
  return (
      f"{meta.get('model')} ({meta.get('num_classes')} classes, images {meta.get('image_shape')})"
  )


def _save_replicated_arrays_whole_on_cpu() -> None:
  """On the CPU, each replicated array is written from one device, not in slices from each.

  Why: orbax's replica-parallel save (its default off GPUs) slices every replicated array across
  its replicas, so that several hosts' devices share the writing. The devices of a CPU backend are
  one host's memory, where slicing only costs a compiled slice program per array shape: ResNet-20's
  first save on 8 CPU devices blocked training 5.96 s instead of 0.12 s, later ones 0.47 s instead
  of 0.08 s (BENCHMARKS.md, "Checkpoints on a split CPU"). GPUs (orbax turns it off there itself)
  and TPUs keep orbax's choice. The files written are those of orbax's default. Global: orbax's
  type handlers are registered per process.
  """
  if jax.default_backend() == 'cpu':
    # As orbax's own default handler (type_handler_registry.py), which also writes each array's
    # metadata (array_metadatas/), replica-parallel off; orbax exports no public name for the store.
    handler = ocp.type_handlers.ArrayHandler(
        use_replica_parallel=False, array_metadata_store=array_metadata_store.Store()
    )
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)


class Checkpoints:
  """`workdir/checkpoints/<step>/{state,meta}`: periodic, asynchronous, the last `keep` kept."""

  def __init__(self, workdir, *, keep: int = 3, read_only: bool = False, asynchronous: bool = True):
    self.directory = epath.Path(workdir) / 'checkpoints'
    _save_replicated_arrays_whole_on_cpu()
    options = ocp.CheckpointManagerOptions(
        # The last `keep` checkpoints, and the one of the lowest eval top-1 error so far (saved
        # with the metrics of the eval at its step, kept across resumes by orbax).
        preservation_policy=None
        if read_only
        else policies.AnyPreservationPolicy([
            policies.LatestN(n=keep),
            policies.BestN(
                get_metric_fn=best_rank, reverse=True, n=1, keep_checkpoints_without_metrics=False
            ),
        ]),
        best_fn=best_rank,  # orbax keeps and returns the smallest: see best_rank
        best_mode='min',
        create=not read_only,
        read_only=read_only,
        # The workdir's lock makes this run its only writer: what a killed run left half-written
        # is removed (it is never restored either way).
        cleanup_tmp_directories=not read_only,
        enable_async_checkpointing=asynchronous,
    )
    self.manager = ocp.CheckpointManager(
        self.directory, options=options, item_names=('state', 'meta')
    )
    self._writing = None  # the step of the save in flight

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def find_step(self, step: int | str | None) -> int:
    """The step of a checkpoint named by `step`: a number, 'latest' (or None), or 'best' (the
    lowest eval top-1 error); NoCheckpointError when there is none."""
    steps = sorted(self.manager.all_steps())
    if not steps:
      raise NoCheckpointError(f'{self.directory} has no checkpoint; train first')
    if step in (None, 'latest'):
      return steps[-1]
    if step == 'best':
      best = self.manager.best_step()
      if best is None or best not in steps:
        raise NoCheckpointError(
            f'{self.directory} has no checkpoint saved with an evaluation, so none is best; give'
            ' a step or latest'
        )
      return best
    if not str(step).isdigit() or int(step) not in steps:
      raise NoCheckpointError(
          f'{self.directory} has no checkpoint {step!r}: give latest, best, or one of the steps'
          f' {", ".join(map(str, steps))}'
      )
    return int(step)

  @contextlib.contextmanager
  def _stop_on_failed_save(self):
    try:
      yield
    except Exception as e:  # pylint: disable=broad-except
      self.manager.reload()  # forgets the failed step: latest_step() is the last complete one
      raise CheckpointSaveError(
          f'saving checkpoint {self._writing} in {self.directory} failed ({_cause(e)}); the last'
          f' good checkpoint is step {self.latest_step()}. Free space or fix the directory, then'
          ' run the same command to resume from it'
      ) from e

  def save(self, step: int, state, meta: dict, eval_metrics: dict | None = None) -> None:
    """Starts writing in the background; training goes on while it writes. `eval_metrics`: the
    eval at this step, by which the best checkpoint is kept."""
    self.wait()  # orbax waits for the previous save anyway; this names the step if it failed
    self._writing = step
    args = ocp.args.Composite(state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta))
    # Numbers only: the eval's protocol name is in the run's config.
    metrics = {k: v for k, v in (eval_metrics or {}).items() if not isinstance(v, str)}
    with self._stop_on_failed_save():
      metrics = {**metrics, 'step': step} if metrics else None
      self.manager.save(step, args=args, metrics=metrics, force=True)

  def check_for_errors(self) -> None:
    """CheckpointSaveError if a background save has failed (cheap: called after every step)."""
    with self._stop_on_failed_save():
      self.manager.check_for_errors()

  def read_meta(self, step: int) -> dict:
    """The JSON record saved beside the state of `step` (model, classes, image shape, dataset)."""
    try:
      restored = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointMismatchError(
          f'checkpoint {self.directory / str(step)} cannot be read ({one_line(e, 200)}): it is'
          f' truncated or was not written by resnet_jax; move it out of {self.directory} to resume'
          ' from the one before, or use another --workdir'
      ) from e
    return restored['meta'] or {}

  def restore(self, abstract_state, meta: dict, step: int | None = None):
    """The state at `step` (default: latest), placed as `abstract_state`'s shardings say."""
    step = self.latest_step() if step is None else step
    where = self.directory / str(step)
    saved_meta = self.read_meta(step)
    if any(saved_meta.get(k) != meta.get(k) for k in ('model', 'num_classes', 'image_shape')):
      raise CheckpointMismatchError(
          f'checkpoint {where} holds {_describe(saved_meta)} but this run builds {_describe(meta)};'
          ' use another --workdir, or the config that wrote it'
      )
    try:
      restored = self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(abstract_state))
      )
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointMismatchError(
          f'checkpoint {where} does not fit this run of {_describe(meta)} or is damaged'
          f' ({one_line(e, 200)}); if the config changed use another --workdir, else move the'
          f' checkpoint out of {self.directory} to resume from the one before'
      ) from e
    return restored['state']

  def restore_as_saved(self, step: int, sharding: jax.sharding.Sharding):
    """Whatever state tree `step` holds, placed on `sharding`, without knowing its model: for
    fine-tuning and inspection. (A target is needed: a checkpoint written on other devices or by
    several processes cannot be restored onto its original devices.)"""
    where = self.directory / str(step)
    try:
      metadata = ocp.StandardCheckpointer().metadata(where / 'state').item_metadata
      target = jax.tree.map(
          lambda m: jax.ShapeDtypeStruct(m.shape, m.dtype, sharding=sharding),
          metadata,
          is_leaf=lambda m: hasattr(m, 'shape') and hasattr(m, 'dtype'),
      )
      return self.manager.restore(
          step, args=ocp.args.Composite(state=ocp.args.StandardRestore(target))
      )['state']
    except Exception as e:  # pylint: disable=broad-except
      raise CheckpointMismatchError(
          f'checkpoint {where} cannot be read ({one_line(e, 200)}): it is truncated or was not'
          ' written by resnet_jax; give another step or workdir'
      ) from e

  def wait(self) -> None:
    with self._stop_on_failed_save():
      self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.close()


def adapt_input_channels(kernel, channels: int):
  """A stem kernel (H, W, C_in, C_out) for images of `channels` channels (as timm adapts them).

  One channel: the sum over C_in, so a grey image gives exactly what its RGB copy gave. More
  channels: C_in's kernels repeated and scaled by C_in / channels, which keeps the activations'
  scale for inputs of the same statistics.
  """
  have = kernel.shape[2]
  if channels == 1:
    return kernel.sum(axis=2, keepdims=True)
  repeats = -(-channels // have)
  return jnp.tile(kernel, (1, 1, repeats, 1))[:, :, :channels] * (have / channels)


def fine_tuning_source(source) -> tuple[epath.Path, str]:
  """(workdir, step) that --config.init_from names: a workdir (its latest checkpoint), or one of
  its step directories, `DIR/checkpoints/1500`, or `DIR/checkpoints/best`."""
  path, step = absolute_path(source), 'latest'
  if path.parent.name == 'checkpoints' and not (path / 'checkpoints').exists():
    path, step = path.parent.parent, path.name  # a step directory was given
  if not path.exists():
    raise NoCheckpointError(
        f'--config.init_from={source} does not exist; give the workdir of a finished run'
    )
  return path, step


def _module_names(keys) -> str:
  """The modules of flattened variable keys, ('params', 'stage1_block2', ...) -> 'stage1_block2',
  at most six, in order."""
  names = list(dict.fromkeys('/'.join(key[1:2]) for key in keys))
  return ', '.join(names[:6]) + (f', ... ({len(names)} modules)' if len(names) > 6 else '')


def _fit(key, ours, theirs):
  """(the array to start from, how it was taken): 'loaded', 'head' (another number of classes:
  a new classifier, the paper's transfer setting), 'stem' (another number of image channels:
  adapt_input_channels), 'missing' or 'shape' (neither: ours stays fresh)."""
  if theirs is None:
    return ours, 'missing'
  if theirs.shape == ours.shape:
    return theirs.astype(ours.dtype), 'loaded'
  if key[1] == 'head':
    return ours, 'head'
  same_but_channels = theirs.shape[:2] + theirs.shape[3:] == ours.shape[:2] + ours.shape[3:]
  if key[1:] == ('stem_conv', 'kernel') and same_but_channels:
    return adapt_input_channels(theirs, ours.shape[2]).astype(ours.dtype), 'stem'
  return ours, 'shape'


def _fine_tuning_report(where, how: dict, unfit: list, left_out: list) -> list[str]:
  """The console's lines: what init_from loaded, adapted and re-initialised."""
  kinds = list(how.values())
  lines = [f'fine-tuning from {where}: loaded {kinds.count("loaded")} of {len(how)} arrays']
  if 'head' in kinds:
    lines.append('  re-initialised the classifier (head): another number of classes')
  if 'stem' in kinds:
    lines.append('  adapted the stem (stem_conv) to another number of image channels')
  if unfit:
    lines.append(
        f'  re-initialised {len(unfit)} arrays it lacks or holds in another shape:'
        f' {_module_names(unfit)}'
    )
  if left_out:
    lines.append(
        f'  left out {len(left_out)} of its arrays this model lacks: {_module_names(left_out)}'
    )
  return lines


def restore_for_fine_tuning(
    source, params, batch_stats, sharding: jax.sharding.Sharding, *, partial: bool = False
):
  """(params, batch_stats, step, report): the variables of the checkpoint --config.init_from names
  that match ours by name and shape, and the lines saying what was loaded.

  The classifier head keeps its fresh initialisation when the number of classes differs (the
  paper's transfer setting), and the stem is adapted to another number of image channels
  (`adapt_input_channels`); convolutions do not depend on the image size, so a net trained at
  224 px starts a 32 px one. Any other variable that does not match (a deeper or another
  network) is an error, unless `partial` (--config.init_from_partial): then ours stays fresh.
  """
  source, step = fine_tuning_source(source)
  checkpoints = Checkpoints(source, read_only=True)
  try:
    step = checkpoints.find_step(step)
    saved = checkpoints.restore_as_saved(step, sharding)
  except NoCheckpointError as e:
    raise NoCheckpointError(f'--config.init_from: {e}') from None
  finally:
    checkpoints.close()
  ours = traverse_util.flatten_dict({'params': params, 'batch_stats': batch_stats})
  theirs = traverse_util.flatten_dict({k: saved.get(k, {}) for k in ('params', 'batch_stats')})
  fitted = {key: _fit(key, value, theirs.get(key)) for key, value in ours.items()}
  how = {key: kind for key, (_, kind) in fitted.items()}
  left_out = [key for key in theirs if key not in ours]
  unfit = [key for key, kind in how.items() if kind in ('missing', 'shape')]
  if (unfit or left_out) and not partial:
    raise CheckpointMismatchError(
        f'--config.init_from={source} does not fit this model: it lacks {len(unfit)} of the'
        f" model's arrays or holds them in another shape ({_module_names(unfit) or 'none'}), and"
        f' {len(left_out)} of its arrays are not in the model'
        f' ({_module_names(left_out) or "none"});'
        ' give a checkpoint of the same network, or load what matches and re-initialise the rest'
        ' with --config.init_from_partial=True'
    )
  taken = traverse_util.unflatten_dict({key: value for key, (value, _) in fitted.items()})
  report = _fine_tuning_report(f'{source}/checkpoints/{step}', how, unfit, left_out)
  return taken['params'], taken.get('batch_stats', {}), step, report
