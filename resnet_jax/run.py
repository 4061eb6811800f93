"""One resolved run: the config read, checked and derived once.

`resolve(config, dataset=..., device_count=..., process_count=...)` turns the ml_collections config,
the dataset's facts and the device and process counts into a frozen `Run`. Every field is checked
there, once, with a one-line UserError naming the flag and the fix; everything after reads the
`Run` (model, batch sizes, steps, schedule in steps, optimizer, parallelism, loop cadence) and
derives nothing again.
"""

import dataclasses
from typing import Any

import ml_collections

from resnet_jax import cpu_backend, models, parallel
from resnet_jax import evaluation as evaluation_lib
from resnet_jax.errors import UserError

SCHEDULES = ('piecewise', 'cosine')
# 'scale_augmentation' is the paper's ImageNet augmentation (section 3.4), 'inception_crop'
# torchvision's (called 'imagenet' before the paper's existed); both read encoded images.
AUGMENTS = ('cifar', 'scale_augmentation', 'inception_crop', 'none')
ENCODED_AUGMENTS = ('scale_augmentation', 'inception_crop')
NORMALISATIONS = ('per_channel', 'per_pixel_mean')
LIGHTING_PCAS = ('train_split', 'fb_resnet_torch')
DTYPES = ('float32', 'bfloat16', 'float16')


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


def _choice(section, field: str, choices) -> str:
  value = section[field]
  _require(
      value in choices,
      f'--config.{section.name}.{field}={value!r} is not one of {", ".join(map(repr, choices))}',
  )
  return value


def _not_negative(section, field: str, *, positive: bool = False):
  value = section[field]
  _require(
      value > 0 if positive else value >= 0,
      f'--config.{section.name}.{field}={value} must '
      f'{"be positive" if positive else "not be negative"}',
  )
  return value


def _numbers(section, field: str) -> tuple | None:
  value = section[field]
  if value is None:
    return None
  _require(
      not isinstance(value, str)
      and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value),
      f'--config.{section.name}.{field}={value!r} must be numbers, e.g. '
      f"--config.{section.name}.{field}='(32000, 48000)'",
  )
  return tuple(value)


class _Section:
  """A config section that knows its name, for error messages."""

  def __init__(self, name: str, section: ml_collections.ConfigDict):
    self.name, self._section = name, section

  def __getitem__(self, field: str):
    return self._section[field]


def resolve_model(config: ml_collections.ConfigDict) -> ModelSpec:
  _choice(_Section('model', config.model), 'dtype', DTYPES)
  spec = ModelSpec(fields=tuple(config.model.items()))
  spec.build(num_classes=1)  # models.create_model checks the preset, shortcut and kernel gradient
  return spec


def resolve_optimizer(config: ml_collections.ConfigDict) -> OptimizerSpec:
  opt = _Section('optimizer', config.optimizer)
  _require(
      0 <= opt['momentum'] < 1, f'--config.optimizer.momentum={opt["momentum"]} must be in [0, 1)'
  )
  return OptimizerSpec(
      momentum=float(opt['momentum']),
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
    size = _not_negative(train, field, positive=True)
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
      f'dataset.num_shards={num_shards} data shards; use a multiple of {num_shards}',
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


def _schedule(config, batch: BatchSpec) -> ScheduleSpec:
  train, schedule = _Section('train', config.train), _Section('schedule', config.schedule)
  _not_negative(train, 'num_epochs')
  if train['num_epochs'] > 0:
    num_steps = int(round(train['num_epochs'] * batch.steps_per_epoch))
  else:
    num_steps = train['num_steps']
  _require(
      num_steps > 0, '--config.train.num_steps must be positive (or set --config.train.num_epochs)'
  )
  name = _choice(schedule, 'name', SCHEDULES)
  base_lr = _not_negative(schedule, 'base_lr')
  if _not_negative(schedule, 'scale_lr_by_batch'):
    base_lr *= batch.size / schedule['scale_lr_by_batch']  # the linear scaling rule
  boundaries = _numbers(schedule, 'boundaries') or ()
  epochs = _numbers(schedule, 'boundaries_epochs')
  if epochs is not None:
    boundaries = tuple(round(e * batch.steps_per_epoch) for e in epochs)
  warmup_steps = _not_negative(schedule, 'warmup_steps') or round(
      _not_negative(schedule, 'warmup_epochs') * batch.steps_per_epoch
  )
  return ScheduleSpec(
      name=name,
      base_lr=float(base_lr),
      boundaries=tuple(int(b) for b in boundaries),
      decay_factor=float(schedule['decay_factor']),
      warmup_steps=int(warmup_steps),
      num_steps=int(num_steps),
      warmup_lr=float(_not_negative(schedule, 'warmup_lr')),
      warmup_until_error=float(schedule['warmup_until_error']),
  )


def _loop(config) -> LoopSpec:
  train = _Section('train', config.train)
  _require(
      0 <= train['label_smoothing'] < 1,
      f'--config.train.label_smoothing={train["label_smoothing"]} must be in [0, 1)',
  )
  return LoopSpec(
      **{
          f: _not_negative(train, f, positive=True)
          for f in (
              'log_every_steps',
              'eval_every_steps',
              'checkpoint_every_steps',
              'keep_checkpoints',
          )
      },
      async_checkpoints=bool(train['async_checkpoints']),
      max_skipped_steps=int(_not_negative(train, 'max_skipped_steps')),
      label_smoothing=float(train['label_smoothing']),
      log_diagnostics=bool(train['log_diagnostics']),
  )


def resolve_parallelism(config: ml_collections.ConfigDict) -> ParallelSpec:
  parallelism = _Section('parallelism', config.parallelism)
  return ParallelSpec(
      mode=_choice(parallelism, 'mode', parallel.MODES),
      batch_norm=_choice(parallelism, 'batch_norm', parallel.BATCH_NORMS),
      cpu_devices=int(_not_negative(parallelism, 'cpu_devices')),
      cpu_backend=_choice(parallelism, 'cpu_backend', cpu_backend.CHOICES),
  )


def check_dataset_fields(dataset: ml_collections.ConfigDict) -> None:
  """The dataset fields that need no data to check (input_pipeline.resolve_data reads the rest)."""
  section = _Section('dataset', dataset)
  _require(
      dataset.augment != 'imagenet',
      "--config.dataset.augment='imagenet' is now 'inception_crop' (torchvision's random-resized"
      " crop) or 'scale_augmentation' (the paper's, section 3.4)",
  )
  _choice(section, 'augment', AUGMENTS)
  _not_negative(section, 'num_shards')
  _not_negative(section, 'pad')
  _choice(section, 'normalisation', NORMALISATIONS)
  _choice(section, 'lighting_pca', LIGHTING_PCAS)
  _not_negative(section, 'lighting_std')
  low_high = _numbers(section, 'scale_range') or ()
  _require(
      len(low_high) == 2 and all(int(v) == v for v in low_high) and 0 < low_high[0] <= low_high[1],
      f'--config.dataset.scale_range={tuple(low_high)!r} must be two whole numbers 0 < low <= high,'
      " e.g. --config.dataset.scale_range='(256, 480)'",
  )


def check_without_data(
    config: ml_collections.ConfigDict, *, device_count: int, process_count: int
) -> None:
  """Everything `resolve` checks that needs no data: run first, a mistake is reported before any
  data is read."""
  _batch_sizes(config, device_count, process_count)
  resolve_model(config)
  resolve_optimizer(config)
  resolve_parallelism(config)
  check_dataset_fields(config.dataset)
  evaluation_lib.resolve_evaluation(config)
  _loop(config)
  _schedule(config, BatchSpec(1, 1, 1, 1, 1, 1, 1))  # the schedule's own fields


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
      model=resolve_model(config),
      dataset=dataset,
      batch=batch,
      schedule=_schedule(config, batch),
      optimizer=resolve_optimizer(config),
      parallelism=resolve_parallelism(config),
      loop=_loop(config),
      evaluation=evaluation_lib.resolve_evaluation(config),
  )
