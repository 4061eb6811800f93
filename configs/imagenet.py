"""ImageNet (imagenet2012 in TFDS; manual download): `--config configs/imagenet.py:resnet50`.

Three recipes, chosen after a comma (`configs/imagenet.py:resnet50,torchvision`):
  * (none): the paper's (He et al. 2015, section 3.4): batch 256, lr 0.1 divided by 10 every 30
    epochs, 90 epochs, weight decay 1e-4, momentum 0.9; the shorter side resized to a random size
    in [256, 480] (scale augmentation), a random 224 crop, flip, the per-pixel mean of the training
    split subtracted, PCA colour augmentation (std 0.1); evaluated on 10 crops (Tables 2 and 3);
    bottlenecks with the stride on their first 1x1 (v1).
    The paper divides the lr "when the error plateaus" and trains up to 60e4 iterations (120
    epochs); the steps at 30 and 60 of 90 epochs are torchvision's reference reading of it.
  * `torchvision`: torchvision's reference recipe (references/classification, the one behind
    ResNet-50 IMAGENET1K_V1): the same optimisation, random-resized crop 224 (area 8-100%, aspect
    3/4-4/3) + flip, per-channel mean/std; evaluated on the centre crop. This was the default
    before the paper's augmentation existed: its workdirs resume with this recipe.
  * `modern`: torchvision's augmentation with the common modern schedule: lr 0.1 x batch/256,
    5 warm-up epochs then cosine, label smoothing 0.1, no weight decay on BN and biases (the
    default already).
Any evaluation protocol goes with any recipe: `--config.evaluation.protocol=center` (or 10crop,
multiscale).
"""

from resnet_jax import models
from resnet_jax.config import fields
from resnet_jax.common.errors import UserError

RECIPES = ('torchvision', 'modern')  # after a comma: configs/imagenet.py:resnet50,torchvision


def get_config(arg: str = 'resnet50'):
  preset, _, recipe = arg.partition(',')
  if recipe and recipe not in RECIPES:
    raise UserError(
        f"unknown ImageNet recipe {recipe!r}; use 'configs/imagenet.py:{preset}' (the paper's), "
        + ' or '.join(f"'{preset},{r}'" for r in RECIPES)
    )
  config = fields.base_config(preset)
  config.dataset.update(
      name='imagenet2012',
      eval_split='validation',
      image_size=224,
      shuffle_buffer=10_000,
      cache=False,
  )
  if recipe:  # torchvision's augmentation and normalisation, its centre-crop evaluation
    config.dataset.update(augment='inception_crop', normalisation='per_channel')
    config.evaluation.protocol = 'center'
  else:  # section 3.4
    # The paper's bottleneck has its stride on the first 1x1 (v1, as its released models and
    # Table 1's multiply-adds); torchvision's recipes train v1.5, the stride on the 3x3.
    config.model.stride_in_1x1 = models.model_spec(preset)['block'] == 'bottleneck'
    config.dataset.update(
        augment='scale_augmentation',
        scale_range=(256, 480),
        normalisation='per_pixel_mean',
        lighting_std=0.1,
        lighting_pca='train_split',
    )
    config.evaluation.protocol = '10crop'
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
  return config
