"""CIFAR-10 with the paper's recipe (section 4.2): `--config configs/cifar10.py:resnet110`.

batch 128, SGD momentum 0.9, weight decay 1e-4, lr 0.1 divided by 10 at 32k and 48k iterations,
stop at 64k; depth 110 and up warm up at lr 0.01 until the training error is under 80% (about 400
iterations); the per-pixel mean of the training split subtracted (no std division), 4-pixel
padding, random 32x32 crop, flip; tested on the single original image. Set
`--config.dataset.train_split='train[:45000]' --config.dataset.eval_split='train[45000:]'`
for the paper's 45k/5k validation split, `--config.dataset.normalisation=per_channel` for the
per-channel mean/std (this config's normalisation before the paper's was added: its workdirs
resume with that flag).
"""

from resnet_jax.config import fields
from resnet_jax import models


def get_config(preset: str = 'resnet20', dataset: str = 'cifar10'):
  config = fields.base_config(preset)
  config.dataset.name = dataset
  config.dataset.normalisation = 'per_pixel_mean'  # section 4.2
  if models.model_spec(preset)['stem'] == 'cifar' and models.model_depth(preset) >= 110:
    config.schedule.warmup_lr = 0.01
  # Unrolled, ResNet-1202 outgrows a CPU host's memory while XLA compiles its step (BENCHMARKS.md,
  # "Memory: a step, and deep nets with and without rematerialisation"); scanned, each stage's 199
  # repeated blocks compile once. The run is meant for accelerators: XLA's CPU backend runs scanned
  # blocks as a much slower while loop (BENCHMARKS.md, "What each lever changed").
  config.model.scan_blocks = models.model_depth(preset) >= 1000
  return config
