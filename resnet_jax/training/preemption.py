"""Stop requests: SIGTERM (preemption) or SIGINT ends training after the current step.

Training ends with a checkpoint. One process: Python signal handlers set a flag that the loop reads
after every step. Several processes: JAX's preemption service (enabled by jax.distributed) catches
SIGTERM on any host and all hosts agree on the step to stop at (`reached_preemption_sync_point`), so
their checkpoint is one.
"""

import signal

import jax
from jax.experimental import multihost_utils

EXIT_STATUS = 75  # EX_TEMPFAIL: not finished; run the same command again to resume


class Stopped(Exception):
  """Training stopped on request after saving a checkpoint; the message says how to resume."""


class StopRequests:

  def __init__(self):
    self.signal_name: str | None = None
    self.multi_process = jax.process_count() > 1
    self._previous = {}
    if (
        not self.multi_process
    ):  # under jax.distributed, SIGTERM belongs to JAX's preemption notifier
      for sig in (signal.SIGTERM, signal.SIGINT):
        self._previous[sig] = signal.signal(sig, self._handle)

  def _handle(self, signum, frame):
    if self.signal_name is not None:  # a second request: stop at once, without a checkpoint
      self.close()
      raise KeyboardInterrupt
    self.signal_name = signal.Signals(signum).name

  def should_stop(self, step: int) -> bool:
    if self.multi_process and multihost_utils.reached_preemption_sync_point(step):
      self.signal_name = 'SIGTERM'
    return self.signal_name is not None

  def close(self) -> None:
    for sig, handler in self._previous.items():
      signal.signal(sig, handler)
    self._previous = {}
