"""JAX's persistent compilation cache for the experiments and the test suite: a program
compiled once is read back from `$DLCORE_CACHE/jax` (default `~/.cache/dlcore/jax`) by every
later process, so a restarted or repeated run skips the compilation it has done before.
`DLCORE_JAX_CACHE=0` turns it off; results do not depend on it (a cached executable is the
same program)."""
from __future__ import annotations

import os

ENV_OFF = "DLCORE_JAX_CACHE"


def cache_root() -> str:
  """dlcore's cache folder: `$DLCORE_CACHE`, default `~/.cache/dlcore` (scorers, JAX)."""
  return os.environ.get("DLCORE_CACHE") or os.path.join(os.path.expanduser("~"), ".cache",
                                                         "dlcore")


def cache_dir() -> str:
  return os.path.join(cache_root(), "jax")


def enable() -> str | None:
  """Turns the cache on (unless DLCORE_JAX_CACHE=0); returns its folder or None."""
  if os.environ.get(ENV_OFF, "1").strip().lower() in ("0", "false", "no", "off"):
    return None
  import jax

  path = cache_dir()
  try:
    os.makedirs(path, exist_ok=True)
  except OSError:
    return None  # an unwritable cache only costs compile time
  drop_empty_entries(path)
  jax.config.update("jax_compilation_cache_dir", path)
  # Every program, not only those over 1 s to compile: the small steps add up.
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
  jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  return path


def drop_empty_entries(path: str) -> list[str]:
  """Removes empty entries from JAX's cache folder; returns their names. JAX writes an
  entry in place (open, then write): a stop between the two leaves an empty file, which JAX
  would fail to read, warn about and never replace. (SIGTERM and Ctrl-C cannot cut a write
  in half: the write is one call, and Python runs signal handlers between calls; a SIGKILL
  can, and JAX then recompiles that program every run, with a warning.)"""
  dropped = []
  try:
    entries = list(os.scandir(path))
  except OSError:
    return dropped
  for entry in entries:
    try:
      if entry.is_file() and entry.stat().st_size == 0:
        os.remove(entry.path)
        dropped.append(entry.name)
    except OSError:  # another process removed it first
      pass
  return dropped
