"""Runs `python -m resnet_jax.main` in a subprocess exactly as a user would (optionally on TFDS mock data)."""

import json
import os
import pathlib
import subprocess
import sys

REPO = pathlib.Path(__file__).resolve().parents[1]

# The real CLI, entered inside tfds.testing.mock_data so that cifar10/imagenet2012 need no files.
# Its file-system mock is global while a dataset is built, so checkpoints are written synchronously there.
_MOCKED_MAIN = """
import sys
import tensorflow_datasets as tfds
from absl import app
from resnet_jax import main
with tfds.testing.mock_data(num_examples=int(sys.argv[1])):
  app.run(main.main, argv=['resnet_jax.main'] + sys.argv[2:])
"""


def run_main(*args, devices: int = 8, mock_examples: int | None = None, timeout: float = 600,
             env: dict | None = None) -> subprocess.CompletedProcess:
  environment = {**os.environ, 'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
                 'TF_CPP_MIN_LOG_LEVEL': '2', 'PYTHONPATH': str(REPO), **(env or {})}
  if mock_examples is None:
    command = [sys.executable, '-m', 'resnet_jax.main', *args]
  else:
    command = [sys.executable, '-c', _MOCKED_MAIN, str(mock_examples), *args,
               '--config.train.async_checkpoints=False']
  return subprocess.run(command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout)


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
  assert result.returncode == 0, f'exit {result.returncode}\n{result.stderr[-4000:]}'
  return result


def read_jsonl(path) -> list[dict]:
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]
