"""The fixed reference: ResNet-20 written plainly in Flax, as a tutorial would, float32, no tricks.

The usual CIFAR block (He et al. 2015, section 4.2): conv-BN-ReLU-conv-BN, option-A shortcut
(subsample, zero-pad channels), ReLU after the addition; SGD with momentum 0.9 and weight decay 1e-4
through optax, a flax TrainState, and `jax.jit` without buffer donation. Do not optimise this file:
every figure of the project's step is also reported as a ratio to it, measured in the same run, so
that the ratio holds when the shared machine is busy.

    python -m benchmarks.baseline_resnet20 --batch 128 --steps 20
"""

import argparse

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from flax.training import train_state

from benchmarks import common


class Block(nn.Module):
  filters: int
  strides: int = 1

  @nn.compact
  def __call__(self, x, train: bool):
    y = nn.Conv(self.filters, (3, 3), strides=self.strides, padding='SAME', use_bias=False)(x)
    y = nn.BatchNorm(use_running_average=not train, momentum=0.9)(y)
    y = nn.relu(y)
    y = nn.Conv(self.filters, (3, 3), padding='SAME', use_bias=False)(y)
    y = nn.BatchNorm(use_running_average=not train, momentum=0.9)(y)
    if x.shape != y.shape:  # option A
      x = x[:, :: self.strides, :: self.strides, :]
      x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, self.filters - x.shape[-1])))
    return nn.relu(x + y)


class ResNet20(nn.Module):
  num_classes: int = 10

  @nn.compact
  def __call__(self, x, train: bool = True):
    x = nn.Conv(16, (3, 3), padding='SAME', use_bias=False)(x)
    x = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(x))
    for stage, filters in enumerate((16, 32, 64)):
      for block in range(3):
        x = Block(filters, strides=2 if stage > 0 and block == 0 else 1)(x, train)
    x = jnp.mean(x, axis=(1, 2))
    return nn.Dense(self.num_classes)(x)


class State(train_state.TrainState):
  batch_stats: dict


def create_state(rng, image_shape=(32, 32, 3), num_classes: int = 10) -> State:
  model = ResNet20(num_classes)
  variables = model.init(rng, jnp.zeros((1, *image_shape)), train=False)
  tx = optax.chain(optax.add_decayed_weights(1e-4), optax.sgd(0.1, momentum=0.9))
  return State.create(
      apply_fn=model.apply, params=variables['params'], tx=tx, batch_stats=variables['batch_stats']
  )


@jax.jit
def train_step(state: State, batch):
  def loss_fn(params):
    logits, updates = state.apply_fn(
        {'params': params, 'batch_stats': state.batch_stats},
        batch['image'],
        train=True,
        mutable=['batch_stats'],
    )
    labels = jax.nn.one_hot(batch['label'], logits.shape[-1])
    return optax.softmax_cross_entropy(logits, labels).mean(), updates

  (loss, updates), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  state = state.apply_gradients(grads=grads, batch_stats=updates['batch_stats'])
  return state, {'loss': loss}


def random_batch(batch_size: int, image_shape=(32, 32, 3), num_classes: int = 10, seed: int = 0):
  rng = np.random.default_rng(seed)
  return {
      'image': rng.standard_normal((batch_size, *image_shape), dtype=np.float32),
      'label': rng.integers(0, num_classes, batch_size).astype(np.int32),
  }


class Runner:
  """Calling it runs one baseline step and waits for it.

  `compile_seconds` and `flops` describe it.
  """

  def __init__(self, batch_size: int, image_shape=(32, 32, 3)):
    self.state = create_state(jax.random.key(0), image_shape)
    self.batch = jax.device_put(random_batch(batch_size, image_shape))
    self.step, self.compile_seconds, self.flops = common.compile_timed(
        train_step, self.state, self.batch
    )

  def __call__(self):
    self.state, metrics = self.step(self.state, self.batch)
    jax.block_until_ready((self.state, metrics))


def main():
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--batch', type=int, default=128)
  parser.add_argument('--steps', type=int, default=20)
  parser.add_argument('--json')
  args = parser.parse_args()
  runner = Runner(args.batch)
  seconds = common.median(
      common.interleaved({'baseline': runner}, rounds=1, steps=args.steps)['baseline']
  )
  result = {
      'model': 'baseline_resnet20',
      'batch': args.batch,
      'step_seconds': seconds,
      'images_per_second': args.batch / seconds,
      'compile_seconds': runner.compile_seconds,
      'flops_per_step': runner.flops,
      'achieved_gflops': (runner.flops or 0) / seconds / 1e9,
      'machine': common.machine(),
  }
  common.emit(
      result,
      f'baseline ResNet-20 batch {args.batch}: {seconds * 1e3:.1f} ms/step, '
      f"{args.batch / seconds:.0f} images/s, {result['achieved_gflops']:.1f} GFLOP/s, "
      f'compile {runner.compile_seconds:.1f} s',
      args.json,
  )


if __name__ == '__main__':
  main()
