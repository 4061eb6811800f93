"""A warm process that starts CLI runs for the tests (tests/cli.py is its client).

Every `python -m resnet_jax.main` imports JAX, TensorFlow, TFDS and main's modules: ~9 s on a
2-core machine, TensorFlow's 6.5 of them, and the suite starts dozens of runs. This process imports
them once and forks a child per run, which runs main exactly as `python -m resnet_jax.main` does:
its argv, environment, exit status, stdout and stderr are its own, and it is a process of its own,
to signal or kill. JAX has no backend yet here, so each child starts its own, with the devices its
environment's XLA_FLAGS ask for.

Requests, one JSON object a line on stdin, each answered by one on stdout:
  {"op": "start", "argv": [...], "env": {...}, "stdout": path, "stderr": path} -> {"pid": pid}
  {"op": "wait", "pid": pid, "timeout": seconds or null} -> {"status": exit status or null}
A null status is a child still running at the timeout (or, with timeout 0, at once): a poll.
The exit status is Popen's: negative for a signal.
"""

import atexit
import json
import os
import sys
import time
import traceback

import jax  # noqa: F401  (imported, no backend started)
import tensorflow_datasets  # noqa: F401
from absl import app

import resnet_jax.config.fields  # noqa: F401
import resnet_jax.data.tfds_source  # noqa: F401  (TensorFlow)
from resnet_jax import main
from resnet_jax.data.datasets import sklearn_digits  # noqa: F401
from resnet_jax.training import distributed, loop, parallel, preemption  # noqa: F401


def _child(request) -> int:
  """In the forked child: main on the request's argv, environment and output files."""
  os.environ.clear()
  os.environ.update(request['env'])
  for fd, path, flags in (
      (0, os.devnull, os.O_RDONLY),
      (1, request['stdout'], os.O_WRONLY),
      (2, request['stderr'], os.O_WRONLY),
  ):
    opened = os.open(path, flags)
    os.dup2(opened, fd)
    os.close(opened)
  sys.argv = ['resnet_jax.main', *request['argv']]  # config_flags reads its overrides from argv
  try:
    app.run(main.main, argv=sys.argv, flags_parser=main.parse_flags)
    status = 0
  except SystemExit as e:
    status = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
  except BaseException:  # pylint: disable=broad-exception-caught
    traceback.print_exc()
    status = 1
  atexit._run_exitfuncs()  # pylint: disable=protected-access  (what an interpreter's exit runs)
  sys.stdout.flush()
  sys.stderr.flush()
  return status


def _wait(pid: int, timeout: float | None) -> int | None:
  deadline = None if timeout is None else time.monotonic() + timeout
  while True:
    done, status = os.waitpid(pid, os.WNOHANG)
    if done:
      return os.waitstatus_to_exitcode(status)
    if deadline is not None and time.monotonic() >= deadline:
      return None
    time.sleep(0.02)


def serve():
  for line in sys.stdin:
    request = json.loads(line)
    if request['op'] == 'start':
      sys.stdout.flush()
      pid = os.fork()
      if pid == 0:
        status = 1
        try:
          status = _child(request)
        finally:
          os._exit(status)  # none of the server's cleanup (the child's atexit ran in _child)
      answer = {'pid': pid}
    else:
      answer = {'status': _wait(request['pid'], request['timeout'])}
    print(json.dumps(answer), flush=True)


if __name__ == '__main__':
  serve()
