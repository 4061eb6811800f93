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
          # Training augmentation: 'cifar' (pad, random crop, flip: the paper's CIFAR, section 4.2)
          # | 'scale_augmentation' (the paper's ImageNet, section 3.4: shorter side uniform in
          # scale_range, random image_size crop, flip) | 'inception_crop' (torchvision's
          # RandomResizedCrop: area 8-100%, aspect 3/4-4/3, then image_size) | 'none'
          augment='cifar',
          pad=4,
          flip=True,
          image_size=ml_collections.FieldReference(None, field_type=int),
          # scale_augmentation: the shorter side is resized to an integer drawn uniformly from
          # [low, high], both included ([256, 480] in the paper, section 3.4)
          scale_range=(256, 480),
          # 'per_channel': (x / 255 - mean) / std per channel (torchvision's) | 'per_pixel_mean':
          # x / 255 minus the training split's mean image, no std division (the paper's, sections
          # 3.4 and 4.2; computed once per process from train_split, like the computed mean/std)
          normalisation='per_channel',
          # per_channel only; None: known constants, else computed from train_split
          mean=ml_collections.FieldReference(None, field_type=tuple),
          std=ml_collections.FieldReference(None, field_type=tuple),
          # Krizhevsky et al. 2012's PCA colour augmentation (the paper's "standard colour
          # augmentation", section 3.4): each training image gets eigvec @ (alpha * eigval) added
          # to its RGB values in [0, 1], alpha ~ N(0, lighting_std^2); 0 = off, 0.1 as the paper
          lighting_std=0.0,
          # where eigval/eigvec come from: 'train_split' (the covariance of the training split's
          # RGB values, as the paper says) | 'fb_resnet_torch' (the constants of fb.resnet.torch)
          lighting_pca='train_split',
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

  # How evaluation scores a network (training's periodic eval, --mode=eval, sweeps): the metrics
  # and the console name the protocol. resnet_jax/training/evaluation.py.
  config.evaluation = ml_collections.ConfigDict(
      dict(
          # 'center': one view (ImageNet: torchvision's Resize(256) + CenterCrop(224); others: the
          # image itself) | '10crop': the 4 corners and the centre of the image resized to
          # shorter side `resize`, and of its mirror image (the paper's Tables 2 and 3) |
          # 'multiscale': the fully-convolutional form, scores averaged over `scales` and their
          # mirror images (Table 4). 10crop and multiscale average softmax probabilities.
          protocol='center',
          resize=0,  # 10crop: the shorter side the crops come from; 0 = round(image_size / 0.875)
          # multiscale: shorter sides; each view is the centred s x s square (fixed shapes)
          scales=(224, 256, 384, 480, 640),
          # 10crop/multiscale: images of image_size x image_size per device in one forward pass; a
          # larger view gets proportionally fewer (640 px: 32 x (224/640)^2 -> 3), so device memory
          # is that of one such forward at every scale
          forward_batch=32,
      )
  )

  config.parallelism = ml_collections.ConfigDict(
      dict(
          mode='jit',  # 'jit' (sharded jax.jit over a mesh) | 'pmap'
          # 'global' (statistics over the global batch) | 'per_device' (the paper's per-GPU BN)
          batch_norm='global',
          # CPU hosts only (GPUs and TPUs ignore both): split each process's CPU into this many
          # devices, the batch split over them with the same results. 0 = auto: one where oneDNN
          # can run (cpu_backend auto or onednn, one process, oneDNN installed), else 8 (or the
          # most that divide the batch) for inputs of 16x16 pixels and more, 2 from 112 pixels, one
          # for smaller ones (BENCHMARKS.md, "oneDNN convolutions" and "CPU backend and device
          # split by processor"); 1 = one device. A launch's XLA_FLAGS device count wins.
          cpu_devices=0,
          # CPU only: 'auto' times the step on each convolution backend that can run here (XLA's
          # on YNNPACK and on Eigen, oneDNN's on one device) for a few steps the first time a step
          # is compiled on this processor and jaxlib, keeps the fastest and caches the choice
          # (~/.cache/resnet_jax/cpu_backend.json); 'ynnpack' | 'eigen' | 'onednn' force one.
          # The environment's RESNET_JAX_CPU_BACKEND wins (resnet_jax/training/cpu_backend.py).
          cpu_backend='auto',
      )
  )
  # Configs built on this one may change these fields but not add any: a mistyped field
  # (`config.train.batch_sise = 3`) is an error, not a new field nothing reads.
  config.lock()
  return config
