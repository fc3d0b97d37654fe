"""Stopping a run gracefully: SIGTERM (a scheduler's preemption notice, e.g. SLURM's
`--signal`) or Ctrl-C asks `fit` to stop; it finishes the step in flight, saves a verified
checkpoint at that step with the epoch's records so far, and raises `Preempted`.

    previous = preemption.install()   # cli.entry does this for the experiments
    fit(...)                          # raises Preempted(step, signal_name) after saving
    preemption.uninstall(previous)    # the handlers before, and no request left over

In training (inside `fit`) the handlers only note the signal; `fit` reads it after every
step. Outside training (loading data, compiling, a final evaluation, scoring, writing the
summary) a signal stops the program at once with `Preempted`: what was saved stays, and
the message says what that is. A second Ctrl-C stops at once too. `Preempted` derives from
`BaseException`, as `KeyboardInterrupt` does, so no `except Exception` on the way (a data
source trying the next candidate, a loader turning errors into its own) can swallow it.

Several processes (`dlcore.distributed` calls `join` after `jax.distributed.initialize`,
with JAX's own SIGTERM handler switched off): the process that receives a signal publishes a
notice in the job's key-value store; a thread in every process watches for it and delivers
the signal to its own main thread, so every process stops, whichever got the signal. In a
`fit` whose steps run over every process, the same thread agrees on the step to stop at (JAX's
preemption-sync protocol: each process posts the last step it finished, all stop after
max + 1), so they save the same checkpoint together. A process that is not in such a `fit`
posts that it is out, and the others then stop without saving (a save needs every process).
Every wait has a timeout.
"""
from __future__ import annotations

import atexit
import contextlib
import signal
import threading

# Exit codes (shell convention: 128 + the signal's number).
EXIT_CODES = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}
SIGNALS = (signal.SIGTERM, signal.SIGINT)
AGREE_S = 30.0  # how long processes wait for each other to agree on a step

_requested: str | None = None  # the signal's name once one arrived
_training = False              # inside fit: finish the step, then save and stop
_collective = False            # that fit's steps run over every process of the job
_saved: tuple[str, int] | None = None  # newest checkpoint saved or restored here
_job: "_Job | None" = None


class Preempted(BaseException):
  """A run stopped by a signal. `step`: the step training stopped after (None: outside
  training); `where`: the checkpoint folder that step was saved in (None: nothing saved)."""

  def __init__(self, signal_name: str, step: int | None = None, where: str | None = None, *,
               what: str = "training", detail: str | None = None):
    self.signal_name, self.step, self.where = signal_name, step, where
    if detail is not None:
      saved = detail
    elif step is not None and where is not None:
      saved = f"stopped after step {step}; checkpoint saved in {where}"
    elif step is not None:
      saved = (f"stopped {what} after step {step}; it keeps no checkpoint, so it starts over "
               "when the run continues")
    else:
      saved = f"stopped outside training; {_saved_note()}"
    super().__init__(f"{signal_name}: {saved}; continue with the same command and "
                     "--auto-resume (or --resume)")

  @property
  def exit_code(self) -> int:
    return EXIT_CODES.get(self.signal_name, 1)


def _saved_note() -> str:
  if _saved is None:
    return "no checkpoint was written in this process"
  return f"the newest checkpoint is step {_saved[1]} in {_saved[0]}"


def note_saved(directory: str, step: int) -> None:
  """Called by `Checkpointer` when a step is saved or restored (for `Preempted`'s message)."""
  global _saved
  _saved = (directory, int(step))


def _handler(signum, frame) -> None:
  global _requested
  name = signal.Signals(signum).name
  if name == "SIGINT" and _requested is not None:  # Ctrl-C after a stop request: at once
    raise KeyboardInterrupt
  _requested = name
  if _job is not None:
    _job.notice.set()
  if not _training:
    raise Preempted(name)


def install() -> dict:
  """Handles SIGTERM and SIGINT as graceful stops (main thread only) and clears any earlier
  request; returns the previous handlers, for `uninstall`."""
  reset()
  return {s: signal.signal(s, _handler) for s in SIGNALS}


def uninstall(previous: dict) -> None:
  """Puts back the handlers `install` returned and forgets any request."""
  for s, h in previous.items():
    signal.signal(s, h if h is not None else signal.SIG_DFL)
  reset()


def requested() -> str | None:
  return _requested


def in_training() -> bool:
  return _training


def reset() -> None:
  """Forgets a request (a new run in the same process starts clean)."""
  global _requested
  _requested = None
  if _job is not None:
    _job.reset()


@contextlib.contextmanager
def training(*, collective: bool = False, step: int = 0):
  """While training, a signal is only noted; `fit` stops at the next step boundary.
  `collective`: the steps run over every process of the job (they stop together); `step`:
  the step training starts from."""
  global _training, _collective
  before = (_training, _collective)
  with _job.lock if _job is not None else contextlib.nullcontext():
    _training, _collective = True, collective
    if _job is not None and collective:
      _job.counter = int(step)
  try:
    yield
  finally:
    with _job.lock if _job is not None else contextlib.nullcontext():
      _training, _collective = before


def reached(step: int) -> str | None:
  """The signal to stop for after `step`, or None. In a collective `fit` of several
  processes every process gets the same answer at the same step."""
  if _job is None or not _collective:
    return _requested
  return _job.reached(int(step))


def stopping() -> str | None:
  """At the end of a `fit`: the signal that arrived during it (every process of a collective
  fit agrees), or None."""
  if _job is not None and _collective:
    with _job.lock:  # an agreement in progress finishes first
      pass
  return _requested


def join(client, me: int, n: int) -> None:
  """Several processes: watch the job's key-value store for stop notices (see the module
  doc). `client`: JAX's distributed client; called by `dlcore.distributed.initialize`."""
  global _job
  if _job is None and n > 1:
    _job = _Job(client, me, n)


def leave() -> None:
  """This process stops outside a collective fit: tells the others not to wait for it."""
  if _job is not None:
    _job.post_out()


class _Job:
  """The stop protocol between the processes of a job (module doc)."""
  NOTICE = "dlcore/preempt/notice"
  POSTS = "dlcore/preempt/step/"
  OUT = "out"

  def __init__(self, client, me: int, n: int):
    self.client, self.me, self.n = client, me, n
    self.lock = threading.Lock()
    self.notice = threading.Event()  # this process got a signal: tell the others
    self.counter = 0      # the last step this process finished in a collective fit
    self.target: int | None = None  # the agreed step to stop after
    self.failed: str | None = None  # why no step could be agreed on
    self.posted = False
    self.main = threading.main_thread().ident
    self.done = threading.Event()
    self.thread = threading.Thread(target=self._watch, name="dlcore-preempt-watch",
                                   daemon=True)
    self.thread.start()
    # Stop watching before JAX's own exit handler shuts the client down (atexit runs the
    # newest first): a thread still inside the client then would abort the process.
    atexit.register(self.close)

  def close(self) -> None:
    self.done.set()
    self.thread.join(2.0)

  def reset(self) -> None:
    self.notice.clear()

  def reached(self, step: int) -> str | None:
    with self.lock:  # blocked while an agreement is being computed
      self.counter = step
      if self.failed is not None:
        raise Preempted(_requested or "SIGTERM", detail=self.failed)
      if self.target is not None and step >= self.target:
        return _requested or "SIGTERM"
    return None

  def _set(self, key: str, value: str) -> None:
    try:
      self.client.key_value_set(key, value)
    except Exception:  # noqa: BLE001 - ALREADY_EXISTS: another process posted it first
      pass

  def post_out(self) -> None:
    if not self.posted:
      self.posted = True
      self._set(f"{self.POSTS}{self.me}", self.OUT)

  def _watch(self) -> None:
    told = False
    while not self.done.is_set():
      if self.notice.is_set() and not told:
        self._set(self.NOTICE, _requested or "SIGTERM")
        told = True
      try:
        self.client.blocking_key_value_get(self.NOTICE, 500)
      except Exception as e:  # noqa: BLE001 - a timeout: no notice yet; else the job ended
        if "DEADLINE_EXCEEDED" in str(e) or "timed out" in str(e).lower():
          continue
        return
      if _requested is None:  # a peer's notice: stop here too, as if signalled
        signal.pthread_kill(self.main, signal.SIGTERM)
      self._agree()
      return

  def _agree(self) -> None:
    with self.lock:
      if not (_training and _collective):
        self.post_out()
        return
      self._set(f"{self.POSTS}{self.me}", str(self.counter))
      self.posted = True
      steps = []
      for p in range(self.n):
        try:
          value = self.client.blocking_key_value_get(f"{self.POSTS}{p}", int(AGREE_S * 1000))
        except Exception:  # noqa: BLE001 - it never answered
          value = None
        if value is None or value == self.OUT:
          why = "had stopped outside training" if value == self.OUT else "did not answer"
          self.failed = (f"stopped; process {p} {why}, so no step could be saved together "
                         f"by every process; {_saved_note()}")
          return
        steps.append(int(value))
      self.target = max(steps) + 1
