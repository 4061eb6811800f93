"""Runs `python -m resnet_jax.main` in a subprocess as a user would (optionally on TFDS mocks)."""

import functools
import json
import os
import socket
import pathlib
import subprocess
import sys
import tempfile

import jax
import numpy as np
import orbax.checkpoint as ocp

from resnet_jax.workdir import checkpoints as checkpointing

REPO = pathlib.Path(__file__).resolve().parents[1]

# CLI invocations from a warm process: a server that imported what every run imports (JAX without
# a backend, TensorFlow and TFDS, main's modules: ~9 s on a 2-core machine, TensorFlow 6.5 of them)
# forks one child per invocation, which runs main exactly as `python -m resnet_jax.main` does
# (flags, environment, exit status, stdout and stderr are its own), in well under a second more.
# One server per pytest process and environment (the device count is fixed when a child's JAX
# starts its backend, from the server's XLA_FLAGS); each request is one JSON line on its stdin,
# each answer one on its stdout.
_SERVER = """
import atexit, json, os, signal, sys, tempfile, time, traceback
import jax  # noqa: F401  (no backend yet: each child starts its own)
from absl import app
import tensorflow_datasets  # noqa: F401
import resnet_jax.config.fields  # noqa: F401
import resnet_jax.data.tfds_source  # noqa: F401  (TensorFlow)
from resnet_jax.data.datasets import sklearn_digits  # noqa: F401
from resnet_jax.training import distributed, parallel, preemption, loop as train  # noqa: F401
from resnet_jax import main

for request in sys.stdin:
  request = json.loads(request)
  with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
      os.environ.clear()
      os.environ.update(request['env'])
      devnull = os.open(os.devnull, os.O_RDONLY)
      os.dup2(devnull, 0)
      os.dup2(out.fileno(), 1)
      os.dup2(err.fileno(), 2)
      status = 0
      sys.argv = ['resnet_jax.main', *request['argv']]  # config_flags reads overrides from sys.argv
      try:
        app.run(main.main, argv=sys.argv, flags_parser=main.parse_flags)
      except SystemExit as e:
        status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
      except BaseException:
        traceback.print_exc()
        status = 1
      atexit._run_exitfuncs()  # what the interpreter's exit would run, then no parent's cleanup
      sys.stdout.flush()
      sys.stderr.flush()
      os._exit(status)
    deadline = time.monotonic() + request['timeout']
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
      time.sleep(0.02)
    if done[0] == 0:  # timed out: the client raises subprocess.TimeoutExpired
      os.kill(pid, signal.SIGKILL)
      os.waitpid(pid, 0)
      status = None
    else:
      status = os.waitstatus_to_exitcode(done[1])
    out.seek(0)
    err.seek(0)
    answer = [status, out.read().decode(errors='replace'), err.read().decode(errors='replace')]
  print(json.dumps(answer), flush=True)
"""


def _environment(devices: int, env: dict | None = None) -> dict:
  return {
      **os.environ,
      'XLA_FLAGS': f'--xla_force_host_platform_device_count={devices}',
      'TF_CPP_MIN_LOG_LEVEL': '2',
      'PYTHONPATH': str(REPO),
      **(env or {}),
  }


@functools.cache
def _server(devices: int, env_items: frozenset) -> subprocess.Popen:
  """The warm process for runs on `devices` CPU devices with these extra environment variables."""
  log = tempfile.TemporaryFile()  # import-time noise; read if the server dies
  server = subprocess.Popen(
      [sys.executable, '-c', _SERVER],
      cwd=REPO,
      env=_environment(devices, dict(env_items)),
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=log,
      text=True,
  )
  server.log = log
  return server


def _served(args, devices: int, env: dict | None, timeout: float) -> subprocess.CompletedProcess:
  server = _server(devices, frozenset((env or {}).items()))
  request = {'argv': list(args), 'env': _environment(devices, env), 'timeout': timeout}
  server.stdin.write(json.dumps(request) + '\n')
  server.stdin.flush()
  answer = server.stdout.readline()
  if not answer:
    server.log.seek(0)
    raise RuntimeError(f'the CLI server died: {server.log.read()[-4000:].decode()}')
  status, stdout, stderr = json.loads(answer)
  if status is None:
    raise subprocess.TimeoutExpired(['resnet_jax.main', *args], timeout, stdout, stderr)
  return subprocess.CompletedProcess(['resnet_jax.main', *args], status, stdout, stderr)


def run_mains(cases: list[list[str]], *, devices: int = 8, timeout: float = 600):
  """`run_main(*args, devices=devices)` for each args list of `cases`."""
  return [_served(args, devices, None, timeout) for args in cases]


def run_main(
    *args,
    devices: int = 8,
    mock_examples: int | None = None,
    timeout: float = 600,
    env: dict | None = None,
) -> subprocess.CompletedProcess:
  """`python -m resnet_jax.main *args` on `devices` CPU devices, as a user would run it (from the
  warm server above), or with `mock_examples` on TFDS's mock data (a fresh interpreter)."""
  if mock_examples is None:
    return _served(args, devices, env, timeout)
  # The real CLI on TFDS's mock data, so that cifar10/imagenet2012 need no files.
  command = [sys.executable, '-m', 'benchmarks.tfds_mock', str(mock_examples), *args]
  return subprocess.run(
      command,
      cwd=REPO,
      env=_environment(devices, env),
      capture_output=True,
      text=True,
      timeout=timeout,
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
  environment = _environment(devices_each, env)
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
