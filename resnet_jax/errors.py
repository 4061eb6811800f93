"""Errors a user causes and can fix. main.py prints them as one line and exits with status 2.

Each is a ValueError, so library callers can catch them the usual way; any other exception is a bug
and keeps its traceback.
"""


class UserError(ValueError):
  pass
