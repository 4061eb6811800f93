"""Errors a user causes and can fix. main.py prints them as one line and exits with status 2.

Each is a ValueError, so library callers can catch them the usual way; any other exception is a bug
and keeps its traceback.
"""

import difflib
import re
import sys
from typing import Any, Callable


class UserError(ValueError):
  pass


def one_line(text, limit: int = 300) -> str:
  """`text` (an exception's message, say) on one line of at most `limit` characters."""
  text = ' '.join(str(text).split()) or type(text).__name__
  return text if len(text) <= limit else text[: limit - 3] + '...'


def causes(exception: BaseException | None):
  """`exception`, then what caused it, then what caused that, ..."""
  while exception is not None:
    yield exception
    exception = exception.__cause__ or exception.__context__


def innermost_user_error(exception: BaseException | None) -> UserError | None:
  """The innermost UserError behind `exception` (config files raise inside absl's flag parser)."""
  found = [e for e in causes(exception) if isinstance(e, UserError)]
  return found[-1] if found else None


def config_error(exception: BaseException) -> UserError | None:
  """The one-line error for a config that cannot be built from its file and --config.* flags (a
  missing or broken file, a field that does not exist), or None for any other exception.

  ml_collections builds the config when it is first read, so this wraps that first read.
  """
  found = innermost_user_error(exception)
  if found is not None:
    return found
  chain = list(causes(exception))
  for error in chain:
    if isinstance(error, SyntaxError):
      return UserError(f'config file {error.filename} line {error.lineno}: {error.msg}')
  for error in chain:
    text = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
    if isinstance(error, (KeyError, AttributeError)):
      named = re.search(r'Key "(\w+)" does not exist', text) or re.match(
          r"""[\\'"\s]*(\w+)""", text
      )
      field = named.group(1) if named else text
      said = re.search(r'Did you mean "([^"]+)"', text)
      close = (
          [said.group(1)]
          if said
          else difflib.get_close_matches(field, re.findall(r"(\w+)\\?'?: ", text), n=1)
      )
      suggestion = f' (did you mean {close[0]!r}?)' if close else ''
      return UserError(
          f'the config has no field {field!r}{suggestion}; configs/base.py lists every '
          'field, set by a config file or a --config.<section>.<field> flag'
      )
    # config_flags reports a missing file inside its own OSError's message.
    missing = re.search(r"No such file or directory: '([^']+)'", text)
    missing_file = (
        error.filename if isinstance(error, FileNotFoundError) else missing and missing[1]
    )
    if isinstance(error, OSError) and missing_file:
      return UserError(
          f'config file {missing_file} does not exist; give an existing file, e.g. '
          '--config configs/cifar10.py:resnet56'
      )
    if isinstance(error, OSError) and 'Failed loading config file' in text:
      return UserError(
          f'cannot load the --config file ({one_line(text, 160)}); give an existing file, '
          'e.g. --config configs/cifar10.py:resnet56'
      )
  return None


def exit_status(action: Callable[[], Any]) -> int:
  """A command-line tool's exit status: 0 after `action()`, 2 after its UserError, which is
  printed as one `error:` line."""
  try:
    action()
  except UserError as e:
    print(f'error: {e}', file=sys.stderr, flush=True)
    return 2
  return 0


def exit_with(error) -> None:
  print(f'error: {error}', file=sys.stderr)
  sys.exit(2)


def read_config_or_exit(read: Callable[[], Any]):
  """`read()` (the first read of a --config flag), or one `error:` line and exit status 2."""
  try:
    config = read()
    config.keys()  # config_flags loads the file lazily, on the first use of the config
    return config
  except Exception as e:  # pylint: disable=broad-except
    error = config_error(e)
    if error is None:
      raise
    exit_with(error)


def parse_flags_or_exit(flag_values, argv):
  """absl's flag parsing (which also builds --config), with errors as one line and exit status 2."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  try:
    return flag_values(argv)
  except Exception as e:  # pylint: disable=broad-except
    error = config_error(e)
    if error is None and isinstance(e, flags.Error):
      error = str(e).strip().splitlines()[0]
    if error is None:
      raise
    exit_with(error)
