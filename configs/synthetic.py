"""Synthetic data made on the devices: `--config configs/synthetic.py:resnet50`.

The real training loop (checkpoints, metrics, eval) without a dataset or TensorFlow, to measure
throughput and the loop's own overhead (resnet_jax/data/synthetic_source.py), as the fake-data
benchmarks of the flax and big_vision examples. An ImageNet network (resnet18/34/50/101/152 and
their twins) sees ImageNet's shape (224x224x3, 1000 classes, 1,281,167 training images); a CIFAR one
(resnet20, resnet56, ...) CIFAR-10's (32x32x3, 10 classes, 50,000). Any of it can be changed:
`--config.dataset.image_size=160 --config.dataset.num_classes=100`. The recipe is the matching
real config's (configs/imagenet.py, configs/cifar10.py), with a short run by default.
"""

from configs import cifar10, imagenet
from resnet_jax import models


def get_config(preset: str = 'resnet50'):
  # num_train_examples sets the steps in an epoch.
  if models.model_spec(preset)['stem'] == 'imagenet':
    config = imagenet.get_config(preset)
    shape = dict(image_size=224, channels=3, num_classes=1000, num_train_examples=1_281_167)
  else:
    config = cifar10.get_config(preset)
    shape = dict(image_size=32, channels=3, num_classes=10, num_train_examples=50_000)
  with config.unlocked():  # the fields only synthetic data has
    config.dataset.update(name='synthetic', **shape, num_eval_examples=10_000)
  config.train.update(
      num_epochs=0.0,
      num_steps=1_000,
      log_every_steps=100,
      eval_every_steps=1_000,
      checkpoint_every_steps=1_000,
  )
  config.schedule.update(boundaries_epochs=None, boundaries=(500, 750))
  config.evaluation.protocol = 'center'  # the batches are made on the devices: one view each
  return config
