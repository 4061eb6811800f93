"""One resolved run: the config read, checked and derived once.

`check_config(config)` checks every field that needs neither devices nor data (types, ranges,
orderings, facts across fields) with a one-line UserError naming the flag and the fix; main.py runs
it as soon as the config is built, before anything is started or created
(tests/test_config_checks.py walks every field of resnet_jax/config/fields.py).
`resolve(config, dataset=..., device_count=..., process_count=...)` adds what the devices and the
data decide and turns it all into a frozen `Run`; everything after reads the `Run` (model, batch
sizes, steps, schedule in steps, optimizer, parallelism, loop cadence) and derives nothing again.
"""

import dataclasses
import math
import os
from typing import Any

import ml_collections

from resnet_jax.training import cpu_backend, parallel
from resnet_jax import models
from resnet_jax.training import evaluation as evaluation_lib
from resnet_jax.common.errors import UserError

SCHEDULES = ('piecewise', 'cosine')
# 'scale_augmentation' is the paper's ImageNet augmentation (section 3.4), 'inception_crop'
# torchvision's (called 'imagenet' before the paper's existed); both read encoded images.
AUGMENTS = ('cifar', 'scale_augmentation', 'inception_crop', 'none')
ENCODED_AUGMENTS = ('scale_augmentation', 'inception_crop')
NORMALISATIONS = ('per_channel', 'per_pixel_mean')
LIGHTING_PCAS = ('train_split', 'fb_resnet_torch')
DTYPES = ('float32', 'bfloat16')


@dataclasses.dataclass(frozen=True)
class DatasetFacts:
  """What the data holds, read from the dataset (input_pipeline.dataset_facts) or made up by a
  benchmark."""

  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) the model sees, after crop or resize
  num_train_examples: int  # of train_split
  num_eval_examples: int  # of eval_split


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """The dataset section resolved by the input pipeline (input_pipeline.resolve_data): every field
  typed and filled, and the two that are read from the data, the image shape and the normalisation.
  The pipeline reads only this."""

  name: str
  data_dir: str | None
  manual_dir: str | None
  train_split: str
  eval_split: str
  augment: str  # AUGMENTS
  pad: int
  flip: bool
  shuffle_buffer: int
  cache: bool
  image_shape: tuple[int, int, int]  # (H, W, C) the model sees, after crop or resize
  mean: tuple[float, ...]  # per channel, of x / 255 ('per_pixel_mean': the mean image's average)
  std: tuple[float, ...]  # ('per_pixel_mean': ones)
  normalisation: str = 'per_channel'  # NORMALISATIONS
  scale_range: tuple[int, int] = (256, 480)  # scale_augmentation's shorter sides, both included
  lighting_std: float = 0.0  # PCA colour augmentation (0 = off)
  lighting_eigval: tuple[float, ...] = ()  # largest first
  lighting_eigvec: tuple[tuple[float, ...], ...] = ()  # rows: R, G, B; column j: eigval[j]'s
  # 'per_pixel_mean': float32 [H, W, C] of x / 255 over the training split; an array, so left out
  # of comparisons (the fields above determine it)
  pixel_mean: Any = dataclasses.field(default=None, compare=False, repr=False)

  @property
  def encoded(self) -> bool:
    """Images are read as their encoded bytes and decoded after the shuffle (ImageNet-style)."""
    return self.augment in ENCODED_AUGMENTS


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  fields: tuple[tuple[str, Any], ...]  # the config's model section ('' = the preset's own value)

  @property
  def name(self) -> str:
    return dict(self.fields)['name']

  def build(self, num_classes: int, **extra) -> models.ResNet:
    return models.create_model_from_config(dict(self.fields), num_classes=num_classes, **extra)


@dataclasses.dataclass(frozen=True)
class BatchSpec:
  """The global batch and how it is read: train_split is cut into `num_shards` equal shares (the
  remainder dropped), each read as a stream of `per_shard` examples a step; a process reads
  `num_shards / process_count` streams."""

  size: int  # global: over all devices and processes
  per_process: int  # what each process reads a step
  num_shards: int
  per_shard: int
  steps_per_epoch: int  # steps in one pass over every shard's share
  eval_size: int
  eval_per_process: int


@dataclasses.dataclass(frozen=True)
class ScheduleSpec:
  name: str  # 'piecewise' | 'cosine'
  base_lr: float  # after the linear scaling rule, if asked for
  boundaries: tuple[int, ...]  # piecewise: steps where the lr is multiplied by decay_factor
  decay_factor: float
  warmup_steps: int  # cosine: linear warm-up
  num_steps: int
  warmup_lr: float  # the paper's ResNet-110 warm-up (0 = off) ...
  warmup_until_error: float  # ... until the training error is under this


@dataclasses.dataclass(frozen=True)
class OptimizerSpec:
  momentum: float
  nesterov: bool
  weight_decay: float
  decoupled_weight_decay: bool
  weight_decay_on_all_params: bool


@dataclasses.dataclass(frozen=True)
class ParallelSpec:
  mode: str  # 'jit' | 'pmap'
  batch_norm: str  # 'global' | 'per_device'
  cpu_devices: int  # 0: auto (parallel.auto_cpu_devices)
  cpu_backend: str  # cpu_backend.CHOICES


@dataclasses.dataclass(frozen=True)
class LoopSpec:
  log_every_steps: int
  eval_every_steps: int
  checkpoint_every_steps: int
  keep_checkpoints: int
  async_checkpoints: bool
  max_skipped_steps: int
  label_smoothing: float
  log_diagnostics: bool


@dataclasses.dataclass(frozen=True)
class Run:
  seed: int
  init_from: str
  init_from_partial: bool
  model: ModelSpec
  dataset: DatasetFacts
  batch: BatchSpec
  schedule: ScheduleSpec
  optimizer: OptimizerSpec
  parallelism: ParallelSpec
  loop: LoopSpec
  evaluation: evaluation_lib.EvalSpec = evaluation_lib.EvalSpec()


def _require(ok: bool, message: str) -> None:
  if not ok:
    raise UserError(message)


class _Section:
  """A config section that knows its name, for error messages."""

  def __init__(self, name: str, section: ml_collections.ConfigDict):
    self.name, self._section = name, section

  def __getitem__(self, field: str):
    return self._section[field]

  def flag(self, field: str) -> str:
    return f'--config.{self.name}.{field}'


def _choice(section, field: str, choices) -> str:
  value = section[field]
  _require(
      value in choices,
      f'{section.flag(field)}={value!r} is not one of {", ".join(map(repr, choices))}',
  )
  return value


def _is_number(value, integer: bool = False) -> bool:
  kinds = int if integer else (int, float)
  return isinstance(value, kinds) and not isinstance(value, bool)


def _not_negative(section, field: str, *, positive: bool = False, integer: bool = False):
  """A finite number (an integer if `integer`), >= 0 (> 0 if `positive`)."""
  value = section[field]
  kind = 'an integer' if integer else 'a finite number'
  _require(
      _is_number(value, integer) and math.isfinite(value),
      f'{section.flag(field)}={value!r} must be {kind}',
  )
  _require(
      value > 0 if positive else value >= 0,
      f'{section.flag(field)}={value!r} must {"be positive" if positive else "not be negative"}',
  )
  return value


def _fraction(section, field: str) -> float:
  """A number in [0, 1)."""
  value = section[field]
  _require(
      _is_number(value) and 0 <= value < 1, f'{section.flag(field)}={value!r} must be in [0, 1)'
  )
  return float(value)


def _numbers(section, field: str) -> tuple | None:
  value = section[field]
  if value is None:
    return None
  _require(
      not isinstance(value, str) and all(_is_number(v) and math.isfinite(v) for v in value),
      f'{section.flag(field)}={value!r} must be numbers, e.g. '
      f"{section.flag(field)}='(32000, 48000)'",
  )
  return tuple(value)


def _increasing(section, field: str, *, steps: bool) -> tuple | None:
  """Positive, strictly increasing numbers (schedule boundaries; whole numbers if `steps`): an
  unsorted or repeated boundary is a typo that would otherwise train at a rate nobody asked for."""
  values = _numbers(section, field)
  if values is None:
    return None
  _require(
      not steps or all(float(v).is_integer() for v in values),
      f'{section.flag(field)}={values!r} must be whole steps',
  )
  _require(
      all(v > 0 for v in values),
      f'{section.flag(field)}={values!r} must be positive: a boundary at step 0 or before decays'
      ' the learning rate before training starts',
  )
  _require(
      all(a < b for a, b in zip(values, values[1:])),
      f'{section.flag(field)}={values!r} must increase strictly, e.g. '
      f"{section.flag(field)}='{tuple(sorted(set(values)))}'",
  )
  return values


def _text(section, field: str) -> str:
  value = section[field]
  _require(
      isinstance(value, str) and value.strip() != '',
      f'{section.flag(field)}={value!r} must not be empty',
  )
  return value


def _directory(section, field: str) -> None:
  """An optional directory that must not be an existing file (a mistyped path)."""
  value = section[field]
  if value is None:
    return
  _require(
      isinstance(value, str) and value.strip() != '' and not os.path.isfile(value),
      f'{section.flag(field)}={value!r} must name a directory (or be left unset)',
  )


def resolve_model(config: ml_collections.ConfigDict) -> ModelSpec:
  model = _Section('model', config.model)
  # float16's range needs loss scaling (flax's examples scale dynamically on GPU), which this
  # trainer does not do: refused rather than trained into overflowing gradients.
  _require(
      model['dtype'] != 'float16',
      "--config.model.dtype='float16' needs loss scaling, which this trainer does not do; use"
      " --config.model.dtype=bfloat16 (float32's range, no scaling needed)",
  )
  _choice(model, 'dtype', DTYPES)
  _choice(model, 'shortcut', ('', *models.SHORTCUTS))  # '': the preset's own
  _choice(model, 'conv_kernel_grad', tuple(models.CONV_KERNEL_GRADS))
  try:
    models.model_spec(model['name'])
  except UserError as e:
    raise UserError(f'--config.model.name={model["name"]!r}: {e}') from None
  spec = ModelSpec(fields=tuple(config.model.items()))
  net = spec.build(num_classes=1)  # models.create_model checks the preset
  _require(
      not model['stride_in_1x1'] or net.block == 'bottleneck',
      '--config.model.stride_in_1x1=True places the stride of bottleneck blocks, and'
      f' {model["name"]} has {net.block} blocks; leave it False, or use resnet50/101/152',
  )
  return spec


def resolve_optimizer(config: ml_collections.ConfigDict) -> OptimizerSpec:
  opt = _Section('optimizer', config.optimizer)
  return OptimizerSpec(
      momentum=_fraction(opt, 'momentum'),
      nesterov=bool(opt['nesterov']),
      weight_decay=float(_not_negative(opt, 'weight_decay')),
      decoupled_weight_decay=bool(opt['decoupled_weight_decay']),
      weight_decay_on_all_params=bool(opt['weight_decay_on_all_params']),
  )


def _batch_sizes(config, device_count: int, process_count: int) -> tuple[int, int, int]:
  """(batch_size, eval_batch_size, num_shards), checked against the devices and processes."""
  train = _Section('train', config.train)
  sizes = []
  for field in ('batch_size', 'eval_batch_size'):
    size = _not_negative(train, field, positive=True, integer=True)
    _require(
        size % device_count == 0,
        f'--config.train.{field}={size} does not divide over the {device_count} devices; use a '
        f'multiple of {device_count}, e.g. --config.train.{field}='
        f'{max(device_count, size // device_count * device_count)}',
    )
    sizes.append(size)
  num_shards = config.dataset.num_shards or process_count  # 0: one stream per process
  _require(
      num_shards % process_count == 0,
      f'--config.dataset.num_shards={num_shards} does not divide over {process_count} '
      f'processes; use a multiple of {process_count}',
  )
  _require(
      sizes[0] % num_shards == 0,
      f'--config.train.batch_size={sizes[0]} does not split into '
      f'--config.dataset.num_shards={num_shards} data shards; use a multiple of {num_shards}',
  )
  return sizes[0], sizes[1], num_shards


def _batch(
    config, dataset: DatasetFacts, device_count: int, process_count: int, training: bool
) -> BatchSpec:
  size, eval_size, num_shards = _batch_sizes(config, device_count, process_count)
  per_shard = size // num_shards
  share = dataset.num_train_examples // num_shards
  _require(
      share >= per_shard or not training,
      f'each of the {num_shards} data shards of train_split holds {share} examples, fewer than its'
      f' batch of {per_shard}; use a smaller --config.train.batch_size or fewer'
      ' --config.dataset.num_shards',
  )
  return BatchSpec(
      size=size,
      per_process=size // process_count,
      num_shards=num_shards,
      per_shard=per_shard,
      steps_per_epoch=max(1, share // per_shard),  # below 1 only when not training
      eval_size=eval_size,
      eval_per_process=eval_size // process_count,
  )


def _num_steps(config, batch: BatchSpec) -> int:
  train = _Section('train', config.train)
  if _not_negative(train, 'num_epochs') > 0:
    return int(round(train['num_epochs'] * batch.steps_per_epoch))
  _require(
      _is_number(train['num_steps'], integer=True) and train['num_steps'] > 0,
      f'--config.train.num_steps={train["num_steps"]!r} must be a positive integer (or set'
      ' --config.train.num_epochs)',
  )
  return train['num_steps']


def _boundaries(schedule, batch: BatchSpec | None) -> tuple[int, ...]:
  """The piecewise schedule's steps; `batch` None: the fields checked, epochs not converted."""
  boundaries = _increasing(schedule, 'boundaries', steps=True) or ()
  epochs = _increasing(schedule, 'boundaries_epochs', steps=False)
  if epochs is None or batch is None:
    return boundaries
  boundaries = tuple(round(e * batch.steps_per_epoch) for e in epochs)
  _require(
      boundaries[0] > 0 and len(set(boundaries)) == len(boundaries),
      f'--config.schedule.boundaries_epochs={epochs} fall on the steps {boundaries} at'
      f' {batch.steps_per_epoch} steps an epoch: each must be a later step than the one before;'
      ' space them further apart',
  )
  return boundaries


def _warmup_steps(schedule, batch: BatchSpec | None) -> int:
  steps = _not_negative(schedule, 'warmup_steps', integer=True)
  epochs = _not_negative(schedule, 'warmup_epochs')
  given = f'warmup_steps={steps}' if steps else f'warmup_epochs={epochs}'
  _require(
      schedule['name'] == 'cosine' or not (steps or epochs),
      f"--config.schedule.{given} is the cosine schedule's linear warm-up, which the piecewise"
      ' schedule does not have; set --config.schedule.name=cosine, or --config.schedule.warmup_lr'
      " for the paper's constant warm-up",
  )
  return steps or round(epochs * (batch.steps_per_epoch if batch else 1))


def _schedule(config, batch: BatchSpec | None) -> ScheduleSpec:
  """The schedule in steps; `batch` None (no data yet): its fields checked, nothing derived."""
  schedule = _Section('schedule', config.schedule)
  num_steps = _num_steps(config, batch or BatchSpec(1, 1, 1, 1, 1, 1, 1))
  name = _choice(schedule, 'name', SCHEDULES)
  base_lr = _not_negative(schedule, 'base_lr')
  if _not_negative(schedule, 'scale_lr_by_batch', integer=True) and batch is not None:
    base_lr *= batch.size / schedule['scale_lr_by_batch']  # the linear scaling rule
  warmup_steps = _warmup_steps(schedule, batch)
  _require(
      batch is None or warmup_steps < num_steps,
      f'the warm-up ({warmup_steps} steps) is not shorter than the run ({num_steps} steps); lower'
      ' --config.schedule.warmup_steps or --config.schedule.warmup_epochs',
  )
  return ScheduleSpec(
      name=name,
      base_lr=float(base_lr),
      boundaries=tuple(int(b) for b in _boundaries(schedule, batch)),
      decay_factor=float(_not_negative(schedule, 'decay_factor', positive=True)),
      warmup_steps=int(warmup_steps),
      num_steps=int(num_steps),
      warmup_lr=float(_not_negative(schedule, 'warmup_lr')),
      # 0: the warm-up never ends; above 1: it ends after the first step
      warmup_until_error=float(_not_negative(schedule, 'warmup_until_error')),
  )


def _loop(config) -> LoopSpec:
  train = _Section('train', config.train)
  return LoopSpec(
      **{
          f: _not_negative(train, f, positive=True, integer=True)
          for f in (
              'log_every_steps',
              'eval_every_steps',
              'checkpoint_every_steps',
              'keep_checkpoints',
          )
      },
      async_checkpoints=bool(train['async_checkpoints']),
      max_skipped_steps=int(_not_negative(train, 'max_skipped_steps', integer=True)),
      label_smoothing=_fraction(train, 'label_smoothing'),
      log_diagnostics=bool(train['log_diagnostics']),
  )


def resolve_parallelism(config: ml_collections.ConfigDict) -> ParallelSpec:
  parallelism = _Section('parallelism', config.parallelism)
  return ParallelSpec(
      mode=_choice(parallelism, 'mode', parallel.MODES),
      batch_norm=_choice(parallelism, 'batch_norm', parallel.BATCH_NORMS),
      cpu_devices=int(_not_negative(parallelism, 'cpu_devices', integer=True)),
      cpu_backend=_choice(parallelism, 'cpu_backend', cpu_backend.CHOICES),
  )


def _normalisation(section) -> None:
  mean, std = _numbers(section, 'mean'), _numbers(section, 'std')
  _require(
      std is None or all(s > 0 for s in std),
      f'--config.dataset.std={std} must be positive: images are divided by it',
  )
  _require(
      mean is None or std is None or len(mean) == len(std),
      f'--config.dataset.mean={mean} and --config.dataset.std={std} must have one value per'
      ' channel each',
  )


def check_dataset_fields(dataset: ml_collections.ConfigDict) -> None:
  """The dataset fields that need no data to check (input_pipeline.resolve_data reads the rest)."""
  section = _Section('dataset', dataset)
  _require(
      dataset.augment != 'imagenet',
      "--config.dataset.augment='imagenet' is now 'inception_crop' (torchvision's random-resized"
      " crop) or 'scale_augmentation' (the paper's, section 3.4)",
  )
  _text(section, 'name')
  _text(section, 'train_split')
  _text(section, 'eval_split')
  _directory(section, 'data_dir')
  _directory(section, 'manual_dir')
  _choice(section, 'augment', AUGMENTS)
  _not_negative(section, 'num_shards', integer=True)
  _not_negative(section, 'pad', integer=True)
  _not_negative(section, 'shuffle_buffer', positive=True, integer=True)
  if section['image_size'] is not None:
    _not_negative(section, 'image_size', positive=True, integer=True)
  _normalisation(section)
  _choice(section, 'normalisation', NORMALISATIONS)
  _choice(section, 'lighting_pca', LIGHTING_PCAS)
  _not_negative(section, 'lighting_std')
  low_high = _numbers(section, 'scale_range') or ()
  _require(
      len(low_high) == 2 and all(int(v) == v for v in low_high) and 0 < low_high[0] <= low_high[1],
      f'--config.dataset.scale_range={tuple(low_high)!r} must be two whole numbers 0 < low <= high,'
      " e.g. --config.dataset.scale_range='(256, 480)'",
  )


def _check_run_fields(config) -> None:
  _require(
      _is_number(config.seed, integer=True) and 0 <= config.seed < 2**31,
      f'--config.seed={config.seed!r} must be an integer in [0, 2**31)',
  )
  _require(
      isinstance(config.init_from, str), f'--config.init_from={config.init_from!r} must be a path'
  )


def check_config(config: ml_collections.ConfigDict) -> None:
  """Every field of the config that needs neither devices nor data: main.py runs this as soon as
  the config is built, so a mistake is one line before anything is started or created."""
  _check_run_fields(config)
  resolve_model(config)
  resolve_optimizer(config)
  resolve_parallelism(config)
  check_dataset_fields(config.dataset)
  evaluation_lib.resolve_evaluation(config)
  train = _Section('train', config.train)
  for field in ('batch_size', 'eval_batch_size'):
    _not_negative(train, field, positive=True, integer=True)
  _loop(config)
  _schedule(config, None)


def check_without_data(
    config: ml_collections.ConfigDict, *, device_count: int, process_count: int
) -> None:
  """Everything `resolve` checks that needs no data: run first, a mistake is reported before any
  data is read."""
  check_config(config)
  _batch_sizes(config, device_count, process_count)


def resolve(
    config: ml_collections.ConfigDict,
    *,
    dataset: DatasetFacts,
    device_count: int,
    process_count: int,
    training: bool = True,
) -> Run:
  """The whole run, checked: see the module docstring. `training=False` (eval-only) does not ask
  the training split to hold a batch."""
  batch = _batch(config, dataset, device_count, process_count, training)
  return Run(
      seed=int(config.seed),
      init_from=config.init_from or '',
      init_from_partial=bool(config.init_from_partial),
      model=resolve_model(config),
      dataset=dataset,
      batch=batch,
      schedule=_schedule(config, batch),
      optimizer=resolve_optimizer(config),
      parallelism=resolve_parallelism(config),
      loop=_loop(config),
      evaluation=evaluation_lib.resolve_evaluation(config),
  )
