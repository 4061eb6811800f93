"""The config resolved once, at the boundary: `check` then `resolve`, and nothing after reads it.

  check(config) -> Fields         stage 1: every field that needs neither devices nor data (types,
                                  ranges, orderings, facts across fields); main.py runs it as soon
                                  as the config is built, before JAX, data or the workdir
  resolve(config or Fields, device_count=, process_count=) -> Run
                                  stage 2: the data source's spec and facts (TFDS reads, prepares
                                  or describes the dataset; synthetic data makes them up);
                                  stage 3: the batch over devices, processes and data shards, and
                                  the schedule in steps; then the record a checkpoint keeps

Each mistake is a one-line UserError naming the flag and the fix (tests/test_config_checks.py walks
every field of resnet_jax/config/fields.py). The config's JSON goes into the Run's record: the
record (config.json, checkpoints, TensorBoard's hparams) is the only later reader.
"""

import json
import math
import os

import ml_collections

from resnet_jax import models
from resnet_jax.common.errors import UserError
from resnet_jax.config.run import (
    DERIVED,
    BatchSpec,
    DatasetFacts,
    EvalSpec,
    Fields,
    LoopSpec,
    ModelSpec,
    OptimizerSpec,
    ParallelSpec,
    Run,
    ScheduleFields,
    ScheduleSpec,
    Section,
)
from resnet_jax.data import pipeline, views
from resnet_jax.training import cpu_backend, parallel

SCHEDULES = ('piecewise', 'cosine')
AUGMENTS = ('cifar', 'scale_augmentation', 'inception_crop', 'none')
NORMALISATIONS = ('per_channel', 'per_pixel_mean')
LIGHTING_PCAS = ('train_split', 'fb_resnet_torch')
DTYPES = ('float32', 'bfloat16')


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


# ------------------------------------------------------------------ stage 1: the fields


def _run_fields(config) -> None:
  _require(
      _is_number(config.seed, integer=True) and 0 <= config.seed < 2**31,
      f'--config.seed={config.seed!r} must be an integer in [0, 2**31)',
  )
  _require(
      isinstance(config.init_from, str), f'--config.init_from={config.init_from!r} must be a path'
  )


def _model(config: ml_collections.ConfigDict) -> ModelSpec:
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
  known = set(models.ResNet.__dataclass_fields__) - {'parent'}
  unknown = sorted(set(config.model) - known)
  _require(
      not unknown,
      f'--config.model.{unknown[0] if unknown else ""} is not a field of models.ResNet; remove it'
      ' from the config file',
  )
  block = models.model_spec(model['name'])['block']
  _require(
      not model['stride_in_1x1'] or block == 'bottleneck',
      '--config.model.stride_in_1x1=True places the stride of bottleneck blocks, and'
      f' {model["name"]} has {block} blocks; leave it False, or use resnet50/101/152',
  )
  return ModelSpec(fields=tuple(config.model.items()))


def _optimizer(config: ml_collections.ConfigDict) -> OptimizerSpec:
  opt = _Section('optimizer', config.optimizer)
  return OptimizerSpec(
      momentum=_fraction(opt, 'momentum'),
      nesterov=bool(opt['nesterov']),
      weight_decay=float(_not_negative(opt, 'weight_decay')),
      decoupled_weight_decay=bool(opt['decoupled_weight_decay']),
      weight_decay_on_all_params=bool(opt['weight_decay_on_all_params']),
  )


def _parallelism(config: ml_collections.ConfigDict) -> ParallelSpec:
  parallelism = _Section('parallelism', config.parallelism)
  return ParallelSpec(
      mode=_choice(parallelism, 'mode', parallel.MODES),
      batch_norm=_choice(parallelism, 'batch_norm', parallel.BATCH_NORMS),
      cpu_devices=int(_not_negative(parallelism, 'cpu_devices', integer=True)),
      cpu_backend=_choice(parallelism, 'cpu_backend', cpu_backend.CHOICES),
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


def _evaluation(config) -> EvalSpec:
  section = _Section('evaluation', config.evaluation)
  scales = section['scales']
  _require(
      not isinstance(scales, str)
      and len(scales) > 0
      and all(_is_number(s, integer=True) and s > 0 for s in scales)
      and len(set(scales)) == len(scales),
      f"{section.flag('scales')}={scales!r} must be distinct positive whole numbers, e.g."
      f" {section.flag('scales')}='(224, 256, 384, 480, 640)'",
  )
  return EvalSpec(
      protocol=_choice(section, 'protocol', views.PROTOCOLS),
      resize=int(_not_negative(section, 'resize', integer=True)),
      scales=tuple(int(s) for s in scales),
      forward_batch=int(_not_negative(section, 'forward_batch', positive=True, integer=True)),
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


def _dataset(config: ml_collections.ConfigDict) -> Section:
  """The dataset fields that need no data, checked; the data source reads the rest (its own
  fields, and what only the data can tell) in stage 2."""
  dataset = config.dataset
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
  return Section(dataset.items())


def _over_devices(fields: Fields, device_count: int, process_count: int) -> int:
  """The number of data shards, with the batch sizes checked against the devices and processes."""
  for field in ('batch_size', 'eval_batch_size'):
    size = getattr(fields, field)
    _require(
        size % device_count == 0,
        f'--config.train.{field}={size} does not divide over the {device_count} devices; use a '
        f'multiple of {device_count}, e.g. --config.train.{field}='
        f'{max(device_count, size // device_count * device_count)}',
    )
  num_shards = fields.num_shards or process_count  # 0: one stream per process
  _require(
      num_shards % process_count == 0,
      f'--config.dataset.num_shards={num_shards} does not divide over {process_count} '
      f'processes; use a multiple of {process_count}',
  )
  _require(
      fields.batch_size % num_shards == 0,
      f'--config.train.batch_size={fields.batch_size} does not split into '
      f'--config.dataset.num_shards={num_shards} data shards; use a multiple of {num_shards}',
  )
  return num_shards


def _train_length(config) -> tuple[int, float]:
  """(num_steps, num_epochs): the run's length in steps, or in epochs when num_epochs > 0."""
  train = _Section('train', config.train)
  num_epochs = float(_not_negative(train, 'num_epochs'))
  _require(
      num_epochs > 0 or (_is_number(train['num_steps'], integer=True) and train['num_steps'] > 0),
      f'--config.train.num_steps={train["num_steps"]!r} must be a positive integer (or set'
      ' --config.train.num_epochs)',
  )
  return (0 if num_epochs > 0 else int(train['num_steps'])), num_epochs


def _schedule_fields(config) -> ScheduleFields:
  schedule = _Section('schedule', config.schedule)
  name = _choice(schedule, 'name', SCHEDULES)
  warmup_steps = _not_negative(schedule, 'warmup_steps', integer=True)
  warmup_epochs = _not_negative(schedule, 'warmup_epochs')
  given = f'warmup_steps={warmup_steps}' if warmup_steps else f'warmup_epochs={warmup_epochs}'
  _require(
      name == 'cosine' or not (warmup_steps or warmup_epochs),
      f"--config.schedule.{given} is the cosine schedule's linear warm-up, which the piecewise"
      ' schedule does not have; set --config.schedule.name=cosine, or --config.schedule.warmup_lr'
      " for the paper's constant warm-up",
  )
  return ScheduleFields(
      name=name,
      base_lr=float(_not_negative(schedule, 'base_lr')),
      scale_lr_by_batch=int(_not_negative(schedule, 'scale_lr_by_batch', integer=True)),
      boundaries=tuple(int(b) for b in _increasing(schedule, 'boundaries', steps=True) or ()),
      boundaries_epochs=_increasing(schedule, 'boundaries_epochs', steps=False),
      decay_factor=float(_not_negative(schedule, 'decay_factor', positive=True)),
      warmup_steps=int(warmup_steps),
      warmup_epochs=float(warmup_epochs),
      warmup_lr=float(_not_negative(schedule, 'warmup_lr')),
      # 0: the warm-up never ends; above 1: it ends after the first step
      warmup_until_error=float(_not_negative(schedule, 'warmup_until_error')),
  )


# ------------------------------------------------------- stages 2 and 3: data, batch, steps


def _batch(
    fields: Fields, dataset: DatasetFacts, device_count: int, process_count: int, training: bool
) -> BatchSpec:
  num_shards = _over_devices(fields, device_count, process_count)
  size, eval_size = fields.batch_size, fields.eval_batch_size
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


def _schedule(fields: Fields, batch: BatchSpec) -> ScheduleSpec:
  """The schedule in steps, now that the batch (and so an epoch) is known."""
  schedule = fields.schedule
  num_steps = fields.num_steps or int(round(fields.num_epochs * batch.steps_per_epoch))
  base_lr = schedule.base_lr
  if schedule.scale_lr_by_batch:
    base_lr *= batch.size / schedule.scale_lr_by_batch  # the linear scaling rule
  boundaries = schedule.boundaries
  if schedule.boundaries_epochs is not None:
    boundaries = tuple(round(e * batch.steps_per_epoch) for e in schedule.boundaries_epochs)
    _require(
        boundaries[0] > 0 and len(set(boundaries)) == len(boundaries),
        f'--config.schedule.boundaries_epochs={schedule.boundaries_epochs} fall on the steps'
        f' {boundaries} at {batch.steps_per_epoch} steps an epoch: each must be a later step than'
        ' the one before; space them further apart',
    )
  warmup_steps = schedule.warmup_steps or round(schedule.warmup_epochs * batch.steps_per_epoch)
  _require(
      warmup_steps < num_steps,
      f'the warm-up ({warmup_steps} steps) is not shorter than the run ({num_steps} steps); lower'
      ' --config.schedule.warmup_steps or --config.schedule.warmup_epochs',
  )
  return ScheduleSpec(
      name=schedule.name,
      base_lr=float(base_lr),
      boundaries=tuple(int(b) for b in boundaries),
      decay_factor=schedule.decay_factor,
      warmup_steps=int(warmup_steps),
      num_steps=int(num_steps),
      warmup_lr=schedule.warmup_lr,
      warmup_until_error=schedule.warmup_until_error,
  )


def config_json(config: ml_collections.ConfigDict) -> dict:
  """Every field of the config as JSON values (tuples become lists), as the record keeps it."""
  return json.loads(config.to_json_best_effort())


def check(config: ml_collections.ConfigDict) -> Fields:
  """Stage 1: every field that needs neither devices nor data, checked once and typed."""
  _run_fields(config)
  dataset = _dataset(config)
  train = _Section('train', config.train)
  batch_size, eval_batch_size = (  # global, over every device and process
      _not_negative(train, f, positive=True, integer=True)
      for f in ('batch_size', 'eval_batch_size')
  )
  num_steps, num_epochs = _train_length(config)
  return Fields(
      seed=int(config.seed),
      init_from=config.init_from or '',
      init_from_partial=bool(config.init_from_partial),
      model=_model(config),
      optimizer=_optimizer(config),
      parallelism=_parallelism(config),
      loop=_loop(config),
      evaluation=_evaluation(config),
      dataset=dataset,
      batch_size=batch_size,
      eval_batch_size=eval_batch_size,
      num_shards=int(dataset.num_shards),
      num_steps=num_steps,
      num_epochs=num_epochs,
      schedule=_schedule_fields(config),
      config=config_json(config),
  )


def _record(fields: Fields, dataset: DatasetFacts, batch: BatchSpec, device_count: int) -> dict:
  """What a checkpoint keeps to tell its run: the config and what the data and devices made of it
  (the facts that change what is trained; workdir/record.py compares them on resume)."""
  per_device_bn = fields.parallelism.batch_norm == 'per_device'
  derived = {
      'num_classes': dataset.num_classes,
      'image_shape': list(dataset.image_shape),
      'num_train_examples': dataset.num_train_examples,
      'num_shards': batch.num_shards,  # the order in which the training data is read
      'batch_norm_devices': device_count if per_device_bn else 'all',
  }
  assert tuple(derived) == DERIVED
  return {'config': fields.config, 'derived': derived}


def resolve(
    config: ml_collections.ConfigDict | Fields,
    *,
    device_count: int,
    process_count: int,
    training: bool = True,
    dataset: DatasetFacts | None = None,
) -> Run:
  """The whole run, checked (see the module docstring). `config` may be stage 1's Fields already
  made (main.py's); `training=False` (eval-only, predict) does not ask the training split to hold
  a batch. `dataset`: facts given instead of read (weights conversion, and the benchmarks and
  tests on made-up data): no data source is asked, and the Run's `data` is None."""
  fields = config if isinstance(config, Fields) else check(config)
  data = None
  if dataset is None:  # stage 2
    data = pipeline.resolve_data(fields.dataset)
    dataset = pipeline.dataset_facts(data)
    views.check_data(fields.evaluation, data)
  batch = _batch(fields, dataset, device_count, process_count, training)  # stage 3
  return Run(
      seed=fields.seed,
      init_from=fields.init_from,
      init_from_partial=fields.init_from_partial,
      model=fields.model,
      dataset=dataset,
      batch=batch,
      schedule=_schedule(fields, batch),
      optimizer=fields.optimizer,
      parallelism=fields.parallelism,
      loop=fields.loop,
      evaluation=fields.evaluation,
      data=data,
      record=_record(fields, dataset, batch, device_count),
  )
