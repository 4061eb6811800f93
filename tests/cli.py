"""Runs `python -m resnet_jax.main` in a subprocess as a user would (optionally on TFDS mocks)."""

import json
import os
import socket
import pathlib
import subprocess
import sys

import jax
import numpy as np
import orbax.checkpoint as ocp

from resnet_jax.workdir import checkpoints as checkpointing

REPO = pathlib.Path(__file__).resolve().parents[1]

# Many CLI invocations from one process: it imports what every run imports once, then forks one
# child per invocation, which runs main exactly as `python -m resnet_jax.main` does (flags, exit
# status, stdout and stderr are its own), at a fraction of a fresh interpreter's start-up.
_MANY_MAINS = """
import json, os, sys, tempfile, traceback
import jax  # noqa: F401  (no backend yet: each child starts its own)
from absl import app
import resnet_jax.config.fields  # noqa: F401
from resnet_jax.training import distributed, parallel, preemption, loop as train  # noqa: F401
from resnet_jax import main  # noqa: F401

results = []
for argv in json.loads(sys.stdin.read()):
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
      os.dup2(out.fileno(), 1)
      os.dup2(err.fileno(), 2)
      status = 0
      sys.argv = ['resnet_jax.main', *argv]  # config_flags reads its overrides from sys.argv
      try:
        app.run(main.main, argv=sys.argv, flags_parser=main.parse_flags)
      except SystemExit as e:
        status = e.code if isinstance(e.code, int) else 1
      except BaseException:
        traceback.print_exc()
        status = 1
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(status)
    status = os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1])
    out.seek(0)
    err.seek(0)
    results.append([status, out.read().decode(), err.read().decode()])
print(json.dumps(results))
"""


def run_mains(cases: list[list[str]], *, devices: int = 8, timeout: float = 600):
  """`run_main(*args)` for each args list of `cases`, from one process (`_MANY_MAINS`)."""
  environment = {
      **os.environ,
      'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
      'TF_CPP_MIN_LOG_LEVEL': '2',
      'PYTHONPATH': str(REPO),
  }
  result = subprocess.run(
      [sys.executable, '-c', _MANY_MAINS],
      input=json.dumps(cases),
      cwd=REPO,
      env=environment,
      capture_output=True,
      text=True,
      timeout=timeout,
  )
  assert result.returncode == 0, result.stderr[-4000:]
  return [
      subprocess.CompletedProcess(args, status, stdout, stderr)
      for args, (status, stdout, stderr) in zip(cases, json.loads(result.stdout))
  ]


def run_main(
    *args,
    devices: int = 8,
    mock_examples: int | None = None,
    timeout: float = 600,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
  environment = {
      **os.environ,
      'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
      'TF_CPP_MIN_LOG_LEVEL': '2',
      'PYTHONPATH': str(REPO),
      **(env or {}),
  }
  if mock_examples is None:
    command = [sys.executable, '-m', 'resnet_jax.main', *args]
  else:
    # The real CLI on TFDS's mock data, so that cifar10/imagenet2012 need no files.
    command = [sys.executable, '-m', 'benchmarks.tfds_mock', str(mock_examples), *args]
  return subprocess.run(
      command, cwd=REPO, env=environment, capture_output=True, text=True, timeout=timeout
  )


def check(result: subprocess.CompletedProcess) -> subprocess.CompletedProcess:
  assert result.returncode == 0, f'exit {result.returncode}\n{result.stderr[-4000:]}'
  return result


def read_jsonl(path) -> list[dict]:
  return [json.loads(line) for line in pathlib.Path(path).read_text().splitlines() if line.strip()]


def free_port() -> int:
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def start_processes(*args, num_processes: int = 2, devices_each: int = 4, env: dict | None = None):
  """A multi-process job on this machine: `num_processes` CLIs joined through 127.0.0.1 (gloo)."""
  address = f'127.0.0.1:{free_port()}'
  environment = {
      **os.environ,
      'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices_each}',
      'TF_CPP_MIN_LOG_LEVEL': '2',
      'PYTHONPATH': str(REPO),
      **(env or {}),
  }
  return [
      subprocess.Popen(
          [
              sys.executable,
              '-m',
              'resnet_jax.main',
              *args,
              f'--coordinator_address={address}',
              f'--num_processes={num_processes}',
              f'--process_id={i}',
          ],
          cwd=REPO,
          env=environment,
          stdout=subprocess.PIPE,
          stderr=subprocess.PIPE,
          text=True,
      )
      for i in range(num_processes)
  ]


def wait_all(processes, timeout: float = 600) -> list[subprocess.CompletedProcess]:
  results = []
  for p in processes:
    stdout, stderr = p.communicate(timeout=timeout)
    results.append(subprocess.CompletedProcess(p.args, p.returncode, stdout, stderr))
  return results


def restored_state(workdir, step):
  """The state tree of a run's checkpoint as numpy arrays, however many processes wrote it."""
  checkpoints = checkpointing.Checkpoints(workdir, read_only=True)
  state = checkpoints.restore_as_saved(step, jax.sharding.SingleDeviceSharding(jax.devices()[0]))
  checkpoints.close()
  return jax.device_get(state)


def assert_trees_equal(a, b):
  flat_a, flat_b = ocp.tree.to_flat_dict(a), ocp.tree.to_flat_dict(b)
  assert flat_a.keys() == flat_b.keys()
  for key in flat_a:
    np.testing.assert_array_equal(
        np.asarray(flat_a[key]), np.asarray(flat_b[key]), err_msg=str(key)
    )
