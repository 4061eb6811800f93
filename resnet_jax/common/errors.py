"""Errors a user causes and can fix. main.py prints them as one line and exits with status 2.

Each is a ValueError, so library callers can catch them the usual way; any other exception is a bug
and keeps its traceback.
"""

import difflib
import logging
import os
import pathlib
import re
import sys
import traceback
from typing import Any, Callable


class UserError(ValueError):
  pass


def one_line(text, limit: int = 300) -> str:
  """`text` (an exception's message, say) on one line of at most `limit` characters."""
  text = ' '.join(str(text).split()) or type(text).__name__
  return text if len(text) <= limit else text[: limit - 3] + '...'


def did_you_mean(name: str, choices) -> str:
  """` (did you mean 'closest'?)` for the choice closest to a mistyped `name`, or ''."""
  close = difflib.get_close_matches(name, choices, n=1)
  return f' (did you mean {close[0]!r}?)' if close else ''


def causes(exception: BaseException | None):
  """`exception`, then what caused it, then what caused that, ..."""
  while exception is not None:
    yield exception
    exception = exception.__cause__ or exception.__context__


def config_error(exception: BaseException, config_file: str | None = None) -> UserError | None:
  """The one-line error for a config that cannot be built from its file and --config.* flags (a
  missing or broken file, a field that does not exist), or None for any other exception.

  `config_file` is the --config value (file:preset), for the messages. ml_collections builds the
  config when it is first read, so this wraps that first read.
  """
  chain = list(causes(exception))
  user_errors = [e for e in chain if isinstance(e, UserError)]  # config files raise inside absl
  if user_errors:
    return user_errors[-1]  # the innermost
  file = (config_file or 'given to --config').split(':')[0]
  for error in chain:
    if isinstance(error, SyntaxError):
      return UserError(f'config file {error.filename} line {error.lineno}: {error.msg}')
    if isinstance(error, AttributeError) and "has no attribute 'get_config'" in str(error):
      return UserError(
          f'config file {file} defines no get_config(); a config file returns its config from'
          ' get_config(preset), as configs/cifar10.py does'
      )
    if "<class 'NoneType'>" in str(error):  # --config.* overrides of what get_config returned
      return _returned_none(file)
  for error in chain:
    if isinstance(error, (KeyError, AttributeError)) and _is_missing_field(error, file):
      return _no_field(error)
  failed = _config_file_failure(chain, file)
  if failed is not None:
    return failed
  for error in chain:
    found = _unreadable_config_file(error)
    if found is not None:
      return found
  return None


def _returned_none(file: str) -> UserError:
  return UserError(
      f'config file {file}: get_config() returned None; it must return the config (an'
      ' ml_collections.ConfigDict built on resnet_jax/config/fields.py): is a return statement'
      ' missing?'
  )


def _frames(error: BaseException):
  return traceback.extract_tb(error.__traceback__) if error.__traceback__ else []


def _in_file(frame, file: str) -> bool:
  return os.path.abspath(frame.filename) == os.path.abspath(file)


def _is_missing_field(error: BaseException, file: str) -> bool:
  """ConfigDict's own "no such field" (in a file or a --config.* flag), not an AttributeError or
  KeyError of the config file's other code (`os.nothing`)."""
  text = str(error)
  if 'does not exist' in text or 'Did you mean' in text:
    return True
  return not any(_in_file(frame, file) for frame in _frames(error))


def _no_field(error: BaseException) -> UserError:
  text = str(error.args[0] if isinstance(error, KeyError) and error.args else error)
  named = re.search(r'Key "(\w+)" does not exist', text) or re.match(r"""[\\'"\s]*(\w+)""", text)
  field = named.group(1) if named else text
  said = re.search(r'Did you mean "([^"]+)"', text)  # ConfigDict's own suggestion, else ours
  known = re.findall(r"(\w+)\\?'?: ", text)  # the fields that ConfigDict's message lists
  suggestion = f' (did you mean {said[1]!r}?)' if said else did_you_mean(field, known)
  return UserError(
      f'the config has no field {field!r}{suggestion}; resnet_jax/config/fields.py lists every '
      'field, set by a config file or a --config.<section>.<field> flag'
  )


def _config_file_failure(chain: list[BaseException], file: str) -> UserError | None:
  """The error of a config file that raised while it was imported or its get_config() ran (an
  ImportError, a bug, a preset argument it does not take), named by the file's line."""
  loading = any(
      _in_file(frame, file)
      or ('config_flags' in frame.filename and 'get_config(' in (frame.line or ''))
      for error in chain
      for frame in _frames(error)
  )
  if not loading or isinstance(chain[-1], OSError):
    return None
  cause = chain[-1]  # config_flags re-raises a TypeError or ValueError with the traceback as text
  lines = [frame.lineno for error in chain for frame in _frames(error) if _in_file(frame, file)]
  where = f' (line {lines[-1]})' if lines else ''
  return UserError(
      f'config file {file} failed{where}: {type(cause).__name__}: {one_line(cause, 200)}; fix the'
      ' file, or give another --config'
  )


def _unreadable_config_file(error: BaseException) -> UserError | None:
  text = str(error)
  # config_flags reports a missing file inside its own OSError's message.
  missing = re.search(r"No such file or directory: '([^']+)'", text)
  missing_file = error.filename if isinstance(error, FileNotFoundError) else missing and missing[1]
  if isinstance(error, OSError) and missing_file:
    return UserError(
        f'config file {missing_file} does not exist; give an existing file, e.g. '
        '--config configs/cifar10.py:resnet56'
    )
  if isinstance(error, IsADirectoryError):
    files = sorted(p.name for p in pathlib.Path(error.filename).glob('[!_]*.py'))
    holds = f' (it holds {", ".join(files)})' if files else ''
    return UserError(
        f'--config {error.filename} is a directory{holds}; give a config file and its preset, e.g.'
        ' --config configs/cifar10.py:resnet56'
    )
  if isinstance(error, OSError) and error.filename:
    return UserError(
        f'cannot read config file {error.filename} ({error.strerror or error}); give a readable'
        ' file, e.g. --config configs/cifar10.py:resnet56'
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


def read_config_or_exit(read: Callable[[], Any], config_file: str | None = None):
  """`read()` (the first read of a --config flag), or one `error:` line and exit status 2."""
  try:
    config = read()
    if config is None:
      exit_with(_returned_none((config_file or '').split(':')[0]))
    config.keys()  # config_flags loads the file lazily, on the first use of the config
    return config
  except Exception as e:  # pylint: disable=broad-except
    error = config_error(e, config_file)
    if error is None:
      raise
    exit_with(error)


def config_flag_value(argv) -> str | None:
  """The --config value in `argv` (`--config=F` or `--config F`), before absl has parsed it."""
  for i, arg in enumerate(argv):
    name, equals, value = arg.lstrip('-').partition('=')
    if arg.startswith('-') and name == 'config':
      return value if equals else (argv[i + 1] if i + 1 < len(argv) else None)
  return None


def _flag_error(error: Exception) -> str:
  """absl's message for a value it cannot parse, on one line and without Python's tuple syntax:
  `flag --config.train.cache=maybe: ('Non-boolean argument to boolean flag', 'maybe')`."""
  text = str(error).strip().splitlines()[0]
  said = re.match(r'flag (--config\.\S+?)=(.*?): (.*)$', text)
  if not said:
    return text
  flag, value, reason = said.groups()
  if 'Non-boolean argument' in reason:
    return f'{flag}={value} must be True or False'
  return (
      f"{flag}={value} cannot be read as that field's type ({reason}); resnet_jax/config/fields.py"
      " shows each field's default, e.g. True/False, 128, 0.1 or '(32000, 48000)'"
  )


def parse_flags_or_exit(flag_values, argv):
  """absl's flag parsing (which also builds --config), with errors as one line and exit status 2."""
  from absl import flags  # pylint: disable=import-outside-toplevel

  def quiet(record):  # config_flags warns when get_config() returns None: the error line says so
    return 'returned None' not in record.getMessage()

  logging.getLogger('absl').addFilter(quiet)
  try:
    return flag_values(argv)
  except Exception as e:  # pylint: disable=broad-except
    error = config_error(e, config_flag_value(argv[1:]))
    if error is None and isinstance(e, flags.Error):
      error = _flag_error(e)
    if error is None:
      raise
    exit_with(error)
  finally:
    logging.getLogger('absl').removeFilter(quiet)
