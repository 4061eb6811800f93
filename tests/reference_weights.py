"""Seeded weights for a PyTorch state dict, drawn in PyTorch's layout from its key -> shape table.

Shared by the writer of the committed reference outputs (`benchmarks/reference_parity.py
--write_reference`, run with torch) and the ordinary suite (tests/test_reference_outputs.py, without
it): torchvision's ResNet-18/50 state dicts (47 MB and 100 MB) are too big to commit, so both sides
draw them from a seed instead. This file knows nothing of resnet_jax's conventions: it walks the
table in its order (torch's `state_dict()` order) and draws each tensor from numpy's legacy
`RandomState`, whose stream numpy's compatibility policy freezes. A change of the generator (or of
the table) changes `checksum`, which the reference files record.
"""

import hashlib
from typing import Mapping, Sequence

import numpy as np


def generate(table: Mapping[str, Sequence[int]], seed: int) -> dict[str, np.ndarray]:
  """{key: array} for every key of `table` ({state-dict key: shape}), in its order.

  A module with a `running_mean` is a BatchNorm: weight ~ U(0.5, 1.5), bias ~ N(0, 0.2),
  running_mean ~ N(0, 0.2), running_var ~ U(0.5, 1.5) (positive), num_batches_tracked 0 (int64).
  Otherwise a weight of rank 4 (a convolution, OIHW) or 2 (a linear layer, out x in) is
  N(0, 1) x sqrt(g / fan_in), fan_in = the product of all but its first axis, g = 2 for
  convolutions (He et al.'s) and 1 for linear layers; a bias is N(0, 0.1).
  """
  rng = np.random.RandomState(seed)
  out = {}
  for key, shape in table.items():
    module, leaf = key.rsplit('.', 1)
    shape = tuple(shape)
    if leaf == 'num_batches_tracked':
      value = np.zeros(shape, np.int64)
    elif f'{module}.running_mean' in table:  # a BatchNorm
      value = {
          'weight': lambda: rng.uniform(0.5, 1.5, shape),
          'bias': lambda: rng.normal(0.0, 0.2, shape),
          'running_mean': lambda: rng.normal(0.0, 0.2, shape),
          'running_var': lambda: rng.uniform(0.5, 1.5, shape),
      }[leaf]()
    elif leaf == 'weight' and len(shape) in (2, 4):
      fan_in = int(np.prod(shape[1:]))
      value = rng.standard_normal(shape) * np.sqrt((2.0 if len(shape) == 4 else 1.0) / fan_in)
    elif leaf == 'bias':
      value = rng.normal(0.0, 0.1, shape)
    else:
      raise ValueError(f'no rule to draw {key} of shape {shape}')
    out[key] = value.astype(np.float32) if value.dtype == np.float64 else value
  return out


def checksum(state_dict: Mapping[str, np.ndarray]) -> dict[str, str]:
  """sha256 over every key, dtype, shape and the array's bytes, in order; and the sum of |values|
  (float64, printed to 10 digits: a readable hint of how far a mismatching generator is off)."""
  digest = hashlib.sha256()
  total = 0.0
  for key, value in state_dict.items():
    value = np.asarray(value)
    digest.update(f'{key}:{value.dtype.str}:{value.shape};'.encode())
    digest.update(value.tobytes())  # C order, whatever the array's strides
    total += float(np.abs(value.astype(np.float64)).sum())
  return {'sha256': digest.hexdigest(), 'abs_sum': f'{total:.10g}'}
