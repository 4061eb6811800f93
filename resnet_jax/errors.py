"""Errors a user causes and can fix. main.py prints them as one line and exits with status 2.

Each is a ValueError, so library callers can catch them the usual way; any other exception is a bug
and keeps its traceback.
"""


class UserError(ValueError):
  pass


def innermost_user_error(exception: BaseException | None) -> UserError | None:
  """The innermost UserError behind `exception` (config files raise inside absl's flag parser)."""
  found = None
  while exception is not None:
    if isinstance(exception, UserError):
      found = exception
    exception = exception.__cause__ or exception.__context__
  return found
