"""The package installs (`pip install -e .`, as `make setup` does); `resnet-jax` runs anywhere."""

import importlib.metadata
import os
import site
import subprocess
import sys

import pytest

from tests.cli import REPO


@pytest.fixture(scope='module')
def installed_command(tmp_path_factory) -> str:
  """`resnet-jax` from an editable install of this checkout into a throwaway venv.

  The venv sees this environment's packages through a .pth file: `--system-site-packages` would
  show the base interpreter's, not those of the venv the tests run in. Nothing is downloaded.
  """
  try:
    major = int(importlib.metadata.version('setuptools').split('.')[0])
  except importlib.metadata.PackageNotFoundError:
    major = 0
  if major < 64:
    pytest.skip('editable installs offline need setuptools >= 64 in the test environment')
  venv = tmp_path_factory.mktemp('venv')
  subprocess.run([sys.executable, '-m', 'venv', '--without-pip', str(venv)], check=True)
  (purelib,) = (venv / 'lib').glob('python*/site-packages')
  (purelib / 'shared.pth').write_text('\n'.join(site.getsitepackages()) + '\n')
  install = subprocess.run(
      [venv / 'bin' / 'python', '-m', 'pip', 'install', '--quiet', '--no-deps']
      + ['--no-build-isolation', '--no-index', '-e', str(REPO)],
      capture_output=True,
      text=True,
      timeout=120,
  )
  assert install.returncode == 0, install.stderr[-3000:]
  return str(venv / 'bin' / 'resnet-jax')


def run_elsewhere(command: str, *args, cwd) -> subprocess.CompletedProcess:
  environment = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}  # only the install
  return subprocess.run(
      [command, *args], cwd=cwd, env=environment, capture_output=True, text=True, timeout=120
  )


def test_help_from_another_folder(installed_command, tmp_path):
  result = run_elsewhere(installed_command, '--help', cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'resnet_jax/config/fields.py' in result.stdout and '--workdir' in result.stdout


def test_list_presets_from_another_folder(installed_command, tmp_path):
  result = run_elsewhere(installed_command, '--list_presets', cwd=tmp_path)
  assert result.returncode == 0, result.stderr[-2000:]
  assert 'resnet1202' in result.stdout and 'none here' in result.stdout
  assert not any(tmp_path.iterdir())


def test_config_file_that_imports_its_sibling_from_another_folder(installed_command, tmp_path):
  """configs/cifar100.py imports configs/cifar10.py: read by path, from anywhere (the config is
  built and checked; the bad batch size stops the run before anything is created)."""
  config = REPO / 'configs' / 'cifar100.py'
  result = run_elsewhere(
      installed_command,
      f'--config={config}:resnet20',
      '--workdir=run',
      '--config.train.batch_size=-1',
      cwd=tmp_path,
  )
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip().splitlines() == [
      'error: --config.train.batch_size=-1 must be positive'
  ], result.stderr[-2000:]
  assert not any(tmp_path.iterdir())
