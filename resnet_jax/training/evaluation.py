"""Evaluation protocols: how a network is scored on the eval split (He et al. 2015, section 3.4).

  center      one view per image: for ImageNet-style data torchvision's Resize(256) +
              CenterCrop(224) (tfds_source.imagenet_eval_image), for others the image itself: the
              paper's CIFAR test (section 4.2, "the single view of the original 32x32 image").
  10crop      the 4 corners and the centre (image_size crops) of the image resized to shorter side
              `resize` (256 for 224), and the same five of its mirror image: torchvision's
              Resize(256) + TenCrop(224). The paper's comparisons (Tables 2 and 3).
  multiscale  the fully-convolutional form (Table 4, after Simonyan & Zisserman [41]): at each
              shorter side s of `scales`, the classifier applied as a 1x1 convolution over the last
              feature map (models.ResNet(score_map=True)) and the score map averaged over its
              positions; then the views of every scale and their mirror images averaged.

10crop and multiscale average the views' softmax probabilities ([41]'s "soft-max class posteriors",
which the paper follows); the loss is -log of the averaged probability of the label, and top-1 and
top-5 are read from the averaged probabilities. Every example counts once, as with 'center': each
process reads its share of the eval split, padded to a common number of batches with mask-0
examples, and the sums cover the mask-1 examples only.

Shapes. XLA compiles one program per input shape, so every view of a scale has one shape: a
multiscale view is the centred s x s square of the image resized to shorter side s (for ImageNet's
common 4:3 images, 3/4 of the image; the paper's whole image would need one program per aspect
ratio). At 224 the fully-convolutional scores equal the ordinary forward pass, global pooling then
the classifier, by linearity (tests/test_evaluation.py).

Memory stays bounded at any scale. The host sends the views as uint8 (a 640 x 640 view is 1.2 MB;
the five scales of the paper 2.7 MB an image) and the device normalises them. The views of a batch
are scored one group at a time (the ten crops, then each scale), each group in forward passes of
at most `forward_batch` image_size x image_size images' worth of pixels per device (lax.map over
chunks): device memory is that of one forward of `forward_batch` crops whatever the scale, e.g.
at 640 px, 32 x (224/640)^2 -> 3 images (with their mirror images: 1 + 1) at a time.
"""

import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import PartitionSpec as P

from resnet_jax.config.run import EvalSpec
from resnet_jax.data import views
from resnet_jax.training import parallel, step

# ------------------------------------------------------------------------------------ the device


def normaliser(data, size: tuple[int, int]) -> Callable[[jax.Array], jax.Array]:
  """uint8 [..., h, w, C] -> float32 as the input pipeline normalises training images: x / 255
  minus the training split's mean image ('per_pixel_mean', resized bilinearly to views of another
  size), or per channel (x / 255 - mean) / std."""
  if data.normalisation == 'per_pixel_mean':
    mean = np.asarray(data.pixel_mean, np.float32)
    if mean.shape[:2] != tuple(size):
      mean = np.asarray(jax.image.resize(mean, (*size, mean.shape[-1]), 'bilinear'), np.float32)
    return lambda x: x.astype(jnp.float32) / 255.0 - mean
  mean, std = np.asarray(data.mean, np.float32), np.asarray(data.std, np.float32)
  return lambda x: (x.astype(jnp.float32) / 255.0 - mean) / std


def view_probabilities(model, variables, images: jax.Array) -> jax.Array:
  """Softmax of the spatially averaged score map (the fully-convolutional form), [N, classes]."""
  scores = model.apply(variables, images, train=False, score_map=True)
  return jax.nn.softmax(jnp.mean(scores.astype(jnp.float32), axis=(1, 2)), axis=-1)


def _in_chunks(fn, x: jax.Array, chunk: int) -> jax.Array:
  """fn over the leading axis of x, `chunk` at a time (one after another: bounded memory)."""
  n = x.shape[0]
  if chunk >= n:
    return fn(x)
  padded = -n % chunk
  x = jnp.concatenate([x, jnp.zeros((padded, *x.shape[1:]), x.dtype)]) if padded else x
  out = jax.lax.map(fn, x.reshape(-1, chunk, *x.shape[1:]))
  return out.reshape(-1, *out.shape[2:])[:n]


def _group_probabilities(variables, views, *, model, normalise, mirror: bool, chunk: int):
  """Summed probabilities of this device's examples over one group's views: [b, classes]."""
  b, count = views.shape[:2]
  images = views.reshape(b * count, *views.shape[2:])

  def forward(x):  # uint8 [k, h, w, C]
    if mirror:  # the mirror image of the uint8 view, normalised as any view
      both = jnp.concatenate([x, x[:, :, ::-1]])
      p = view_probabilities(model, variables, normalise(both))
      return p[: x.shape[0]] + p[x.shape[0] :]
    return view_probabilities(model, variables, normalise(x))

  probabilities = _in_chunks(forward, images, chunk)
  return probabilities.reshape(b, count, -1).sum(axis=1)


def _sums(probabilities, labels, mask):
  label_probability = jnp.take_along_axis(probabilities, labels[:, None], axis=-1)[:, 0]
  losses = -jnp.log(jnp.maximum(label_probability, 1e-30))
  return step.masked_sums(losses, probabilities, labels, mask)


class Evaluator:
  """Scores the batches of '10crop' or 'multiscale' ({'views', 'label', 'mask'}, on the devices):
  `(state, batch) -> sums` as train_step.eval_step gives them, and `probabilities`."""

  def __init__(
      self,
      spec: EvalSpec,
      *,
      model,
      data_parallel: parallel.DataParallel,
      data,
      compiler_options: dict | None = None,
  ):
    """`compiler_options`: the train step's CPU backend (cpu_backend.options_for), else None."""
    self.spec, self.groups = spec, views.view_groups(spec, data.image_shape)
    self.num_views = views.num_views(spec, data.image_shape)
    crop_pixels = data.image_shape[0] * data.image_shape[1]
    dp = data_parallel
    self._groups = {}
    for group in self.groups:
      images = max(1, spec.forward_batch * crop_pixels // (group.size[0] * group.size[1]))
      fn = functools.partial(
          _group_probabilities,
          model=model,
          normalise=normaliser(data, group.size),
          mirror=group.mirror,
          chunk=max(1, images // 2) if group.mirror else images,
      )
      # Per device: each one scores its own examples in chunks, no communication.
      per_device = jax.shard_map(
          fn,
          mesh=dp.mesh,
          in_specs=(P(), P(parallel.DATA_AXIS)),
          out_specs=P(parallel.DATA_AXIS),
          check_vma=False,
      )
      self._groups[group.name] = jax.jit(
          per_device,
          in_shardings=(dp.replicated, dp.batch_sharded),
          out_shardings=dp.batch_sharded,
          compiler_options=compiler_options,
      )
    self._sums = jax.jit(_sums, out_shardings=dp.replicated)

  def probabilities(self, state, batch) -> jax.Array:
    """The averaged probabilities over every view, [B, classes] (global, sharded by example)."""
    variables = {'params': state.params, 'batch_stats': state.batch_stats}
    total = None
    for group in self.groups:
      summed = self._groups[group.name](variables, batch['views'][group.name])
      total = summed if total is None else total + summed
    return total / self.num_views

  def __call__(self, state, batch) -> dict[str, Any]:
    return self._sums(self.probabilities(state, batch), batch['label'], batch['mask'])
