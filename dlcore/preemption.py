"""Stopping a run gracefully: SIGTERM (a scheduler's preemption notice, e.g. SLURM's
`--signal`) or Ctrl-C asks `fit` to stop; it finishes the step in flight, saves a verified
checkpoint at that step with the epoch's records so far, and raises `Preempted`.

    preemption.install()          # cli.entry does this for the experiments
    fit(...)                      # raises Preempted(step, signal_name) after saving

One process: the handlers set a flag that `fit` reads after every step. Several processes
(`jax.distributed`): JAX's preemption service (on by default) catches SIGTERM in whichever
process receives it, and `reached(step)` is `multihost_utils.reached_preemption_sync_point`:
every process agrees on the same step to stop at, so they save the same checkpoint together.

Outside `fit` (loading data, a final evaluation) a signal stops the program at once with
`Preempted` (nothing to save that is not saved already). A second Ctrl-C stops at once too.
"""
from __future__ import annotations

import contextlib
import signal

import jax

# Exit codes (shell convention: 128 + the signal's number).
EXIT_CODES = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}

_requested: str | None = None  # the signal's name once one arrived
_training = False              # inside fit: finish the step, then save and stop


class Preempted(Exception):
  """A run stopped by a signal; its state up to `step` is saved (None: outside training)."""

  def __init__(self, signal_name: str, step: int | None = None, where: str | None = None):
    self.signal_name, self.step, self.where = signal_name, step, where
    saved = (f"stopped after step {step}; checkpoint saved in {where}" if step is not None
             else "stopped")
    super().__init__(f"{signal_name}: {saved}; continue with the same command and "
                     "--auto-resume (or --resume)")

  @property
  def exit_code(self) -> int:
    return EXIT_CODES.get(self.signal_name, 1)


def _handler(signum, frame) -> None:
  global _requested
  name = signal.Signals(signum).name
  if _requested == "SIGINT" and name == "SIGINT":  # the second Ctrl-C: at once
    raise KeyboardInterrupt
  _requested = name
  if not _training:
    raise Preempted(name)


def install() -> None:
  """Handle SIGTERM and SIGINT as graceful stops (main thread only)."""
  signal.signal(signal.SIGTERM, _handler)
  signal.signal(signal.SIGINT, _handler)


def requested() -> str | None:
  return _requested


def reset() -> None:
  global _requested
  _requested = None


@contextlib.contextmanager
def training():
  """While training, a signal is only noted; `fit` stops at the next step boundary."""
  global _training
  before, _training = _training, True
  try:
    yield
  finally:
    _training = before


def reached(step: int) -> str | None:
  """The signal to stop for at `step`, or None. With several processes every process gets
  the same answer at the same step (JAX's preemption sync point)."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    if multihost_utils.reached_preemption_sync_point(int(step)):
      return _requested or "SIGTERM"
    return None
  return _requested
