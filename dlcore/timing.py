"""Where a run's time goes: named sections timed on the host, and XLA compilation.

    timing.reset()
    with timing.section("evaluation"):
      ...
    timing.report()  # {"total": 3.1, "evaluation": 1.23, "compilation": 0.8, ..., "other": ..}

Sections are exclusive: time spent in a section nested inside another counts for the inner
one only, so the parts add up to the time they cover. Compilation (tracing, lowering and
XLA's compile or its cache lookup) comes from JAX's own monitoring events and is taken out of
whatever section was compiling. Only the main thread's sections count; a process keeps one
account (`reset` starts it over). Timing reads clocks only: it never waits for the device,
so where the device's work is waited for (fetching a result) is where its time shows.
"""
from __future__ import annotations

import contextlib
import os
import threading
import time
from collections import defaultdict

COMPILATION = "compilation"
# JAX's events for the phases of compiling one program (jax/_src/dispatch.py).
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")

_totals: dict[str, float] = defaultdict(float)
_stack: list[list] = []        # [name, start, nested sections' and compilations' time, whole]
_spans: list[tuple] = []       # recent compile spans (start, end, counted): nested tracing
_listening = False
_compiles = 0                  # XLA compilations seen (`compiles`)
_lock = threading.Lock()
_t0 = time.perf_counter()      # when the account began (`reset`)
START_UP = "start-up"          # the section of the seconds spent before `reset`


def _main() -> bool:
  return threading.current_thread() is threading.main_thread()


@contextlib.contextmanager
def section(name: str, *, whole: bool = False):
  """Counts the time inside for `name` (less what nested sections and compilations took).
  `whole`: sections nested inside count for this one (e.g. a helper model's training is not
  the run's "training steps")."""
  if not _main() or (_stack and _stack[-1][3]):
    yield
    return
  _listen()
  frame = [name, time.perf_counter(), 0.0, whole]
  _stack.append(frame)
  try:
    yield
  finally:
    _stack.pop()
    took = time.perf_counter() - frame[1]
    with _lock:
      _totals[name] += max(0.0, took - frame[2])
      if _stack:
        _stack[-1][2] += took


def _on_span(event: str, start: float, end: float, **_) -> None:
  """A compile phase ended: counts it once (a program traced inside another's tracing is
  inside that span already) and takes it out of the section that was compiling."""
  global _compiles
  if event not in _COMPILE_EVENTS:
    return
  with _lock:
    _compiles += event == _COMPILE_EVENTS[-1]
    inner = [s for s in _spans if s[0] >= start and s[1] <= end]
    counted = max(0.0, end - start - sum(s[2] for s in inner))
    _spans[:] = [s for s in _spans if s not in inner][-32:] + [(start, end, end - start)]
    _totals[COMPILATION] += counted
    if _stack and _main():
      _stack[-1][2] += counted


def _on_event(event: str, **_) -> None:
  global _compiles
  if event == "/jax/compilation_cache/cache_hits":  # read back, not compiled
    with _lock:
      _compiles -= 1


def _listen() -> None:
  global _listening
  if not _listening:
    import jax
    jax.monitoring.register_event_time_span_listener(_on_span)
    jax.monitoring.register_event_listener(_on_event)
    _listening = True


def compiles() -> int:
  """How many programs XLA has compiled in this process so far (a program read back from
  the persistent cache is not counted); the difference over a stretch of code counts its
  programs."""
  _listen()
  with _lock:
    return _compiles


def report() -> dict:
  """Seconds per section since `reset` (rounded to ms), largest first, with "total" (the
  wall time since `reset`, plus the start-up given to it) and "other" (the part of it in no
  section)."""
  with _lock:
    totals = dict(_totals)
  total = time.perf_counter() - _t0 + totals.get(START_UP, 0.0)
  out = {k: round(v, 3) for k, v in sorted(totals.items(), key=lambda kv: -kv[1])}
  return {"total": round(total, 3)} | out | {
      "other": round(max(0.0, total - sum(totals.values())), 3)}


def reset(before: float = 0.0) -> None:
  """Starts the account over (compilations count from the first `reset` or `section` on);
  `before`: seconds already spent (counted as "start-up")."""
  global _t0
  _listen()
  with _lock:
    _totals.clear()
    _spans.clear()
    _t0 = time.perf_counter()
    if before:
      _totals[START_UP] = before


def since_process_start() -> float | None:
  """Seconds since this process started (Linux: /proc), or None where that is unknown."""
  try:
    with open("/proc/self/stat") as f:
      fields = f.read().rsplit(")", 1)[1].split()
    with open("/proc/uptime") as f:
      uptime = float(f.read().split()[0])
    return max(0.0, uptime - int(fields[19]) / os.sysconf("SC_CLK_TCK"))
  except (OSError, ValueError, IndexError):
    return None
