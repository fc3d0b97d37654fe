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
  not know, so another jaxlib gets nothing.

Results are the same to float32 rounding either way (tests/test_xlaflags.py: every
convolution model's outputs and gradients), not bit for bit: the two kernels sum in another
order.
"""
from __future__ import annotations

import os
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


def apply(environ=os.environ) -> list[str]:
  """Adds dlcore's CPU flags to `environ["XLA_FLAGS"]`; returns the flags added."""
  if environ.get(OPT_OUT, "") not in ("", "0"):
    return []
  if not _jaxlib_version().startswith(JAXLIB_SERIES):
    return []
  current = environ.get("XLA_FLAGS", "")
  added = [f for f in CPU_FLAGS if f.split("=")[0] not in current]
  if added:
    environ["XLA_FLAGS"] = " ".join([current, *added]).strip()
  return added


def describe(environ=os.environ) -> str:
  """One line for run logs: are the convolutions kept out of YNNPACK?"""
  flags = environ.get("XLA_FLAGS", "")
  if f"{YNN_FUSION}=-individual_convolution" in flags:
    return "XLA CPU convolutions: XLA's kernel (YNNPACK fusion off; DLCORE_XLA_DEFAULTS=1: on)"
  return "XLA CPU convolutions: JAX's defaults"
