"""The resolved run, as frozen plain data: what config/resolve.py makes of a config.

`Fields` is the config checked (stage 1, before devices or data); `Run` adds the data source's spec
and facts, the batch and the schedule in steps, and the record. Nothing past the resolver reads the
config itself.
"""

import collections.abc
import dataclasses
from typing import Any

from resnet_jax import models

# 'scale_augmentation' is the paper's ImageNet augmentation (section 3.4), 'inception_crop'
# torchvision's (called 'imagenet' before the paper's existed); both read encoded images.
ENCODED_AUGMENTS = ('scale_augmentation', 'inception_crop')


@dataclasses.dataclass(frozen=True)
class DatasetFacts:
  """What the data holds, read from the dataset (data/pipeline.py) or made up by a
  benchmark."""

  num_classes: int
  image_shape: tuple[int, int, int]  # (H, W, C) the model sees, after crop or resize
  num_train_examples: int  # of train_split
  num_eval_examples: int  # of eval_split


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """The dataset section resolved by the TFDS source (data/tfds_source.py): every field
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

  @property
  def overrides(self) -> dict[str, Any]:
    """The fields that change the preset (those left '' keep the preset's own value)."""
    return {k: v for k, v in self.fields if k != 'name' and v != ''}

  def build(self, num_classes: int, **extra) -> models.ResNet:
    """The network: the one way a run's model is made (models.create_model with the fields)."""
    return models.create_model(self.name, num_classes=num_classes, **self.overrides, **extra)


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
class EvalSpec:
  """The evaluation section (resnet_jax/training/evaluation.py runs the protocols)."""

  protocol: str = 'center'  # PROTOCOLS
  resize: int = 0  # 10crop: the shorter side the crops come from (0: round(size / 0.875))
  scales: tuple[int, ...] = (224, 256, 384, 480, 640)  # multiscale
  forward_batch: int = 32  # image_size x image_size images' worth of pixels per device and pass


class Section(collections.abc.Mapping):
  """A checked config section as frozen plain data: fields by key or attribute (the dataset
  section, which each data source extends with its own fields)."""

  def __init__(self, items):
    object.__setattr__(self, '_items', dict(items))

  def __getitem__(self, field):
    return self._items[field]

  def __getattr__(self, field):
    try:
      return self._items[field]
    except KeyError:
      raise AttributeError(field) from None

  def __setattr__(self, field, value):
    raise AttributeError(f'a resolved section is frozen ({field})')

  def __iter__(self):
    return iter(self._items)

  def __len__(self):
    return len(self._items)

  def __hash__(self):
    return hash(tuple(sorted((k, repr(v)) for k, v in self._items.items())))

  def __repr__(self):
    return f'Section({self._items!r})'


@dataclasses.dataclass(frozen=True)
class ScheduleFields:
  """The schedule section checked; its steps are derived once the batch is known."""

  name: str
  base_lr: float
  scale_lr_by_batch: int
  boundaries: tuple[int, ...]
  boundaries_epochs: tuple[float, ...] | None
  decay_factor: float
  warmup_steps: int
  warmup_epochs: float
  warmup_lr: float
  warmup_until_error: float


@dataclasses.dataclass(frozen=True)
class Fields:
  """Stage 1 of the resolution: every field of the config checked and typed, with nothing that the
  devices or the data decide. main.py has it before JAX starts (the CPU split reads it)."""

  seed: int
  init_from: str
  init_from_partial: bool
  model: ModelSpec
  optimizer: OptimizerSpec
  parallelism: ParallelSpec
  loop: LoopSpec
  evaluation: EvalSpec
  dataset: Section
  batch_size: int
  eval_batch_size: int
  num_shards: int  # 0: one stream per process
  num_steps: int  # used when num_epochs is 0
  num_epochs: float
  schedule: ScheduleFields
  # The config as JSON (every field): the record's config (config.json, checkpoints, hparams)
  config: dict = dataclasses.field(compare=False, hash=False, repr=False)


@dataclasses.dataclass(frozen=True)
class Run:
  """The run, resolved: the one object that the loop, eval, predict, convert, the benchmarks and
  the tests read (config/resolve.py makes it)."""

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
  evaluation: EvalSpec
  # the data source's spec: DataSpec (TFDS) or synthetic_source.SyntheticSpec; None when the
  # facts were given (resolve's `dataset`)
  data: Any
  # What a checkpoint holds to tell its run (workdir/record.py): {'config': the config as JSON,
  # 'derived': the facts of the data and devices that change what is trained}
  record: dict = dataclasses.field(compare=False, hash=False, repr=False)


# The facts of the data and devices a record holds beside the config (config/resolve.py's _record)
DERIVED = ('num_classes', 'image_shape', 'num_train_examples', 'num_shards', 'batch_norm_devices')
