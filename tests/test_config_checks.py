"""Every field of resnet_jax/config/fields.py with a bad value, and every way a config file can
fail, through the real CLI: one `error:` line naming the flag, exit status 2, no traceback, no
workdir.

A field added to resnet_jax/config/fields.py without a row here fails
`test_every_field_has_a_row`: add a row with a bad value and the words of its error, and make the
resolver (resnet_jax/config/resolve.py) refuse that value.
"""

import pytest

from resnet_jax.config import fields, resolve
from resnet_jax.workdir import record as run_record
from tests.cli import run_mains

R = ['--config=configs/digits.py:resnet8', '--config.train.num_steps=20']

# (field, the flags that set a bad value, words the error line holds). Booleans get a value that
# is no boolean; the others a value outside their range, order or type.
BAD_VALUES = [
    ('seed', ['--config.seed=-1'], '--config.seed=-1 must be an integer in [0, 2**31)'),
    (
        'init_from',
        ['--config.init_from={tmp}/typo'],
        '--config.init_from={tmp}/typo does not exist',
    ),
    (
        'init_from_partial',
        ['--config.init_from_partial=maybe'],
        'init_from_partial=maybe must be True or False',
    ),
    (
        'model.name',
        ['--config.model.name=resnet7'],
        "--config.model.name='resnet7': unknown model 'resnet7'",
    ),
    ('model.shortcut', ['--config.model.shortcut=D'], "--config.model.shortcut='D' is not one of"),
    ('model.dtype', ['--config.model.dtype=float8'], "--config.model.dtype='float8' is not one of"),
    ('model.dtype', ['--config.model.dtype=float16'], 'needs loss scaling, which this trainer'),
    (
        'model.zero_init_residual',
        ['--config.model.zero_init_residual=2'],
        '--config.model.zero_init_residual=2 must be True or False',
    ),
    ('model.stride_in_1x1', ['--config.model.stride_in_1x1=True'], 'resnet8 has basic blocks'),
    (
        'model.remat',
        ['--config.model.remat=maybe'],
        '--config.model.remat=maybe must be True or False',
    ),
    ('model.conv_kernel_grad', ['--config.model.conv_kernel_grad=fft'], 'conv_kernel_grad='),
    (
        'model.scan_blocks',
        ['--config.model.scan_blocks=maybe'],
        'scan_blocks=maybe must be True or False',
    ),
    ('dataset.name', ['--config.dataset.name='], "--config.dataset.name='' must not be empty"),
    ('dataset.data_dir', ['--config.dataset.data_dir={tmp}/file'], 'must name a directory'),
    ('dataset.manual_dir', ['--config.dataset.manual_dir={tmp}/file'], 'must name a directory'),
    ('dataset.train_split', ['--config.dataset.train_split= '], 'train_split=' + "' ' must not be"),
    ('dataset.eval_split', ['--config.dataset.eval_split='], "eval_split='' must not be empty"),
    ('dataset.augment', ['--config.dataset.augment=mixup'], "augment='mixup' is not one of"),
    ('dataset.pad', ['--config.dataset.pad=-1'], '--config.dataset.pad=-1 must not be negative'),
    (
        'dataset.flip',
        ['--config.dataset.flip=maybe'],
        '--config.dataset.flip=maybe must be True or False',
    ),
    ('dataset.image_size', ['--config.dataset.image_size=-4'], 'image_size=-4 must be positive'),
    (
        'dataset.mean',
        ['--config.dataset.mean=(0.5,0.5)', '--config.dataset.std=(0.2,)'],
        'must have one value per channel each',
    ),
    ('dataset.std', ['--config.dataset.std=(0.0,)'], 'std=(0.0,) must be positive'),
    ('dataset.shuffle_buffer', ['--config.dataset.shuffle_buffer=0'], 'shuffle_buffer=0 must be'),
    (
        'dataset.cache',
        ['--config.dataset.cache=maybe'],
        '--config.dataset.cache=maybe must be True',
    ),
    ('dataset.num_shards', ['--config.dataset.num_shards=-2'], 'num_shards=-2 must not be'),
    ('train.batch_size', ['--config.train.batch_size=12'], 'divide over the 8 devices'),
    ('train.eval_batch_size', ['--config.train.eval_batch_size=0'], 'must be positive'),
    ('train.num_steps', ['--config.train.num_steps=0'], 'num_steps=0 must be a positive integer'),
    (
        'train.num_steps',
        ['--config.train.num_steps=ten'],
        "=ten cannot be read as that field's type",
    ),
    ('train.num_epochs', ['--config.train.num_epochs=-1'], 'num_epochs=-1.0 must not be negative'),
    ('train.log_every_steps', ['--config.train.log_every_steps=0'], 'must be positive'),
    ('train.eval_every_steps', ['--config.train.eval_every_steps=-5'], 'must be positive'),
    ('train.checkpoint_every_steps', ['--config.train.checkpoint_every_steps=0'], 'be positive'),
    ('train.keep_checkpoints', ['--config.train.keep_checkpoints=0'], 'must be positive'),
    (
        'train.async_checkpoints',
        ['--config.train.async_checkpoints=maybe'],
        'must be True or False',
    ),
    ('train.label_smoothing', ['--config.train.label_smoothing=1.0'], 'must be in [0, 1)'),
    ('train.max_skipped_steps', ['--config.train.max_skipped_steps=-1'], 'must not be negative'),
    ('train.log_diagnostics', ['--config.train.log_diagnostics=maybe'], 'must be True or False'),
    ('optimizer.momentum', ['--config.optimizer.momentum=1.5'], 'momentum=1.5 must be in [0, 1)'),
    (
        'optimizer.nesterov',
        ['--config.optimizer.nesterov=maybe'],
        'nesterov=maybe must be True or False',
    ),
    ('optimizer.weight_decay', ['--config.optimizer.weight_decay=-0.1'], 'must not be negative'),
    (
        'optimizer.decoupled_weight_decay',
        ['--config.optimizer.decoupled_weight_decay=x'],
        '=x must be True',
    ),
    (
        'optimizer.weight_decay_on_all_params',
        ['--config.optimizer.weight_decay_on_all_params=x'],
        '=x must be True or False',
    ),
    ('schedule.name', ['--config.schedule.name=linear'], "name='linear' is not one of"),
    ('schedule.base_lr', ['--config.schedule.base_lr=-0.1'], 'base_lr=-0.1 must not be negative'),
    ('schedule.base_lr', ['--config.schedule.base_lr=inf'], 'base_lr=inf must be a finite number'),
    ('schedule.scale_lr_by_batch', ['--config.schedule.scale_lr_by_batch=-256'], 'not be negative'),
    ('schedule.boundaries', ['--config.schedule.boundaries=(-5,)'], '(-5,) must be positive'),
    ('schedule.boundaries', ['--config.schedule.boundaries=(3,3)'], 'must increase strictly'),
    (
        'schedule.boundaries',
        ['--config.schedule.boundaries=(1000,500)'],
        "must increase strictly, e.g. --config.schedule.boundaries='(500, 1000)'",
    ),
    ('schedule.boundaries', ['--config.schedule.boundaries=(10.5,)'], 'must be whole steps'),
    ('schedule.boundaries_epochs', ['--config.schedule.boundaries_epochs=(2,1)'], 'increase'),
    ('schedule.decay_factor', ['--config.schedule.decay_factor=-1'], 'decay_factor=-1.0 must be'),
    (
        'schedule.warmup_steps',
        ['--config.schedule.warmup_steps=5'],
        "--config.schedule.warmup_steps=5 is the cosine schedule's",
    ),
    ('schedule.warmup_epochs', ['--config.schedule.warmup_epochs=-1'], 'must not be negative'),
    ('schedule.warmup_lr', ['--config.schedule.warmup_lr=-0.01'], 'warmup_lr=-0.01 must not be'),
    ('schedule.warmup_until_error', ['--config.schedule.warmup_until_error=-1'], 'must not be'),
    ('parallelism.mode', ['--config.parallelism.mode=pjit'], "mode='pjit' is not one of"),
    ('parallelism.batch_norm', ['--config.parallelism.batch_norm=sync'], "'sync' is not one of"),
    ('parallelism.cpu_devices', ['--config.parallelism.cpu_devices=-1'], 'must not be negative'),
    ('parallelism.cpu_backend', ['--config.parallelism.cpu_backend=mkl'], "'mkl' is not one"),
    ('dataset.scale_range', ['--config.dataset.scale_range=(480,256)'], 'scale_range=(480, 256)'),
    ('dataset.normalisation', ['--config.dataset.normalisation=zca'], "'zca' is not one of"),
    ('dataset.lighting_std', ['--config.dataset.lighting_std=-0.1'], 'must not be negative'),
    ('dataset.lighting_pca', ['--config.dataset.lighting_pca=imagenet'], "'imagenet' is not one"),
    ('evaluation.protocol', ['--config.evaluation.protocol=5crop'], "'5crop' is not one of"),
    ('evaluation.resize', ['--config.evaluation.resize=-1'], 'resize=-1 must not be negative'),
    ('evaluation.scales', ['--config.evaluation.scales=(224,224)'], 'must be distinct positive'),
    ('evaluation.forward_batch', ['--config.evaluation.forward_batch=0'], '=0 must be positive'),
]

# The config file's own failures, and the other flags read with the config.
BAD_FILES = [
    (['--config=configs/no_such.py'], 'config file configs/no_such.py does not exist'),
    (['--config=configs'], '--config configs is a directory (it holds cifar10.py, cifar100.py'),
    (['--config=configs', '--config.seed=1'], '--config configs is a directory'),
    (['--config={tmp}/imports.py'], "failed (line 1): ModuleNotFoundError: No module named 'nope"),
    (['--config={tmp}/raises.py:resnet8'], 'raises.py failed (line 5): RuntimeError: no GPU here'),
    (['--config={tmp}/none.py'], 'none.py: get_config() returned None'),
    (['--config={tmp}/none.py', '--config.seed=1'], 'none.py: get_config() returned None'),
    (['--config={tmp}/empty.py'], 'empty.py defines no get_config()'),
    (['--config={tmp}/empty.py', '--config.seed=1'], 'empty.py defines no get_config()'),
    (
        [*R, '--accept_changes=train.batch_sise,nonsense'],
        "no config field 'train.batch_sise' (did you mean 'train.batch_size'?), 'nonsense'",
    ),
]

FILES = {
    'imports.py': 'import nope_not_a_module\n',
    'raises.py': (
        'from configs import digits\n\n\ndef get_config(preset):\n'
        "  raise RuntimeError('no GPU here')\n"
    ),
    'none.py': 'def get_config():\n  pass\n',
    'empty.py': '"""A file without get_config()."""\n',
    'file': 'not a directory\n',
}


def test_every_field_has_a_row():
  every_field = run_record.flatten(resolve.config_json(fields.base_config('resnet20')))
  missing = sorted(set(every_field) - {field for field, _, _ in BAD_VALUES})
  assert not missing, (
      f'resnet_jax/config/fields.py fields without a row in BAD_VALUES: {missing}; add a row with a'
      ' bad value and the words of its error (and make config/resolve.py refuse it)'
  )


@pytest.fixture(scope='module')
def refused(tmp_path_factory):
  """Every case of both tables, run through the CLI: {index: (workdir, CompletedProcess)}."""
  tmp = tmp_path_factory.mktemp('configs')
  for name, text in FILES.items():
    (tmp / name).write_text(text)
  cases = [[*R, *flags] for _, flags, _ in BAD_VALUES] + [flags for flags, _ in BAD_FILES]
  workdirs = [tmp / f'run{i}' for i in range(len(cases))]
  args = [
      [a.format(tmp=tmp) for a in case] + [f'--workdir={workdir}']
      for case, workdir in zip(cases, workdirs)
  ]
  return tmp, list(zip(workdirs, run_mains(args)))


def _check_refused(workdir, result, words):
  lines = result.stderr.strip().splitlines()
  assert result.returncode == 2, (result.args, result.stderr[-2000:])
  assert len(lines) == 1 and lines[0].startswith('error: '), (result.args, lines)
  assert words in lines[0], (result.args, lines[0])
  assert not workdir.exists(), result.args


@pytest.mark.parametrize('index', range(len(BAD_VALUES)), ids=[f for f, _, _ in BAD_VALUES])
def test_a_bad_value_of_each_field_is_one_line_and_creates_nothing(refused, index):
  tmp, results = refused
  _check_refused(*results[index], BAD_VALUES[index][2].format(tmp=tmp))
  assert not (tmp / 'typo').exists()


@pytest.mark.parametrize('index', range(len(BAD_FILES)))
def test_a_config_file_that_fails_is_one_line_and_creates_nothing(refused, index):
  tmp, results = refused
  _check_refused(*results[len(BAD_VALUES) + index], BAD_FILES[index][1].format(tmp=tmp))
