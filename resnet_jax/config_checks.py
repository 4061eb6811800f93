"""Impossible config values, caught before anything runs, each with the fix in one line."""

import ml_collections

from resnet_jax import models, parallel
from resnet_jax.errors import UserError

_CHOICES = {
    'schedule.name': ('piecewise', 'cosine'),
    'dataset.augment': ('cifar', 'imagenet', 'none'),
    'parallelism.mode': parallel.MODES,
    'parallelism.batch_norm': parallel.BATCH_NORMS,
    'model.dtype': ('float32', 'bfloat16', 'float16'),
    'model.shortcut': ('',) + tuple(models.SHORTCUTS),
    'model.conv_kernel_grad': tuple(models.CONV_KERNEL_GRADS),
}
_POSITIVE = (
    'train.batch_size',
    'train.eval_batch_size',
    'train.log_every_steps',
    'train.eval_every_steps',
    'train.checkpoint_every_steps',
    'train.keep_checkpoints',
)
_NON_NEGATIVE = (
    'schedule.base_lr',
    'schedule.warmup_lr',
    'optimizer.weight_decay',
    'train.num_epochs',
    'train.max_skipped_steps',
    'schedule.warmup_steps',
    'schedule.warmup_epochs',
    'parallelism.cpu_devices',
)


def _get(config, path):
  section, field = path.split('.')
  return config[section][field]


def validate(config: ml_collections.ConfigDict) -> None:
  models.model_spec(config.model.name)  # unknown model names list the valid ones
  for path, choices in _CHOICES.items():
    if _get(config, path) not in choices:
      raise UserError(
          f'--config.{path}={_get(config, path)!r} is not one of {", ".join(map(repr, choices))}'
      )
  for path in _POSITIVE:
    if _get(config, path) <= 0:
      raise UserError(f'--config.{path}={_get(config, path)} must be positive')
  for path in _NON_NEGATIVE:
    if _get(config, path) < 0:
      raise UserError(f'--config.{path}={_get(config, path)} must not be negative')
  if config.train.num_steps <= 0 and config.train.num_epochs <= 0:
    raise UserError('--config.train.num_steps must be positive (or set --config.train.num_epochs)')
  for path in ('schedule.boundaries', 'schedule.boundaries_epochs'):
    value = _get(config, path)
    if value is not None and (
        isinstance(value, str)
        or not all(isinstance(b, (int, float)) and not isinstance(b, bool) for b in value)
    ):
      raise UserError(
          f'--config.{path}={value!r} must be numbers, e.g. ' f"--config.{path}='(32000, 48000)'"
      )
  if not 0 <= config.optimizer.momentum < 1:
    raise UserError(f'--config.optimizer.momentum={config.optimizer.momentum} must be in [0, 1)')
  if not 0 <= config.train.label_smoothing < 1:
    raise UserError(
        f'--config.train.label_smoothing={config.train.label_smoothing} must be in [0, 1)'
    )
