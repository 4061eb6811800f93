"""Runs `python -m resnet_jax.main` as a user would, each run a process of its own: forked by a
warm server (tests/cli_server.py), or on TFDS's mock data in a fresh interpreter."""

import functools
import json
import os
import signal
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
  """The warm process (tests/cli_server.py) that starts this pytest process's CLI runs on `devices`
  CPU devices with these extra environment variables: the device count is fixed in a child's
  environment when its JAX starts, and a server per environment keeps the children's alike."""
  log = tempfile.TemporaryFile()  # import-time noise; read if the server dies
  server = subprocess.Popen(
      [sys.executable, '-m', 'tests.cli_server'],
      cwd=REPO,
      env=_environment(devices, dict(env_items)),
      stdin=subprocess.PIPE,
      stdout=subprocess.PIPE,
      stderr=log,
      text=True,
  )
  server.log = log
  return server


def _ask(server: subprocess.Popen, **request) -> dict:
  server.stdin.write(json.dumps(request) + '\n')
  server.stdin.flush()
  answer = server.stdout.readline()
  if not answer:
    server.log.seek(0)
    raise RuntimeError(f'the CLI server died: {server.log.read()[-4000:].decode()}')
  return json.loads(answer)


class ServedProcess:
  """`python -m resnet_jax.main *args` as a process of its own, forked by the warm server: the
  part of subprocess.Popen's interface the tests use (pid, poll, signals, communicate)."""

  def __init__(self, args, *, devices: int = 8, env: dict | None = None):
    self.args = ['resnet_jax.main', *args]
    self.returncode = None
    self._server = _server(devices, frozenset((env or {}).items()))
    self._files = [tempfile.NamedTemporaryFile(prefix='cli_', delete=False) for _ in range(2)]
    for f in self._files:
      f.close()
    self.pid = _ask(
        self._server,
        op='start',
        argv=list(args),
        env=_environment(devices, env),
        stdout=self._files[0].name,
        stderr=self._files[1].name,
    )['pid']

  def wait(self, timeout: float | None = None) -> int:
    if self.returncode is None:
      self.returncode = _ask(self._server, op='wait', pid=self.pid, timeout=timeout)['status']
      if self.returncode is None:
        raise subprocess.TimeoutExpired(self.args, timeout, *self.output())
    return self.returncode

  def poll(self) -> int | None:
    try:
      return self.wait(timeout=0)
    except subprocess.TimeoutExpired:
      return None

  def send_signal(self, signal_number: int) -> None:
    if self.returncode is None:
      os.kill(self.pid, signal_number)

  def kill(self) -> None:
    self.send_signal(signal.SIGKILL)

  def output(self) -> tuple[str, str]:
    """What the run has written so far to its stdout and stderr."""
    return tuple(
        pathlib.Path(f.name).read_text(errors='replace') if os.path.exists(f.name) else ''
        for f in self._files
    )

  def communicate(self, timeout: float | None = None) -> tuple[str, str]:
    self.wait(timeout)
    output = self.output()
    for f in self._files:
      pathlib.Path(f.name).unlink(missing_ok=True)
    return output


def run_mains(cases: list[list[str]], *, devices: int = 8, timeout: float = 600):
  """`run_main(*args, devices=devices)` for each args list of `cases`."""
  return [run_main(*args, devices=devices, timeout=timeout) for args in cases]


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
    process = ServedProcess(args, devices=devices, env=env)
    try:
      stdout, stderr = process.communicate(timeout)
    except subprocess.TimeoutExpired:
      process.kill()
      process.communicate()
      raise
    return subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
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
  return [
      ServedProcess(
          [
              *args,
              f'--coordinator_address={address}',
              f'--num_processes={num_processes}',
              f'--process_id={i}',
          ],
          devices=devices_each,
          env=env,
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
