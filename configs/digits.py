"""The offline default: scikit-learn's bundled 8x8 digits as a TFDS dataset (resnet_jax/datasets).

Real images that need no network, through the same tfds path as CIFAR: `make run` trains ResNet-20
on them in a few minutes on 2 CPU cores. Digits are not mirror-symmetric, so no flip; 1-pixel
pad-and-crop.
"""

from resnet_jax.config import fields


def get_config(preset: str = 'resnet20'):
  config = fields.base_config(preset)
  config.dataset.update(name='sklearn_digits', pad=1, flip=False, shuffle_buffer=2_000)
  config.train.update(
      batch_size=128,
      eval_batch_size=128,
      num_steps=1_500,
      log_every_steps=50,
      eval_every_steps=500,
      checkpoint_every_steps=500,
  )
  config.schedule.update(boundaries=(750, 1_125))
  return config
