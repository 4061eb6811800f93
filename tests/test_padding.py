"""Every strided window is centred on the pixel the shortcut samples, as in the paper's Torch code,
torchvision and the CIFAR reference (they pad (k-1)//2 on each side; padding='SAME' pads a 3x3
stride-2 window on an even map as (0, 1) and shifts it by one pixel).

Behavioural: a one-hot image goes into each strided convolution and into the stem's max-pool of
real models, and we read which output pixel it reaches. Parity of whole networks with torchvision
and the CIFAR reference is benchmarks/reference_parity.py (it needs PyTorch);
tests/test_reference_outputs.py checks outputs it recorded, and that padding='SAME' misses them.
"""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from resnet_jax.models import stats as model_stats
from resnet_jax import models


def hot_pixel(shape) -> int:
  """An even row/column inside a (N, H, W, C) map: x[::2, ::2] keeps it as pixel hot_pixel / 2."""
  return 2 * (shape[1] // 4)


def one_hot_image(shape):
  image = np.zeros(shape, np.float32)
  image[:, hot_pixel(shape), hot_pixel(shape), :] = 1.0
  return jnp.asarray(image)


def expected_response(k: int, input_shape, output_shape):
  """What a stride-2 k x k window padded (k-1)//2 on each side reads from the one-hot image.

  Output pixel (i, j) sees input (2i - p + dy, 2j - p + dx), so the tap (dy, dx) that lands on the
  hot pixel.
  """
  pad, hot = (k - 1) // 2, hot_pixel(input_shape)
  response = np.zeros(output_shape[1:3], np.float32)
  for i in range(output_shape[1]):
    for j in range(output_shape[2]):
      dy, dx = hot - 2 * i + pad, hot - 2 * j + pad
      if 0 <= dy < k and 0 <= dx < k:
        response[i, j] = 1 + dy * k + dx
  return response


def tap_kernel(kernel):
  """Each tap of a k x k kernel holds its own number (1 + dy * k + dx) between channel 0 and 0."""
  k = kernel.shape[0]
  taps = np.zeros(kernel.shape, np.float32)
  taps[:, :, 0, 0] = 1 + np.arange(k * k).reshape(k, k)
  return jnp.asarray(taps)


def strided_conv_outputs(name, image_shape, **overrides):
  """{module path: (kernel size, output)} of each strided conv of `name`, fed a one-hot image."""
  model = models.create_model(name, num_classes=10, **overrides)
  variables = model_stats.init_variables(model, image_shape)
  variables = {
      **variables,
      'params': jax.tree.map(lambda x: tap_kernel(x) if x.ndim == 4 else x, variables['params']),
  }
  seen = {}

  def feed_one_hot(next_fun, args, kwargs, context):
    module = context.module
    if (
        isinstance(module, nn.Conv)
        and context.method_name == '__call__'
        and 2 in np.atleast_1d(module.strides or 1)
    ):
      output = next_fun(one_hot_image(args[0].shape), **kwargs)
      seen['/'.join(module.scope.path)] = (module.kernel_size[0], args[0].shape, output)
      return output
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(feed_one_hot):
    model.apply(variables, jnp.zeros((1, *image_shape)), train=False)
  return seen


@pytest.mark.parametrize(
    'name,image_shape,overrides,expected',
    [
        ('resnet20', (32, 32, 3), {}, 2),  # stage 2 and 3: 3x3/2
        ('plain20', (32, 32, 3), {}, 2),
        ('resnet20', (32, 32, 3), {'shortcut': 'projection'}, 4),  # + the 1x1/2 projections
        ('preact_resnet20', (32, 32, 3), {}, 2),
        ('resnet18', (32, 32, 3), {}, 7),  # 7x7/2 stem, 3x3/2 and 1x1/2 in stages 2-4
        ('resnet50', (32, 32, 3), {}, 7),  # v1.5: the stride on the bottleneck's 3x3
        ('resnet50', (32, 32, 3), {'stride_in_1x1': True}, 7),  # v1: on the first 1x1
    ],
)
def test_strided_convolutions_centre_their_window_on_the_sampled_pixel(
    name, image_shape, overrides, expected
):
  outputs = strided_conv_outputs(name, image_shape, **overrides)
  assert len(outputs) == expected
  for path, (k, input_shape, output) in outputs.items():
    response = np.asarray(output[0, :, :, 0])
    # The sampled pixel's own output reads it through the kernel's centre tap.
    assert response[hot_pixel(input_shape) // 2, hot_pixel(input_shape) // 2] == 1 + (k // 2) * (
        k + 1
    ), path
    np.testing.assert_array_equal(
        response, expected_response(k, input_shape, output.shape), err_msg=path
    )


def test_the_stem_max_pool_centres_its_window_on_the_sampled_pixel():
  model = models.create_model('resnet18', num_classes=10)
  variables = model_stats.init_variables(model, (32, 32, 3))
  pooled = {}

  def one_hot_into_the_pool(next_fun, args, kwargs, context):
    name = context.module.name
    if name == 'stem_bn':  # the pool reads relu(stem_bn(...)): make that a one-hot map
      return one_hot_image(next_fun(*args, **kwargs).shape)
    if name == 'stage1_block1' and context.method_name == '__call__':
      pooled['input'] = args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(one_hot_into_the_pool):
    model.apply(variables, jnp.zeros((1, 32, 32, 3)), train=False)
  response = np.asarray(pooled['input'][0, :, :, 0])
  assert response.shape == (8, 8)
  # Windows 2i-1..2i+1: only output pixel 4 covers the hot input pixel 8. With padding='SAME'
  # (windows 2i..2i+2) output pixel 3 would cover it too.
  assert np.argwhere(response).tolist() == [[4, 4]]


def test_reference_padding_is_symmetric_for_every_kernel_size():
  assert models.reference_padding((1, 1)) == [(0, 0), (0, 0)]
  assert models.reference_padding((3, 3)) == [(1, 1), (1, 1)]
  assert models.reference_padding((7, 7)) == [(3, 3), (3, 3)]
