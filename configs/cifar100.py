"""CIFAR-100 with the CIFAR-10 recipe of the paper: `--config configs/cifar100.py:resnet56`."""

from configs import cifar10


def get_config(preset: str = 'resnet20'):
  return cifar10.get_config(preset, dataset='cifar100')
