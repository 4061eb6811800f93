"""Every knob of a run, as plain data.

Dataset files (cifar10.py, imagenet.py, digits.py) start here. Override any field on the command
line: `--config.train.batch_size=256 --config.model.dtype=bfloat16`.
"""

import ml_collections

from resnet_jax import models


def base_config(preset: str) -> ml_collections.ConfigDict:
  models.model_spec(preset)  # an unknown preset fails here, before anything runs
  config = ml_collections.ConfigDict()
  config.seed = 0
  # a workdir or checkpoint dir to fine-tune from; the head is re-initialised if classes differ
  config.init_from = ''
  # True: take from init_from only what matches by name and shape (a deeper net into a shallower
  # one), re-initialising the rest; False: any mismatch but the head's and the stem's is an error
  config.init_from_partial = False

  config.model = ml_collections.ConfigDict(
      dict(
          name=preset,
          # '' = the preset's own: identity (A) for CIFAR, projection (B) for ImageNet,
          # none for plain
          shortcut='',
          dtype='float32',  # compute dtype; 'bfloat16' keeps float32 parameters
          zero_init_residual=False,  # zero each block's last BN scale (off in the paper)
          stride_in_1x1=False,  # True = the paper's original (v1) bottleneck stride placement
          remat=False,  # recompute activations in the backward pass: less memory for very deep nets
          # 'xla' (GPU/TPU) | 'matmul': kernel gradients as one matmul, skipping XLA CPU's layout
          # copy: faster on one CPU device, slower on several (BENCHMARKS.md,
          # "What each lever changed")
          conv_kernel_grad='xla',
          # each stage's repeated blocks as one scan: compiles ResNet-1202 in bounded
          # time and memory
          scan_blocks=False,
      )
  )

  config.dataset = ml_collections.ConfigDict(
      dict(
          name='cifar10',
          data_dir=ml_collections.FieldReference(None, field_type=str),
          manual_dir=ml_collections.FieldReference(None, field_type=str),
          train_split='train',
          eval_split='test',
          augment='cifar',  # 'cifar' | 'imagenet' | 'none'
          pad=4,
          flip=True,
          image_size=ml_collections.FieldReference(None, field_type=int),
          mean=ml_collections.FieldReference(None, field_type=tuple),
          std=ml_collections.FieldReference(None, field_type=tuple),
          shuffle_buffer=50_000,
          cache=True,
          # Streams the training split is read as (0 = one per process). Fix it to get the same
          # global batches on any number of hosts, e.g. to compare or resume runs across topologies.
          num_shards=0,
      )
  )

  config.train = ml_collections.ConfigDict(
      dict(
          batch_size=128,  # global, over all devices and processes
          eval_batch_size=512,
          num_steps=64_000,
          num_epochs=0.0,  # > 0 replaces num_steps with this many passes over the training split
          log_every_steps=100,
          eval_every_steps=2_000,
          checkpoint_every_steps=2_000,
          keep_checkpoints=3,
          async_checkpoints=True,  # write checkpoints in the background while training goes on
          label_smoothing=0.0,
          max_skipped_steps=0,  # steps with a non-finite loss or gradient to skip before stopping
          # per-stage gradient norms and per-block ||F(x)||/||x|| in metrics.jsonl
          log_diagnostics=True,
      )
  )

  config.optimizer = ml_collections.ConfigDict(
      dict(
          momentum=0.9,
          nesterov=False,
          weight_decay=1e-4,
          decoupled_weight_decay=False,  # False: L2 added to the gradient, as the paper; True: SGDW
          weight_decay_on_all_params=False,  # False: convolution and dense kernels only
      )
  )

  config.schedule = ml_collections.ConfigDict(
      dict(
          name='piecewise',  # 'piecewise' (the paper) | 'cosine' (warm-up then cosine)
          base_lr=0.1,
          # > 0: lr = base_lr * batch_size / this (the linear scaling rule, 256 for ImageNet)
          scale_lr_by_batch=0,
          boundaries=(32_000, 48_000),  # steps where the lr is multiplied by decay_factor
          # replaces boundaries
          boundaries_epochs=ml_collections.FieldReference(None, field_type=tuple),
          decay_factor=0.1,
          warmup_steps=0,  # cosine: linear warm-up steps
          warmup_epochs=0.0,
          # The paper's ResNet-110 warm-up: lr = warmup_lr until the training error falls under the
          # threshold.
          warmup_lr=0.0,  # 0 = off
          warmup_until_error=0.8,
      )
  )

  config.parallelism = ml_collections.ConfigDict(
      dict(
          mode='jit',  # 'jit' (sharded jax.jit over a mesh) | 'pmap'
          # 'global' (statistics over the global batch) | 'per_device' (the paper's per-GPU BN)
          batch_norm='global',
          # CPU hosts only: split each process's CPU into this many devices (0 = one; XLA_FLAGS'
          # count wins). 8 speeds up a CIFAR ResNet-20 step with the same results, as smaller
          # programs side by side keep the cores busy and activations in cache; not on 8x8 digits,
          # too little work per device (BENCHMARKS.md, "What each lever changed"). GPUs and TPUs
          # ignore it.
          cpu_devices=0,
      )
  )
  # Configs built on this one may change these fields but not add any: a mistyped field
  # (`config.train.batch_sise = 3`) is an error, not a new field nothing reads.
  config.lock()
  return config
