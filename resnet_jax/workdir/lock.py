"""One writer per workdir: a training run holds `workdir/lock.json` while it runs.

On a local or shared POSIX filesystem (ext4, NFSv4, Lustre, GPFS) the lock is an advisory
`flock` on that file: the kernel (or the NFS server, when its lease lapses) drops it the moment
the holder dies, so a lock left by a kill -9, a crash or a lost node is taken over safely by the
next run, with no timeout to guess. The file itself says who holds it (host, pid, start time,
command) for the refusal message.

Object stores (gs://, s3://) have no locks: there the file is the claim itself. A run claims a
workdir whose file is absent or whose holder stopped refreshing it for `STALE_AFTER_SECONDS`
(a thread refreshes it every `HEARTBEAT_SECONDS`), then reads it back, so that of two runs
claiming at once only the last writer goes on.

Either way the file carries a random run id, and `check()` reads it back before every checkpoint
save: a run whose workdir another run has taken (a deleted lock file, a claim race on an object
store) stops instead of writing over the other run's checkpoints. A multi-process job takes one
lock, in process 0, and every process learns the outcome.
"""

import datetime
import errno
import fcntl
import json
import os
import socket
import sys
import threading
import time
import uuid

import jax
import numpy as np
from etils import epath
from jax.experimental import multihost_utils

from resnet_jax.common.errors import UserError

FILE_NAME = 'lock.json'
HEARTBEAT_SECONDS = 30
STALE_AFTER_SECONDS = 300
_NO_FLOCK = (errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL)


class WorkdirBusyError(UserError):
  """Another run writes this workdir."""


def _holder_text(holder: dict | None) -> str:
  if not holder:
    return 'another run'
  return (
      f"the run of pid {holder.get('pid')} on host {holder.get('host')}, started"
      f" {holder.get('started')}"
  )


def _all_processes_agree(ok: bool) -> bool:
  """Process 0's `ok`, on every process of a multi-process job."""
  if jax.process_count() == 1:
    return ok
  return bool(multihost_utils.broadcast_one_to_all(np.asarray(ok)))


def _object_store(path: epath.Path) -> bool:
  return '://' in str(path)


class WorkdirLock:
  """Held from `acquire` to `release` (or the `with` block's end) by one training run."""

  def __init__(self, workdir: epath.Path):
    self.path = epath.Path(workdir) / FILE_NAME
    self.record = {
        'run_id': uuid.uuid4().hex,
        'host': socket.gethostname(),
        'pid': os.getpid(),
        'started': datetime.datetime.now().astimezone().isoformat(timespec='seconds'),
        'command': ' '.join(sys.argv),
    }
    self._fd = None  # the flocked file, on POSIX filesystems
    self._heartbeat = None  # the refreshing thread, on object stores
    self._stop = threading.Event()

  # ------------------------------------------------------------------ taking and giving back

  @classmethod
  def acquire(cls, workdir: epath.Path) -> 'WorkdirLock':
    """The lock for this run (all its processes), or WorkdirBusyError naming its holder."""
    lock = cls(workdir)
    refusal = None
    if jax.process_index() == 0:
      try:
        lock._take()
      except WorkdirBusyError as e:
        refusal = e
      except OSError as e:  # said on every process, rather than leaving the others waiting
        refusal = WorkdirBusyError(
            f'cannot create {lock.path} ({e.strerror or e}); choose a writable --workdir'
        )
    if not _all_processes_agree(refusal is None):
      raise refusal or WorkdirBusyError(
          f'process 0 could not lock --workdir {workdir}; its error line says which run holds it'
      )
    return lock

  def _take(self) -> None:
    if not _object_store(self.path):
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        os.close(fd)
        self._refuse(self.read())
      except OSError as e:
        os.close(fd)
        if e.errno not in _NO_FLOCK:
          raise
        # A filesystem without locks (some FUSE mounts): treat it as an object store.
      else:
        self._fd = fd
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(self.record, indent=2).encode(), 0)
        os.fsync(fd)
        return
    self._claim()

  def _claim(self) -> None:
    """The object-store protocol: claim when free or stale, read back, refresh in a thread."""
    holder = self.read()
    if holder and time.time() - holder.get('heartbeat', 0) < STALE_AFTER_SECONDS:
      self._refuse(holder)
    self._write_claim()
    time.sleep(1.0)  # a run claiming at the same moment writes within this second ...
    holder = self.read()
    if not self._holds(holder):
      self._refuse(holder)  # ... and the last writer goes on
    self._heartbeat = threading.Thread(target=self._refresh, daemon=True, name='workdir-lock')
    self._heartbeat.start()

  def _write_claim(self) -> None:
    self.path.write_text(json.dumps({**self.record, 'heartbeat': time.time()}, indent=2))

  def _refresh(self) -> None:
    while not self._stop.wait(HEARTBEAT_SECONDS):
      if self._holds(self.read()):
        self._write_claim()

  def _refuse(self, holder: dict | None):
    raise WorkdirBusyError(
        f'--workdir {self.path.parent} is being written by {_holder_text(holder)}; one run writes'
        ' a workdir at a time: wait for it to finish, stop it, or use another --workdir'
    )

  def release(self) -> None:
    self._stop.set()
    if self._heartbeat is not None and self._holds(self.read()):
      self.path.unlink()  # the claim ends with the run (a flock ends when the file is closed)
    if self._fd is not None:
      os.close(self._fd)  # closing drops the flock
      self._fd = None

  def __enter__(self) -> 'WorkdirLock':
    return self

  def __exit__(self, *exc) -> None:
    self.release()

  # ------------------------------------------------------------------ while training

  def _holds(self, holder: dict | None) -> bool:
    """Whether a lock file's record (`read()`) is this run's."""
    return (holder or {}).get('run_id') == self.record['run_id']

  def read(self) -> dict | None:
    """The lock file's record, or None when it is absent or unreadable."""
    try:
      return json.loads(self.path.read_text())
    except (OSError, ValueError):
      return None

  def check(self) -> None:
    """Before each save: stops the run (WorkdirBusyError) if another run has taken the workdir."""
    holder = self.read() if jax.process_index() == 0 else None
    if not _all_processes_agree(jax.process_index() != 0 or self._holds(holder)):
      raise WorkdirBusyError(
          f'--workdir {self.path.parent} was taken over by {_holder_text(holder)} (its'
          f" {FILE_NAME} is no longer this run's); stopping without saving, so that its"
          ' checkpoints are not overwritten'
      )
