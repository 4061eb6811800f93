"""A DataSpec made by hand, for tests and benchmarks that need one without reading a dataset."""

from resnet_jax.config.run import DataSpec


def data_spec(image_shape=(224, 224, 3), **fields) -> DataSpec:
  """ImageNet-like defaults (the paper's scale augmentation, no flip, mean 0 and std 1 per
  channel), any field overridden."""
  channels = image_shape[-1]
  defaults = dict(
      name='imagenet2012',
      data_dir=None,
      manual_dir=None,
      train_split='train',
      eval_split='validation',
      augment='scale_augmentation',
      pad=0,
      flip=False,
      shuffle_buffer=1,
      cache=False,
      image_shape=tuple(image_shape),
      mean=(0.0,) * channels,
      std=(1.0,) * channels,
  )
  return DataSpec(**{**defaults, **fields})
