"""Keeps the start-up chatter of TensorFlow, XLA and friends off the console, unless --verbosity
asks for it: oneDNN notices and absl's InitializeLog warning are written by C++ straight to file
descriptor 2 while TensorFlow is imported, where no Python logging filter reaches them."""

import contextlib
import os
import sys

verbose = False  # main.py sets it from --verbosity


@contextlib.contextmanager
def silenced(*, stdout: bool = False):
  """Inside: whatever is written to stderr (by Python or C++), and to stdout if asked, is dropped,
  unless `verbose`."""
  if verbose:
    yield
    return
  streams = [sys.stderr, sys.stdout] if stdout else [sys.stderr]
  fds = [2, 1] if stdout else [2]  # the processes' own, whatever sys.stdout is now (a capture)
  for stream in streams:
    stream.flush()
  devnull = os.open(os.devnull, os.O_WRONLY)
  saved = [(fd, os.dup(fd)) for fd in fds]
  for fd, _ in saved:
    os.dup2(devnull, fd)
  try:
    yield
  finally:
    for stream in streams:
      stream.flush()
    for fd, copy in saved:
      os.dup2(copy, fd)
      os.close(copy)
    os.close(devnull)
