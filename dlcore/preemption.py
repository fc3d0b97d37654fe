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
import gc
import signal
import sys
import threading
import time
from typing import Callable

# Exit codes (shell convention: 128 + the signal's number).
EXIT_CODES = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}
SIGNALS = (signal.SIGTERM, signal.SIGINT)
AGREE_S = 30.0  # how long processes wait for each other to agree on a step

_requested: str | None = None  # the signal's name once one arrived
_program = False               # installed by cli.entry for one run (see `install`)
_delivered = False             # the program caught its Preempted
_again = False                 # the next handler call is a stop raised again
_told = False                  # the early handler printed its line
AGAIN_S = 0.5   # a stop raised outside training is raised again after this (until caught)
DEFER_S = 0.02  # a stop that arrived inside a finalizer is raised after this
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
    self.told = False  # the line was printed already
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
  global _requested, _again
  name = signal.Signals(signum).name
  again, _again = _again, False
  if name == "SIGINT" and _requested is not None and not again:  # a second Ctrl-C: at once
    raise KeyboardInterrupt
  _requested = _requested or name
  if _job is not None:
    _job.notice.set()
  if not _training:
    if _in_finalizer(frame):  # Python would ignore the exception here: raise it soon after
      _schedule_again(signum, DEFER_S, lambda: signal.getsignal(signum) is _handler)
      return
    if _program:
      _schedule_again(signum, AGAIN_S, lambda: _program and not _delivered)
    raise Preempted(_requested)


def _in_finalizer(frame) -> bool:
  """Whether a handler runs inside a gc callback (JAX registers one) or a `__del__`, where
  Python prints and ignores any exception."""
  callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
  while frame is not None:
    if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
      return True
    frame = frame.f_back
  return False


def _unraisable(info) -> None:
  """`sys.unraisablehook` while dlcore's handlers are in place: a stop that Python could not
  raise (in a weakref callback) is raised again soon; its traceback would only alarm."""
  if isinstance(info.exc_value, (Preempted, SystemExit)) and _requested is not None:
    return
  sys.__unraisablehook__(info)


def _schedule_again(signum, delay: float, still: Callable[[], bool]) -> None:
  """Delivers `signum` to the main thread again after `delay` seconds if `still()`. A
  program's stop outside training is raised again every `AGAIN_S` until `delivered()`:
  besides gc callbacks and `__del__`, a handler can run inside a weakref callback, which
  Python ignores exceptions from too, and that cannot be told from the frame."""
  main = threading.main_thread().ident

  def again():
    global _again
    if still():
      _again = True
      signal.pthread_kill(main, signum)

  timer = threading.Timer(delay, again)
  timer.daemon = True
  timer.start()


def _early_handler(signum, frame) -> None:
  """Before `cli.entry` runs (a program still importing JAX and the rest) and after it: one
  line and the exit code, raised again until the program ends (see `_schedule_again`)."""
  global _requested, _told
  name = signal.Signals(signum).name
  _requested = _requested or name
  still = lambda: signal.getsignal(signum) is _early_handler  # noqa: E731
  if _in_finalizer(frame):
    _schedule_again(signum, DEFER_S, still)
    return
  if not _told:  # once, if the first exit was swallowed
    _told = True
    sys.stderr.write(f"error: {Preempted(_requested)}\n")
    sys.stderr.flush()
  _schedule_again(signum, AGAIN_S, still)
  raise SystemExit(EXIT_CODES.get(_requested, 1))


def early() -> None:
  """For programs (`experiments/__init__.py` calls this when run with `python -m`): SIGTERM
  and Ctrl-C end the program in one line from the first import on. A request that arrives
  now is kept for `install(program=True)`, which then stops at once."""
  for s in SIGNALS:
    signal.signal(s, _early_handler)
  sys.unraisablehook = _unraisable


def install(*, program: bool = False) -> dict:
  """Handles SIGTERM and SIGINT as graceful stops (main thread only) and clears any earlier
  request; returns the previous handlers, for `uninstall`. `program=True` (`cli.entry`):
  this process runs one run, and a stop is not over until `delivered()`: a `fit` never
  discards a request, and a stop raised outside training is raised again until it is
  delivered. Without it (a notebook), a request left over when a `fit` starts is from an
  earlier, stopped run and is forgotten."""
  global _program, _delivered, _requested, _told
  pending = _requested if signal.getsignal(signal.SIGTERM) is _early_handler else None
  if pending is None:
    _told = False
  reset()
  _program, _delivered = program, False
  previous = {s: signal.signal(s, _handler) for s in SIGNALS}
  previous["unraisablehook"] = sys.unraisablehook
  sys.unraisablehook = _unraisable
  if pending is not None:  # arrived while the program started (its exit was swallowed):
    _requested = pending   # `check()` raises it
  return previous


def check() -> None:
  """Raises `Preempted` if a stop was requested (a program calls this where it starts)."""
  if _requested is not None and not _training:
    e = Preempted(_requested)
    e.told = _told  # the early handler printed the line already
    raise e


def delivered() -> None:
  """The program caught its `Preempted`: no more raising it again."""
  global _delivered
  _delivered = True


def uninstall(previous: dict) -> None:
  """Puts back the handlers `install` returned and forgets any request."""
  global _program, _told
  _program, _told = False, False
  previous = dict(previous)
  sys.unraisablehook = previous.pop("unraisablehook", sys.unraisablehook)
  for s, h in previous.items():
    signal.signal(s, h if h is not None else signal.SIG_DFL)
  reset()


def begin_fit() -> None:
  """At the start of a `fit`: a request that arrived earlier in this program (its raise
  swallowed, see `_schedule_again`) stops now; in a notebook it is from an earlier, stopped
  run and is forgotten."""
  if _training or _requested is None:
    return
  if _program:
    raise Preempted(_requested)
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


def leave(wait_s: float = 3.0) -> None:
  """This process stops: tells the others not to wait for it. Process 0, which hosts the
  job's coordination service, then waits up to `wait_s` for the others to stop first: a
  process whose coordinator vanishes aborts with a C++ stack instead of its own line."""
  if _job is not None:
    _job.post_out()
    _job.left(wait_s if _job.me == 0 else 0.0)


class _Job:
  """The stop protocol between the processes of a job (module doc)."""
  NOTICE = "dlcore/preempt/notice"
  POSTS = "dlcore/preempt/step/"
  LEFT = "dlcore/preempt/left/"
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

  def left(self, wait_s: float) -> None:
    self._set(f"{self.LEFT}{self.me}", "1")
    deadline = time.monotonic() + wait_s
    for p in range(self.n):
      left_ms = int((deadline - time.monotonic()) * 1000)
      if p == self.me or left_ms <= 0:
        continue
      try:
        self.client.blocking_key_value_get(f"{self.LEFT}{p}", left_ms)
      except Exception:  # noqa: BLE001 - it did not say in time: leave anyway
        pass

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
