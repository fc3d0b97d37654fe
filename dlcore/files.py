"""Files written all or nothing: a kill at any moment leaves the old file or the new one,
never half of one (a temporary file beside the target, fsync, rename, fsync of the folder).

    write_json(path, obj, indent=2)              # summary.json, run.json, manifests, ...
    with replacing(path) as tmp: fig.savefig(tmp)  # anything a library writes to a path
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
from typing import Any, Iterator

from dlcore import preemption


def _umask() -> int:
  mask = os.umask(0)
  os.umask(mask)
  return mask


_UMASK = _umask()  # read once, at import (setting it is the only way to read it)


def _fsync_dir(folder: str) -> None:
  try:
    fd = os.open(folder, os.O_RDONLY)
  except OSError:
    return
  try:
    os.fsync(fd)
  except OSError:  # some file systems cannot sync a folder; the rename is still atomic
    pass
  finally:
    os.close(fd)


@contextlib.contextmanager
def replacing(path: str, *, suffix: str = "") -> Iterator[str]:
  """Yields a temporary path beside `path`; when the block ends without an exception, the
  file written there becomes `path` (fsync, atomic rename). On any exception, signals
  included, the temporary file is removed and `path` is left as it was. `suffix`: the
  temporary name's ending (e.g. ".png", for libraries that choose a format by it)."""
  folder, name = os.path.split(os.path.abspath(path))
  os.makedirs(folder, exist_ok=True)
  # The temporary file's creation, the rename and the removal each finish whole under a
  # stop (`preemption.held`, which raises the stop at the block's end, inside the `try`);
  # only the caller's writing in between is interrupted at once.
  tmp = None
  try:
    with preemption.held():
      fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.", suffix=f".tmp{suffix}")
      try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # as open() would make it (mkstemp makes it private)
      finally:
        os.close(fd)
    yield tmp
    with preemption.held():
      with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
      os.replace(tmp, path)
      _fsync_dir(folder)
  except BaseException:
    if tmp is not None:
      with preemption.held(), contextlib.suppress(FileNotFoundError):
        os.remove(tmp)
    raise


def make_dir(parent: str, *, prefix: str, suffix: str) -> str:
  """A new folder in `parent` with a unique name, with the permissions `os.makedirs` would
  give it (tempfile makes it private)."""
  path = tempfile.mkdtemp(dir=parent, prefix=prefix, suffix=suffix)
  os.chmod(path, 0o777 & ~_UMASK)
  return path


def write_text(path: str, text: str) -> str:
  """Writes `text` to `path` all or nothing."""
  with replacing(path) as tmp:
    with open(tmp, "w") as f:
      f.write(text)
  return path


def write_json(path: str, obj: Any, **dump_kwargs) -> str:
  """`json.dump(obj)` to `path`, all or nothing (the text is made before anything is
  written, so an object that cannot be serialised leaves no file)."""
  return write_text(path, json.dumps(obj, **dump_kwargs))
