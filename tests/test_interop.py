"""Pretrained weights in and out: the name table against torchvision's and the CIFAR reference's own
state dicts, exact round trips, and `python -m resnet_jax.cli.convert` through its CLI.

(That the mapped networks compute what torchvision and the CIFAR reference compute is shown by
benchmarks/reference_parity.py, which needs PyTorch, and checked without it against outputs it
recorded by tests/test_reference_outputs.py.)
"""

import importlib.util
import json
import os
import subprocess
import sys

import jax
import numpy as np
import pytest
import safetensors.numpy

from resnet_jax.workdir import checkpoints as checkpointing
from resnet_jax.cli import convert
from resnet_jax.models import interop, stats as model_stats
from resnet_jax import models
from resnet_jax.common.errors import UserError
from tests.cli import REPO, assert_trees_equal, check, read_jsonl, restored_state, run_main

# state_dict() key -> shape of torchvision's resnet18/resnet50 and the CIFAR reference's resnet20,
# recorded from those libraries (see the file's "source").
REFERENCE = json.loads((REPO / 'tests' / 'data' / 'reference_state_dicts.json').read_text())[
    'models'
]


def image_shape(name):
  return (32, 32, 3) if models.model_spec(name)['stem'] == 'cifar' else (64, 64, 3)


def random_variables(model, shape, seed=0):
  rng = np.random.default_rng(seed)
  abstract = model_stats.abstract_variables(model, shape)
  return jax.tree.map(lambda x: rng.standard_normal(x.shape).astype(x.dtype), abstract)


@pytest.mark.parametrize('name', models.model_names())
def test_the_name_table_covers_every_variable_of_every_preset_exactly_once(name):
  # Depth 1202 is built scanned (configs/cifar10.py); its unrolled layout is depth 110's, longer.
  for scan_blocks in (True,) if models.model_depth(name) >= 1000 else (False, True):
    model = models.create_model(name, num_classes=10, scan_blocks=scan_blocks)
    abstract = model_stats.abstract_variables(model, image_shape(name))
    variables = {c: interop.unrolled(abstract[c]) for c in ('params', 'batch_stats')}
    table = interop.reference_names(model, variables)
    assert sorted(table) == sorted(
        tuple(k.key for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(variables)[0]
    )
    names = [name for name, _, _, _ in table.values()]
    assert len(names) == len(set(names))  # no reference name is used twice


@pytest.mark.parametrize(
    'reference,name,num_classes,shape',
    [
        ('torchvision.models.resnet18', 'resnet18', 1000, (224, 224, 3)),
        ('torchvision.models.resnet50', 'resnet50', 1000, (224, 224, 3)),
        ('CIFAR reference resnet20 (option A)', 'resnet20', 10, (32, 32, 3)),
    ],
)
def test_exports_have_exactly_the_references_keys_and_shapes(reference, name, num_classes, shape):
  model = models.create_model(name, num_classes=num_classes)
  abstract = model_stats.abstract_variables(model, shape)
  state_dict = interop.to_state_dict(
      model, jax.tree.map(lambda x: np.zeros(x.shape, x.dtype), abstract)
  )
  assert {k: list(v.shape) for k, v in state_dict.items()} == REFERENCE[reference]
  assert interop.detect(state_dict) == (name, num_classes)


@pytest.mark.parametrize(
    'name,overrides',
    [
        ('resnet20', {}),  # option A: the CIFAR reference's channel order is a permutation of ours
        ('preact_resnet20', {'scan_blocks': True}),
        ('resnet50', {'stride_in_1x1': True}),
        ('plain18', {}),
    ],
)
def test_state_dict_round_trip_is_exact(name, overrides):
  model = models.create_model(name, num_classes=10, **overrides)
  variables = random_variables(model, image_shape(name))
  state_dict = interop.to_state_dict(model, variables)
  assert_trees_equal(interop.from_state_dict(model, state_dict, variables), variables)
  if (
      name == 'resnet20'
  ):  # the relabelling is not the identity: stage 2's stream moved by 8 channels
    ours = variables['params']['stage2_block1']['BatchNorm_1']['scale']
    np.testing.assert_array_equal(state_dict['layer2.0.bn2.weight'][8:24], ours[:16])


def save(state_dict, path):
  safetensors.numpy.save_file(state_dict, str(path))
  return str(path)


@pytest.fixture(scope='module')
def resnet18_file(tmp_path_factory):
  """A torchvision-layout ResNet-18 state dict with random weights, as torchvision writes it."""
  model = models.create_model('resnet18', num_classes=1000)
  state_dict = interop.to_state_dict(model, random_variables(model, (32, 32, 3)))
  assert {k: list(v.shape) for k, v in state_dict.items()} == REFERENCE[
      'torchvision.models.resnet18'
  ]
  return save(state_dict, tmp_path_factory.mktemp('weights') / 'resnet18.safetensors')


def convert_cli(*args):
  return subprocess.run(
      [sys.executable, '-m', 'resnet_jax.cli.convert', *args],
      cwd=REPO,
      capture_output=True,
      text=True,
      timeout=300,
      env={**os.environ, 'PYTHONPATH': str(REPO), 'TF_CPP_MIN_LOG_LEVEL': '2'},
  )


SMALL_IMAGENET = ['--config=configs/imagenet.py:resnet18', '--config.dataset.image_size=32']


@pytest.fixture(scope='module')
def imported(tmp_path_factory, resnet18_file):
  """The workdir `convert import` writes for the ResNet-18 file (read, never written, by tests)."""
  workdir = tmp_path_factory.mktemp('imported') / 'resnet18'
  result = check(convert_cli('import', resnet18_file, f'--workdir={workdir}', *SMALL_IMAGENET))
  assert result.stdout.startswith(f'wrote {workdir}') and not result.stderr.strip()
  return workdir


@pytest.mark.slow
def test_import_evaluate_and_export_round_trip_bit_exact(tmp_path, resnet18_file, imported):
  workdir, exported = imported, tmp_path / 'exported.safetensors'
  # --mode=eval accepts the imported workdir (mock ImageNet: 1000 classes, images resized to 32).
  result = check(
      run_main(
          *SMALL_IMAGENET,
          f'--workdir={workdir}',
          '--mode=eval',
          '--config.train.eval_batch_size=16',
          mock_examples=16,
      )
  )
  metrics = json.loads(result.stdout.strip().splitlines()[-1])
  assert metrics['step'] == 0 and metrics['eval_examples'] == 16
  check(convert_cli('export', f'--workdir={workdir}', f'--out={exported}'))
  original, back = safetensors.numpy.load_file(resnet18_file), safetensors.numpy.load_file(
      str(exported)
  )
  assert original.keys() == back.keys()
  for key in original:
    np.testing.assert_array_equal(original[key], back[key], err_msg=key)


@pytest.mark.slow
def test_fine_tuning_from_imported_weights_adapts_the_stem_and_replaces_the_head(
    tmp_path, imported
):
  source, target = imported, tmp_path / 'digits'
  # 8x8 grey digits, 10 classes, lr 0: one step keeps every imported weight.
  result = check(
      run_main(
          '--config=configs/digits.py:resnet18',
          f'--workdir={target}',
          # Relative to the working directory.
          f'--config.init_from={os.path.relpath(source, REPO)}',
          f'--config.dataset.data_dir={tmp_path / "tfds"}',
          '--config.schedule.base_lr=0',
          '--config.train.num_steps=1',
          '--config.train.batch_size=16',
          '--config.train.eval_batch_size=16',
          devices=1,
      )
  )
  # The console says what fine-tuning took: all but the head (2 arrays) and the stem (adapted).
  assert f'fine-tuning from {source}/checkpoints/0: loaded 99 of 102 arrays' in result.stdout
  assert '  re-initialised the classifier (head): another number of classes' in result.stdout
  assert '  adapted the stem (stem_conv) to another number of image channels' in result.stdout
  assert 're-initialised 0' not in result.stdout and 'left out' not in result.stdout
  before, after = restored_state(source, 0)['params'], restored_state(target, 1)['params']
  assert after['head']['kernel'].shape == (512, 10) and before['head']['kernel'].shape == (
      512,
      1000,
  )
  # A grey image x through the summed kernel gives what the RGB image (x, x, x) gave before.
  np.testing.assert_allclose(
      after['stem_conv']['kernel'], before['stem_conv']['kernel'].sum(2, keepdims=True), rtol=1e-6
  )
  for tree in (before, after):
    del tree['head'], tree['stem_conv']
  assert_trees_equal(before, after)
  assert read_jsonl(target / 'metrics.jsonl')[-1]['step'] == 1


def test_adapting_the_stem_to_more_channels_keeps_its_scale():
  kernel = np.random.default_rng(0).standard_normal((7, 7, 3, 4)).astype(np.float32)
  adapted = np.asarray(checkpointing.adapt_input_channels(kernel, 4))
  assert adapted.shape == (7, 7, 4, 4)
  # RGB's kernels repeated (R again for the 4th channel), each scaled by 3/4: the same response
  # to an image whose channels are equal, whatever their number.
  np.testing.assert_allclose(
      adapted, np.concatenate([kernel, kernel[:, :, :1]], axis=2) * 0.75, rtol=1e-6
  )


def mutated(state_dict, drop=(), add=None, reshape=None):
  state_dict = {k: v for k, v in state_dict.items() if k not in drop}
  state_dict.update(add or {})
  for key, shape in (reshape or {}).items():
    state_dict[key] = np.zeros(shape, np.float32)
  return state_dict


@pytest.mark.parametrize(
    'change,args,message',
    [
        ({'drop': ['layer3.1.bn2.running_var']}, [], 'missing keys for a torchvision basic ResNet'),
        (
            {'add': {'layer1.0.se.fc1.weight': np.zeros((4, 64, 1, 1), np.float32)}},
            [],
            'unexpected keys',
        ),  # SE-ResNet
        (
            {'reshape': {'layer2.0.conv2.weight': (128, 128, 5, 5)}},
            [],
            'layer2.0.conv2.weight has shape (128, 128, 5, 5)',
        ),
        (
            {},
            ['--model=resnet34'],
            'missing keys for a torchvision basic ResNet with stages (3, 4, 6, 3)',
        ),
        ({}, ['--model=resnet50'], 'looks like a resnet18 with 1000 classes'),
        ({'drop': ['fc.weight', 'fc.bias']}, [], 'not a ResNet state dict'),
        (
            {'add': {'layer1.0.bn1.running_var': np.full(64, np.nan, np.float32)}},
            [],
            'holds NaN or infinite values in layer1.0.bn1.running_var',
        ),
    ],
)
def test_a_state_dict_that_does_not_fit_is_refused_in_one_line(
    tmp_path, resnet18_file, change, args, message
):
  path = save(
      mutated(safetensors.numpy.load_file(resnet18_file), **change), tmp_path / 'bad.safetensors'
  )
  model = next((a.split('=')[1] for a in args), None)
  with pytest.raises(UserError) as raised:
    convert.import_weights(path, str(tmp_path / 'workdir'), model_name=model)
  assert message in str(raised.value) and '\n' not in str(raised.value)
  assert not (tmp_path / 'workdir').exists()  # nothing written


@pytest.mark.slow
def test_convert_cli_errors_are_one_line_exit_2_and_write_nothing(tmp_path, resnet18_file):
  not_weights = tmp_path / 'notes.safetensors'
  not_weights.write_text('not a tensor file')
  existing = tmp_path / 'existing'
  existing.mkdir()
  (existing / 'keep.txt').write_text('mine')
  cases = [
      (['import', str(not_weights), f'--workdir={tmp_path / "a"}'], 'is not a .safetensors file'),
      (['import', str(tmp_path / 'model.pth'), f'--workdir={tmp_path / "a"}'], 'does not exist'),
      (['import', resnet18_file, f'--workdir={existing}'], 'already holds files'),
      (
          ['export', f'--workdir={existing}', f'--out={tmp_path / "x.safetensors"}'],
          'is not a resnet_jax workdir',
      ),
      (['frobnicate', f'--workdir={existing}'], 'usage: python -m resnet_jax.cli.convert import'),
  ]
  for args, message in cases:
    result = convert_cli(*args)
    assert result.returncode == 2, (args, result.stderr[-2000:])
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith('error: ') and message in lines[0], (args, lines)
  assert sorted(p.name for p in tmp_path.iterdir()) == ['existing', 'notes.safetensors']
  assert (existing / 'keep.txt').read_text() == 'mine' and len(list(existing.iterdir())) == 1


def test_pytorch_files_without_torch_say_how_to_convert(tmp_path):
  path = tmp_path / 'resnet50.pth'
  path.write_bytes(b'PK')
  if importlib.util.find_spec('torch') is not None:
    pytest.skip('PyTorch is installed here')
  with pytest.raises(UserError, match='safetensors.torch as s; s.save_file'):
    convert.read_state_dict(str(path))


def test_an_import_whose_classifier_does_not_fit_the_configs_dataset_is_refused(
    tmp_path, resnet18_file
):
  from configs import digits

  with pytest.raises(UserError, match="classifier has 1000 classes, but dataset 'sklearn_digits'"):
    convert.import_weights(resnet18_file, str(tmp_path / 'w'), config=digits.get_config('resnet18'))
  assert not (tmp_path / 'w').exists()  # else eval would refuse the workdir it wrote
