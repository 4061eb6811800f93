"""The paper's CIFAR-10 depth experiments (section 4.2): Figure 6 and Table 6, with its recipe.

Plain and residual nets at 20/32/44/56/110 layers, and ResNet-1202 (Table 6; Figure 6 right).
Plain-110 is not in Figure 6 but the text reports it (over 60% error); plain-1202 is left out, as in
the paper. configs/cifar10.py gives depth 110 and up the paper's warm-up at lr 0.01. 64k iterations
each: this is a job for accelerators (`--print_commands` gives one command per point for a pod or a
job array).
"""

import ml_collections


def get_config():
  sweep = ml_collections.ConfigDict()
  sweep.config = 'configs/cifar10.py'
  sweep.axes = ml_collections.ConfigDict(
      dict(family=('plain', 'resnet'), depth=(20, 32, 44, 56, 110, 1202))
  )
  sweep.base_overrides = ml_collections.ConfigDict()  # the paper's recipe is the config's default
  sweep.exclude = ('plain1202',)
  sweep.workdir_root = 'runs/sweeps/degradation_cifar10'
  return sweep
