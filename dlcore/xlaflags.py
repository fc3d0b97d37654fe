"""XLA flags dlcore sets for JAX's CPU backend, before that backend starts.

jaxlib 0.10's CPU backend lowers each forward convolution into a YNNPACK fusion that is
slower than XLA's own convolution kernel on every convolution model here (measured per model
by `python -m benchmarks.cpu_convolutions`; docs/notes/cpu-convolutions.md).
`--xla_cpu_experimental_ynn_fusion_type=-individual_convolution` keeps the convolutions out
of that fusion. XLA reads `XLA_FLAGS` once, when the CPU backend is created (the first
computation or device query), so `import dlcore` adds the flag there; importing dlcore after
JAX has run something leaves the running backend as it is.

- `DLCORE_XLA_DEFAULTS=1` opts out: XLA_FLAGS is left untouched (JAX's own defaults).
- A flag the user already put in XLA_FLAGS is never overridden.
- Only for the jaxlib versions it was measured on (0.10.x): XLA aborts on a flag it does
  not know, so another jaxlib gets nothing. Child processes inherit the environment: the
  flags dlcore added are named in `DLCORE_XLA_ADDED`, and a child that imports dlcore with
  another jaxlib (or opted out) removes them again.
- If JAX's backend is already running when dlcore is imported, the flag could no longer take
  effect: nothing is added, and `describe()` says so.

Results are the same to float32 rounding either way (tests/test_xlaflags.py: every
convolution model's outputs and gradients), not bit for bit: the two kernels sum in another
order.
"""
from __future__ import annotations

import os
import sys
from importlib import metadata

YNN_FUSION = "--xla_cpu_experimental_ynn_fusion_type"
CPU_FLAGS = (f"{YNN_FUSION}=-individual_convolution",)
OPT_OUT = "DLCORE_XLA_DEFAULTS"
JAXLIB_SERIES = ("0.10.",)  # the versions the flag exists in and was measured on


def _jaxlib_version() -> str:
  try:
    return metadata.version("jaxlib")
  except metadata.PackageNotFoundError:
    return ""


ADDED = "DLCORE_XLA_ADDED"  # the flags a dlcore process added (inherited by its children)
_late = False  # JAX's backend was running before apply(): the flags could not take effect


def _backend_started() -> bool:
  bridge = sys.modules.get("jax._src.xla_bridge")
  return bool(getattr(bridge, "_backends", None))


def _without(flags: str, drop: list[str]) -> str:
  return " ".join(f for f in flags.split() if f not in drop)


def apply(environ=os.environ, *, backend_started: bool | None = None) -> list[str]:
  """Adds dlcore's CPU flags to `environ["XLA_FLAGS"]`; returns the flags added."""
  global _late
  inherited = environ.get(ADDED, "").split()
  if inherited:  # a parent dlcore process's flags: decided again for this process
    environ["XLA_FLAGS"] = _without(environ.get("XLA_FLAGS", ""), inherited)
    del environ[ADDED]
    if not environ["XLA_FLAGS"]:
      del environ["XLA_FLAGS"]
  if environ.get(OPT_OUT, "") not in ("", "0"):
    return []
  if not _jaxlib_version().startswith(JAXLIB_SERIES):
    return []
  started = (environ is os.environ and _backend_started()) if backend_started is None \
      else backend_started
  if started:
    _late = environ is os.environ
    return []
  current = environ.get("XLA_FLAGS", "")
  added = [f for f in CPU_FLAGS if f.split("=")[0] not in current]
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
    environ[ADDED] = " ".join(added)
  return added


def describe(environ=os.environ) -> str:
  """One line for run logs: are the convolutions kept out of YNNPACK?"""
  if _late and environ is os.environ:
    return ("XLA CPU convolutions: JAX's defaults (JAX's backend was running before `import "
            "dlcore`, too late for its flag; import dlcore before JAX computes anything)")
  flags = environ.get("XLA_FLAGS", "")
  if f"{YNN_FUSION}=-individual_convolution" in flags:
    return "XLA CPU convolutions: XLA's kernel (YNNPACK fusion off; DLCORE_XLA_DEFAULTS=1: on)"
  return "XLA CPU convolutions: JAX's defaults"
