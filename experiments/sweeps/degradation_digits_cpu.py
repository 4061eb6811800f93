"""Figure 6 at CPU scale: plain vs residual nets of 8, 20 and 56 layers on the offline 8x8 digits.

Six points; about 10 minutes with --parallel 2 on the 2-core CPU (2026-11-26; the two 56-layer nets
take most of it). The recipe is configs/digits.py's, shortened to 1,000 iterations (lr 0.1, divided
by 10 at 500 and 750), with the paper's ResNet-110 warm-up on for every point (lr 0.01 until the
training error is under 80%), so that no depth gets a recipe of its own. On digits it ends within
the first 20-60 iterations, so it changes little: both 56-layer nets have a burst of large gradients
in their first iterations, and ResNet-56 needs ~250 iterations to leave chance level.
Results: experiments/results/degradation_digits_cpu/.
"""

import ml_collections


def get_config():
  sweep = ml_collections.ConfigDict()
  sweep.config = 'configs/digits.py'
  sweep.axes = ml_collections.ConfigDict(dict(family=('plain', 'resnet'), depth=(8, 20, 56)))
  sweep.base_overrides = ml_collections.ConfigDict(
      dict(
          train=dict(
              num_steps=1_000, log_every_steps=20, eval_every_steps=100, checkpoint_every_steps=500
          ),
          schedule=dict(boundaries=(500, 750), warmup_lr=0.01, warmup_until_error=0.8),
      )
  )
  sweep.workdir_root = 'runs/sweeps/degradation_digits_cpu'
  return sweep
