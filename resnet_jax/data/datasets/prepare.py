"""A TFDS dataset ready to read: built, downloaded and prepared where possible, else one line saying
what to do (which command to run where there is internet, or which files to place where).

Offline machines fail fast: the download hosts are probed first (DNS has no timeout of its own), so
tfds does not spend minutes retrying a network that is not there.
"""

import contextlib
import functools
import os
import sys
import socket
import threading
import urllib.parse
from unittest import mock

import tensorflow_datasets as tfds

from resnet_jax.common import library_noise
from resnet_jax.common.errors import UserError, one_line


class DatasetNotReadyError(UserError):
  """The dataset cannot be read here (or TFDS has no dataset of that name); the message is one line
  saying what to do (a ValueError)."""


def _unreachable_hosts_reason(builder, timeout: float = 5.0) -> str | None:
  """None if the hosts of the builder's download URLs answer (or are unknown), else why not."""
  try:
    urls = list(builder.url_infos or ())
  except Exception:  # pylint: disable=broad-except  (no checksums file: nothing to check)
    return None
  hosts = []
  for url in urls:
    parsed = urllib.parse.urlparse(url)
    if parsed.scheme in ('http', 'https') and parsed.hostname:
      host = (parsed.hostname, parsed.port or (443 if parsed.scheme == 'https' else 80))
      if host not in hosts:
        hosts.append(host)
  return _probe_hosts(tuple(hosts[:3]), timeout) if hosts else None


@functools.cache  # kept for the process: the result only decides whether tfds gets its retries
def _probe_hosts(hosts, timeout: float) -> str | None:
  """TCP-connects to each host from a daemon thread with a hard deadline (DNS has no timeout)."""
  result: list[str | None] = []

  def probe():
    for host, port in hosts:
      try:
        socket.create_connection((host, port), timeout=timeout).close()
      except OSError as e:
        result.append(f'cannot reach {host}:{port}: {one_line(e, 120)}')
        return
    result.append(None)

  thread = threading.Thread(target=probe, daemon=True)
  thread.start()
  thread.join(timeout * len(hosts) + 2.0)
  return result[0] if result else f'no answer from {hosts[0][0]} within {timeout:.0f} s'


def _not_ready_message(
    builder, name: str, data_dir: str, manual_dir: str | None, reason: str
) -> str:
  instructions = getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None)
  if instructions:
    where = manual_dir or f'{data_dir}/downloads/manual'
    files = (
        'ILSVRC2012_img_train.tar and ILSVRC2012_img_val.tar'
        if name.startswith('imagenet2012')
        else f'see: {one_line(instructions, 160)}'
    )
    reason = one_line(reason, 400).split('. ')[0]  # tfds appends the instructions to the reason
    return (
        f"dataset '{name}' is not prepared in {data_dir} and its manually downloaded files are"
        f" missing ({one_line(reason, 200)}); place the files listed in tfds' docs for '{name}'"
        f' ({files}) in {where} and set --config.dataset.manual_dir to it, or copy a prepared'
        f' {data_dir}/{name} here'
    )
  return (
      f"dataset '{name}' is not prepared in {data_dir} and could not be downloaded"
      f' ({one_line(reason, 200)}); run `tfds build {name} --data_dir {data_dir}` on a machine with'
      f' internet and copy {data_dir}/{name} here (or set --config.dataset.data_dir to a'
      ' directory holding it)'
  )


def _builder(name: str, data_dir) -> tuple[tfds.core.DatasetBuilder, bool]:
  """(builder, whether it is prepared), without TFDS's warnings about a data_dir that is not
  prepared yet: that is what the caller deals with."""
  with library_noise.silenced():
    builder = tfds.builder(name, data_dir=data_dir)
    return builder, builder.is_prepared()


def _download_and_prepare(builder, download_config, *, offline: bool) -> None:
  # When the download hosts do not answer, let tfds try exactly once instead of retrying with
  # back-off for ~200 s (tfds' own downloader retries 10 times).
  from tensorflow_datasets.core.download import downloader  # pylint: disable=g-import-not-at-top

  retry_once = offline and hasattr(downloader, 'MAX_RETRIES')
  with mock.patch.object(downloader, 'MAX_RETRIES', 0) if retry_once else contextlib.nullcontext():
    builder.download_and_prepare(download_config=download_config)


def _folders(root: str) -> set[str]:
  """The folders under a local `root` (none under an object store's)."""
  return {path for path, _, _ in os.walk(root)} if '://' not in root else set()


def _remove_empty_folders(root: str, existing: set[str]) -> None:
  """The folders a failed preparation made and left empty (tfds makes the dataset's and the
  download folders first); anything with files in it stays."""
  for path in sorted(_folders(root) - existing, reverse=True):  # the deepest first
    with contextlib.suppress(OSError):  # not empty
      os.rmdir(path)


def get_dataset_builder(dataset) -> tfds.core.DatasetBuilder:
  """`tfds.builder` for the config, prepared (downloading if possible) or a DatasetNotReadyError."""
  name, data_dir, manual_dir = dataset.name, dataset.data_dir, dataset.manual_dir
  shown_dir = str(data_dir or tfds.core.constants.DATA_DIR)
  existing = _folders(shown_dir)  # tfds may make folders as soon as the builder is made
  try:
    builder, prepared = _builder(name, data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise DatasetNotReadyError(
        f"unknown dataset '{name}': tfds has no dataset of that name (check --config.dataset.name;"
        " the project's own datasets such as 'sklearn_digits' are registered by importing"
        ' resnet_jax.data.datasets)'
    ) from None
  if prepared:
    return builder

  manual = bool(getattr(builder, 'MANUAL_DOWNLOAD_INSTRUCTIONS', None))
  download_config = tfds.download.DownloadConfig(manual_dir=manual_dir)
  offline_reason = None if manual else _unreachable_hosts_reason(builder)
  # TFDS shows progress bars while it prepares: kept on a terminal (ImageNet takes hours), not in
  # logs and CI output, where they are pages of noise.
  print(f'Preparing dataset {name} in {shown_dir} (once).', flush=True)
  try:
    with (
        library_noise.silenced(stdout=True) if not sys.stderr.isatty() else contextlib.nullcontext()
    ):
      _download_and_prepare(builder, download_config, offline=offline_reason is not None)
  except Exception as e:  # pylint: disable=broad-except
    # Another process (a parallel sweep point, a second host) may have prepared it meanwhile: tfds
    # then fails to rename its own copy into place.
    builder, prepared = _builder(name, data_dir)
    if prepared:
      return builder
    _remove_empty_folders(shown_dir, existing)
    reason = offline_reason or f'{type(e).__name__}: {e}'
    raise DatasetNotReadyError(
        _not_ready_message(builder, name, shown_dir, manual_dir, reason)
    ) from e
  return builder
