"""ImageNet (imagenet2012 in TFDS; manual download): `--config configs/imagenet.py:resnet50`.

Default: the paper's recipe (section 3.4): batch 256, lr 0.1 divided by 10 every 30 epochs, 90
epochs, weight decay 1e-4, momentum 0.9, random-resized-crop 224 + flip. Append `,modern` to the
preset (`configs/imagenet.py:resnet50,modern`) for the common modern recipe: lr 0.1 x batch/256,
5 warm-up epochs then cosine, label smoothing 0.1, no weight decay on BN and biases (the default
already).
"""

from configs import base
from resnet_jax.errors import UserError

RECIPES = ('modern',)  # after a comma: configs/imagenet.py:resnet50,modern


def get_config(arg: str = 'resnet50'):
  preset, _, recipe = arg.partition(',')
  config = base.base_config(preset)
  config.dataset.update(
      name='imagenet2012',
      eval_split='validation',
      augment='imagenet',
      image_size=224,
      shuffle_buffer=10_000,
      cache=False,
  )
  config.train.update(
      batch_size=256,
      eval_batch_size=250,
      num_epochs=90.0,
      log_every_steps=500,
      eval_every_steps=5_000,
      checkpoint_every_steps=5_000,
  )
  config.schedule.update(boundaries_epochs=(30, 60), scale_lr_by_batch=256)
  if recipe == 'modern':
    config.schedule.update(name='cosine', warmup_epochs=5.0)
    config.train.label_smoothing = 0.1
  elif recipe:
    raise UserError(
        f"unknown ImageNet recipe {recipe!r}; use 'configs/imagenet.py:{preset}' or"
        f" '{preset},modern'"
    )
  return config
