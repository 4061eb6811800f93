"""The JSON files of a workdir that a crash can leave half-written, read and written safely.

`metrics.jsonl` and `history.jsonl` grow by appends: a kill -9, a crash or a full disk during an
append leaves a torn last line (half a JSON object, no newline). Readers skip a line that does not
parse and count it, so that the caller can say so; a writer first cuts such lines off (`repair`),
so that its appends start on a line of their own and a torn line never ends up inside the file.
Whole files (`config.json`, a sweep's marker) are written to a temporary file and renamed into
place, so a reader finds the old file or the new one, never half of one.
"""

import json

from etils import epath


def _text(path: epath.Path) -> str:
  """The file's text ('' if missing), read as bytes: a torn line may end inside a character."""
  return path.read_bytes().decode('utf-8', errors='replace') if path.exists() else ''


def _parse(line: str) -> dict | None:
  try:
    record = json.loads(line)
  except ValueError:
    return None
  return record if isinstance(record, dict) else None


def _records(text: str) -> tuple[list[dict], int]:
  lines = [line for line in text.splitlines() if line.strip()]
  records = [r for r in map(_parse, lines) if r is not None]
  return records, len(lines) - len(records)


def read(path) -> tuple[list[dict], int]:
  """(the records of the JSONL file at `path`, the number of lines that do not parse); a missing
  file has none."""
  return _records(_text(epath.Path(path)))


def write_atomically(path, text: str) -> None:
  """`path` holds `text`, or (after a crash) what it held before."""
  path = epath.Path(path)
  staged = path.parent / f'.{path.name}.tmp'
  staged.write_text(text)
  staged.replace(path)


def repair(path, keep=lambda record: True) -> int:
  """Drops the lines of `path` that do not parse (a torn last line) and the records `keep` refuses;
  returns how many torn lines were dropped. The file is rewritten only if something is dropped."""
  path = epath.Path(path)
  text = _text(path)
  records, torn = _records(text)
  kept = [r for r in records if keep(r)]
  if torn or len(kept) != len(records) or (text and not text.endswith('\n')):
    write_atomically(path, ''.join(json.dumps(r) + '\n' for r in kept))
  return torn


def append(path, record: dict) -> None:
  """One line, written by one call: what a crash can tear is this line alone."""
  with epath.Path(path).open('a') as f:
    f.write(json.dumps(record) + '\n')


def read_object(path) -> dict | None:
  """The JSON object in `path`, or None when the file is missing or torn."""
  return _parse(_text(epath.Path(path)))
