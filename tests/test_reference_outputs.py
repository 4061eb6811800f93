"""Our networks against outputs PyTorch computed, read without it (tests/data/reference_*).

`benchmarks/reference_parity.py --write_reference tests/data` (run by `make parity`, with torch and
torchvision) wrote them: for torchvision's ResNet-18 and ResNet-50 (batch 2 at 64 px) and the CIFAR
reference's ResNet-20 (batch 4 at 32 px), the input batch, the eval-mode logits, the train-mode
logits and the running statistics that one train-mode forward left. Weights are drawn in torch's
layout from a seed by tests/reference_weights.py (which knows nothing of ours): torchvision's state
dicts (47 MB and 100 MB) are too big to commit, so they are drawn again here and checked against
the recorded checksum; ResNet-20's is stored in its file. Each state dict goes through
`interop.from_state_dict` onto our model, which must compute the same logits and statistics, and
`interop.to_state_dict` must give it back exactly.

A convention wrong in both import and export (a channel order, a kernel's axes, a padding) keeps
that round trip exact; only the logits catch it. The negative tests plant such errors and check that
the comparison fails.
"""

import functools
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import safetensors
import safetensors.numpy

from resnet_jax import models
from resnet_jax.models import interop, stats as model_stats
from tests import reference_weights

DATA = pathlib.Path(__file__).resolve().parent / 'data'
MOMENTUM = 0.1  # torch's BatchNorm default, as the writer's nets use it; flax's 0.9 is 1 - this

# reference file: (our preset, classes, tolerance on max |ours - theirs| / max |theirs| in train
# mode). Eval mode's is 1e-5 for all. Train mode's batch statistics (at ResNet-50's last stage: 8
# values per channel) amplify float32 round-off with depth; measured 4e-6, 5e-5 and 3e-7.
EVAL_TOLERANCE = 1e-5
MODELS = {
    'resnet18': ('resnet18', 1000, 2e-5),
    'resnet50': ('resnet50', 1000, 2e-4),
    'resnet20': ('resnet20', 10, 1e-5),
}


@functools.cache
def record(name: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  path = DATA / f'reference_{name}.safetensors'
  with safetensors.safe_open(str(path), 'numpy') as f:
    metadata = f.metadata()
  return safetensors.numpy.load_file(str(path)), metadata


@functools.cache
def reference_state_dict(name: str) -> dict[str, np.ndarray]:
  """The state dict the reference computed with: stored (ResNet-20) or drawn again, checksummed."""
  arrays, metadata = record(name)
  table = json.loads(metadata['table'])  # torch's key -> shape, in its state_dict() order
  if f'state_dict.{next(iter(table))}' in arrays:
    state_dict = {k: arrays[f'state_dict.{k}'] for k in table}
  else:
    state_dict = reference_weights.generate(table, int(metadata['seed']))
  check_checksum(name, state_dict)
  return state_dict


def check_checksum(name: str, state_dict) -> None:
  got = reference_weights.checksum(state_dict)
  want = {k: record(name)[1][f'state_dict_{k}'] for k in got}
  assert got == want, (
      f'the state dict of reference_{name}.safetensors is not the one its outputs were computed'
      f' with (checksum {got}, recorded {want}): tests/reference_weights.py or the file changed;'
      ' rewrite the files with `make parity` if the generator was changed on purpose'
  )


@functools.cache
def model(name: str) -> models.ResNet:
  preset, num_classes, _ = MODELS[name]
  return models.create_model(preset, num_classes=num_classes)


def relative(ours, theirs) -> float:
  ours, theirs = np.asarray(ours, np.float64), np.asarray(theirs, np.float64)
  return float(np.abs(ours - theirs).max() / np.abs(theirs).max())


def import_weights(name: str, state_dict) -> dict:
  size = record(name)[0]['input'].shape[-1]
  like = model_stats.abstract_variables(model(name), (size, size, 3))
  return interop.from_state_dict(model(name), state_dict, like)


@functools.cache
def forward(name: str, padding):
  """(eval logits, train logits, updated batch_stats), compiled once per model; keyed by
  `models.resnet.reference_padding` too, so that a test that patches the padding traces again."""
  del padding
  net = model(name)

  def run(variables, images):
    logits, updated = net.apply(variables, images, train=True, mutable=['batch_stats'])
    return net.apply(variables, images, train=False), logits, updated

  return jax.jit(run)


def errors(name: str, variables, undo_unbiased: bool = True) -> dict[str, float]:
  """max |ours - theirs| / max |theirs| of the eval logits, the train-mode logits and the updated
  running averages. torch updates running_var with the unbiased batch variance (x n/(n-1)), flax
  with the biased one: the reference's update is converted to flax's first (`undo_unbiased`)."""
  arrays, _ = record(name)
  images = jnp.asarray(arrays['input'].transpose(0, 2, 3, 1))  # NCHW -> our NHWC
  eval_logits, logits, updated = forward(name, models.resnet.reference_padding)(variables, images)
  ours = interop.to_state_dict(model(name), {'params': variables['params'], **updated})
  old = reference_state_dict(name)
  mean, var = [], []
  for key in [k for k in ours if k.endswith('.running_mean')]:
    bn = key.removesuffix('.running_mean')
    n = int(arrays[f'count.{bn}'])
    mean.append(relative(ours[key], arrays[f'updated.{key}']))
    old_var, new_var = old[f'{bn}.running_var'], arrays[f'updated.{bn}.running_var']
    factor = (n - 1) / n if undo_unbiased else 1.0
    batch_var_biased = (new_var - (1 - MOMENTUM) * old_var) / MOMENTUM * factor
    flax_var = (1 - MOMENTUM) * old_var + MOMENTUM * batch_var_biased
    var.append(relative(ours[f'{bn}.running_var'], flax_var))
  return {
      'eval': relative(eval_logits, arrays['eval_logits']),
      'train': relative(logits, arrays['train_logits']),
      'running_mean': max(mean),
      'running_var': max(var),
  }


@pytest.mark.parametrize('name', MODELS)
def test_imported_weights_compute_the_references_outputs_and_export_back_exactly(name):
  state_dict = reference_state_dict(name)
  variables = import_weights(name, state_dict)
  found = errors(name, variables)
  assert found['eval'] < EVAL_TOLERANCE, found
  assert max(found.values()) < MODELS[name][2], found
  exported = interop.to_state_dict(model(name), variables)
  assert sorted(exported) == sorted(state_dict)
  for key, value in state_dict.items():
    assert exported[key].dtype == value.dtype and exported[key].shape == value.shape, key
    np.testing.assert_array_equal(exported[key], value, err_msg=key)


# ----------------------------------------------------------------------------- the check bites


def test_a_changed_generator_is_told_by_the_checksum():
  table = json.loads(record('resnet18')[1]['table'])
  with pytest.raises(AssertionError, match='tests/reference_weights.py or the file changed'):
    check_checksum('resnet18', reference_weights.generate(table, seed=1))


# A wrong convention, planted in both directions: `into` edits the state dict before the import,
# `out` (its inverse) the export after it, or `patch` changes our code (both directions at once).
# Each keeps the import/export round trip exact; the logits must differ.
_REVERSED = slice(None, None, -1)


def _each(state_dict, select, edit):
  return {k: edit(v) if select(k, v) else v for k, v in state_dict.items()}


def _spatial_transpose(state_dict):  # every conv kernel read as (W, H): an involution
  return _each(state_dict, lambda k, v: v.ndim == 4, lambda v: v.transpose(0, 1, 3, 2))


def _bgr(state_dict):  # the stem's input channels reversed (RGB <-> BGR): an involution
  return _each(state_dict, lambda k, v: k == 'conv1.weight', lambda v: v[:, _REVERSED])


def _head_features(inverse: bool):  # the classifier's input features in another order
  def edit(v):
    order = np.roll(np.arange(v.shape[1]), 1)
    return v[:, np.argsort(order) if inverse else order]

  return lambda sd: _each(sd, lambda k, v: k in ('fc.weight', 'linear.weight'), edit)


def _same_padding(monkeypatch):  # this project's convention before it padded as the references do
  monkeypatch.setattr(models.resnet, 'reference_padding', lambda kernel_size: 'SAME')


def _option_a_zeros_after(monkeypatch):  # the CIFAR reference's layout ignored: our channel order
  original = interop._stream_permutations
  monkeypatch.setattr(
      interop,
      '_stream_permutations',
      lambda net: {k: np.arange(len(v)) for k, v in original(net).items()},
  )


BUGS = {
    'kernel (H, W) transposed': dict(into=_spatial_transpose, out=_spatial_transpose),
    'stem reads BGR': dict(into=_bgr, out=_bgr),
    'classifier features permuted': dict(into=_head_features(False), out=_head_features(True)),
    "padding='SAME'": dict(patch=_same_padding),
    "option A's zero channels after, not a quarter each side": dict(patch=_option_a_zeros_after),
}
CASES = [
    ('kernel (H, W) transposed', 'resnet18'),
    ('kernel (H, W) transposed', 'resnet20'),
    ('stem reads BGR', 'resnet18'),
    ('stem reads BGR', 'resnet20'),
    ('classifier features permuted', 'resnet50'),
    ("padding='SAME'", 'resnet18'),
    ("padding='SAME'", 'resnet20'),
    ("option A's zero channels after, not a quarter each side", 'resnet20'),  # ResNet-20 only
]


@pytest.mark.parametrize('bug,name', CASES)
def test_a_convention_wrong_both_ways_fails_the_comparison(bug, name, monkeypatch):
  into, out = BUGS[bug].get('into', dict), BUGS[bug].get('out', dict)
  if 'patch' in BUGS[bug]:
    BUGS[bug]['patch'](monkeypatch)
  state_dict = reference_state_dict(name)
  variables = import_weights(name, into(state_dict))
  exported = out(interop.to_state_dict(model(name), variables))
  for key, value in state_dict.items():  # invisible to a round trip...
    np.testing.assert_array_equal(exported[key], value, err_msg=key)
  found = errors(name, variables)
  assert min(found['eval'], found['train']) > 1e-2, found  # ...but not to the reference's logits


@pytest.mark.parametrize('name', ['resnet18', 'resnet20'])
def test_torchs_unbiased_running_variance_taken_as_it_is_misses_ours(name):
  variables = import_weights(name, reference_state_dict(name))
  found = errors(name, variables, undo_unbiased=False)
  assert found['running_var'] > 1e-3 > found['running_mean'], found
