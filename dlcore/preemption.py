"""Stopping a run gracefully: SIGTERM (a scheduler's preemption notice, e.g. SLURM's
`--signal`) or Ctrl-C asks `fit` to stop; it finishes the step in flight, saves a verified
checkpoint at that step with the epoch's records so far, and raises `Preempted`.

    previous = preemption.install()   # cli.entry does this for the experiments
    fit(...)                          # raises Preempted(step, signal_name) after saving
    preemption.uninstall(previous)    # the handlers before, and no request left over

In training (inside `fit`) the handlers only note the signal; `fit` reads it after every
step. Outside training (loading data, compiling, a final evaluation, scoring, writing the
summary) a signal stops the program at once with `Preempted`: what was saved stays, and
the message says what that is; a short all-or-nothing write in progress (`held`: a model
folder, a file renamed into place) finishes first, so no temporary is left behind. A second
Ctrl-C stops at once too. `Preempted` derives from `BaseException`, as `KeyboardInterrupt`
does, so no `except Exception` on the way (a data source trying the next candidate, a loader
turning errors into its own) can swallow it.
Python ignores an exception raised inside a gc callback, `__del__` or a weakref callback,
and a handler can run inside one: a program's stop is raised again until it is caught.

Several processes (`dlcore.distributed` calls `join` after `jax.distributed.initialize`,
with JAX's own SIGTERM handler switched off): the process that receives a signal publishes a
notice in the job's key-value store; a thread in every process watches for it and delivers
the signal to its own main thread, so every process stops, whichever got the signal. In a
`fit` whose steps run over every process, the same thread agrees on the step to stop at (JAX's
preemption-sync protocol: each process posts the last step it finished, all stop after
max + 1), so they save the same checkpoint together. A process that is not in such a `fit`
posts that it is out, and the others then stop without saving (a save needs every process).
Every wait has a timeout. A job agrees on one stop: the program ends with it.

The handlers only set flags and write a byte to a pipe: no locks, no threads started there
(a handler runs between two bytecodes of whatever the main thread was doing, possibly while
it holds a lock).
"""
from __future__ import annotations

import atexit
import contextlib
import gc
import os
import signal
import sys
import threading
import time

# Exit codes (shell convention: 128 + the signal's number).
EXIT_CODES = {"SIGTERM": 128 + signal.SIGTERM, "SIGINT": 128 + signal.SIGINT}
SIGNALS = (signal.SIGTERM, signal.SIGINT)
AGREE_S = 30.0  # how long processes wait for each other to agree on a step
AGAIN_S = 0.5   # a program's stop raised outside training is raised again after this
DEFER_S = 0.02  # a stop that arrived inside a finalizer is raised this much later
_DEFERRED = 64  # added to the signal's number in the pipe: raise after DEFER_S

_requested: str | None = None  # the signal's name once one arrived
_program = False               # installed by cli.entry for one run (see `install`)
_delivered = False             # the program caught its Preempted and is leaving
_again = False                 # the next handler call is a stop raised again
_told = False                  # the early handler printed its line
_training = False              # inside fit: finish the step, then save and stop
_collective = False            # that fit's steps run over every process of the job
_saved: tuple[str, int] | None = None  # newest checkpoint saved or restored here
_job: "_Job | None" = None
_pipe: int | None = None       # write end: the handlers' requests to raise again
_early_called = False          # a program (`python -m experiments.*`), see `early`
_generation = 0                # advanced by `reset`: a raise-again asked before it is dropped
_held = 0                      # depth of `held()` blocks: a stop there waits for their end
_held_stop = False             # a stop arrived inside a `held()` block


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


# ---- handlers -------------------------------------------------------------------------------
def _handler(signum, frame) -> None:
  global _requested, _again, _held_stop
  name = signal.Signals(signum).name
  again, _again = _again, False
  if _delivered:  # the program is leaving with its stop already
    return
  if name == "SIGINT" and _requested is not None and not again:  # a second Ctrl-C: at once
    raise KeyboardInterrupt
  _requested = _requested or name
  if not _training:
    if _held:  # an all-or-nothing write in progress: it ends, then the stop is raised
      _held_stop = True
      return
    if _in_finalizer(frame):  # Python would ignore the exception here: raise it soon after
      _later(signum, deferred=True)
      return
    if _program:
      _later(signum)
    raise Preempted(_requested)


def _early_handler(signum, frame) -> None:
  """Before `cli.entry` runs (a program still importing JAX and the rest) and after it: one
  line and the exit code, raised again until the program ends."""
  global _requested, _told
  if _delivered:
    return
  _requested = _requested or signal.Signals(signum).name
  if _in_finalizer(frame):
    _later(signum, deferred=True)
    return
  if not _told:  # once, if the first exit was swallowed
    _told = True
    sys.stderr.write(f"error: {Preempted(_requested)}\n")
    sys.stderr.flush()
  _later(signum)
  raise SystemExit(EXIT_CODES.get(_requested, 1))


def _in_finalizer(frame) -> bool:
  """Whether a handler runs inside a gc callback (JAX registers one) or a `__del__`, where
  Python prints and ignores any exception."""
  callbacks = {getattr(cb, "__code__", None) for cb in gc.callbacks}
  while frame is not None:
    if frame.f_code in callbacks or frame.f_code.co_name == "__del__":
      return True
    frame = frame.f_back
  return False


def _later(signum: int, *, deferred: bool = False) -> None:
  """Asks the re-raise thread to deliver `signum` again (two bytes to a pipe, safe in a
  handler: the signal and the generation it belongs to; a pipe writes them at once)."""
  if _pipe is not None:
    with contextlib.suppress(OSError):  # a full pipe already holds requests
      os.write(_pipe, bytes([signum + (_DEFERRED if deferred else 0), _generation % 256]))


def _start_again_thread() -> None:
  """The thread that raises a stop again when the handler asks (started outside any
  handler). A stop is raised again while it is not caught: weakref callbacks, which Python
  ignores exceptions from, cannot be told from the frame."""
  global _pipe
  if _pipe is not None:
    return
  read, _pipe = os.pipe()
  os.set_blocking(_pipe, False)
  main = threading.main_thread().ident

  def again(data: bytes) -> None:
    global _again
    signum, deferred = data[0] % _DEFERRED, data[0] >= _DEFERRED
    time.sleep(DEFER_S if deferred else AGAIN_S)
    if (_requested is not None and not _delivered and _generation % 256 == data[1]
        and signal.getsignal(signum) in (_handler, _early_handler)):
      _again = True
      signal.pthread_kill(main, signum)

  _read_forever(read, 2, again, "dlcore-preempt-again")


def _read_forever(fd: int, size: int, on_bytes, name: str) -> None:
  """A daemon thread that calls `on_bytes(data)` with what arrives on pipe `fd`."""

  def run():
    while True:
      try:
        data = os.read(fd, size)
      except OSError:
        return
      if not data:
        return
      on_bytes(data)

  threading.Thread(target=run, name=name, daemon=True).start()


def _unraisable(info) -> None:
  """`sys.unraisablehook` while dlcore's handlers are in place: a stop that Python could not
  raise (in a weakref callback) is raised again soon; its traceback would only alarm."""
  if isinstance(info.exc_value, (Preempted, SystemExit)) and _requested is not None:
    return
  sys.__unraisablehook__(info)


def program_process() -> bool:
  """Whether this process is a program that called `early()` (`python -m experiments.*`)."""
  return _early_called


def early() -> None:
  """For programs (`experiments/__init__.py` calls this when run with `python -m`): SIGTERM
  and Ctrl-C end the program in one line from the first import on. A request that arrives
  now is kept for `install(program=True)`, and `check()` then stops at once."""
  global _early_called
  _early_called = True
  _start_again_thread()
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
  global _program, _delivered, _requested, _told, _saved, _held
  pending = _requested if signal.getsignal(signal.SIGTERM) is _early_handler else None
  if pending is None:
    _told = False
  reset()
  _program, _delivered, _saved, _held = program, False, None, 0
  if program:
    _start_again_thread()
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
  """The program caught its `Preempted` and leaves: later signals are ignored, nothing is
  raised again."""
  global _delivered
  _delivered = True


def uninstall(previous: dict) -> None:
  """Puts back the handlers `install` returned and forgets any request."""
  global _program, _told, _saved
  _program, _told, _saved = False, False, None
  previous = dict(previous)
  sys.unraisablehook = previous.pop("unraisablehook", sys.unraisablehook)
  for s, h in previous.items():
    signal.signal(s, h if h is not None else signal.SIG_DFL)
  reset()


def begin_fit() -> None:
  """At the start of a `fit`: a request that arrived earlier in this program (its raise
  swallowed) stops now; in a notebook it is from an earlier, stopped run and is
  forgotten."""
  if _training or _requested is None:
    return
  if _program:
    raise Preempted(_requested)
  reset()


def requested() -> str | None:
  return _requested


def reset() -> None:
  """Forgets a request (a new run in the same process starts clean), and any raise-again
  it asked for."""
  global _requested, _generation, _held_stop
  _requested, _held_stop = None, False
  _generation += 1


class held:
  """A short all-or-nothing write (a model folder, a file renamed into place, a temporary
  file's creation or removal): a stop that arrives inside only is noted and is raised when
  the block ends, so the write (or its cleanup) runs whole and leaves no temporary behind
  (a stop raised inside an asynchronous save would leave the writer's threads filling a
  folder that the cleanup just removed). A second Ctrl-C still stops at once. A block that
  ends with its own error raises that error (a `Preempted` instead, chained, when a stop
  arrived inside and the error is not already a stop); a block inside the handling of a stop
  (a cleanup) lets that stop go on. Signals reach the main thread only: in other threads
  (a background checkpoint writer) the block changes nothing."""

  def __enter__(self):
    global _held
    self.counted = threading.current_thread() is threading.main_thread()
    if self.counted:
      _held += 1
    return self

  def __exit__(self, kind, error, tb):
    global _held, _held_stop
    if not self.counted:
      return False
    _held -= 1
    if _held or not _held_stop:
      return False
    _held_stop = False
    stops = (Preempted, KeyboardInterrupt, SystemExit)
    if error is not None:  # the block's own error, a stop instead when it is not one
      if not isinstance(error, stops) and _requested:
        raise _stop_now() from error
      return False
    if isinstance(sys.exc_info()[1], stops):  # a cleanup while a stop is on its way
      return False
    if _requested is not None and not _training and not _delivered:
      raise _stop_now()
    return False


def _stop_now() -> "Preempted":
  """The stop a handler would have raised (a program's is raised again until delivered)."""
  if _program:
    _later(getattr(signal, _requested))
  return Preempted(_requested)


# ---- training -------------------------------------------------------------------------------
@contextlib.contextmanager
def training(*, collective: bool = False, step: int = 0):
  """While training, a signal is only noted; `fit` stops at the next step boundary.
  `collective`: the steps run over every process of the job (they stop together); `step`:
  the step training starts from."""
  global _training, _collective
  before = (_training, _collective)
  with _job.lock if _job is not None else contextlib.nullcontext():
    if _job is not None and collective and _job.out:
      raise Preempted(_requested or "SIGTERM", detail=_job.out_note())
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


# ---- several processes ----------------------------------------------------------------------
def join(client, me: int, n: int) -> None:
  """Several processes: watch the job's key-value store for stop notices (see the module
  doc). `client`: JAX's distributed client; called by `dlcore.distributed.initialize`."""
  global _job
  if _job is None and n > 1:
    _job = _Job(client, me, n)


def leave(wait_s: float = 3.0) -> None:
  """This process stops: tells the others, and that they need not wait for it. Process 0,
  which hosts the job's coordination service, then waits up to `wait_s` for the others to
  stop first: a process whose coordinator vanishes aborts with a C++ stack instead of its
  own line."""
  if _job is not None:
    if _requested is not None:
      _job.notify()
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
    self.counter = 0      # the last step this process finished in a collective fit
    self.target: int | None = None  # the agreed step to stop after
    self.failed: str | None = None  # why no step could be agreed on
    self.out = False      # this process posted that it takes no part in a collective stop
    self.told = False     # this process published the notice
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

  def out_note(self) -> str:
    return ("stopped; this process had stopped outside training when the job's processes "
            f"agreed on a step, so none was saved together; {_saved_note()}")

  def reached(self, step: int) -> str | None:
    with self.lock:  # blocked while an agreement is being computed
      self.counter = step
      if self.out:
        raise Preempted(_requested or "SIGTERM", detail=self.out_note())
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

  def notify(self) -> None:
    if not self.told:
      self.told = True
      self._set(self.NOTICE, _requested or "SIGTERM")

  def post_out(self) -> None:
    if not self.out:
      self.out = True
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
    while not self.done.is_set():
      if _requested is not None:  # a signal here: tell the others
        self.notify()
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


# ---- signals while the main thread is blocked in C ---------------------------------------
_noted: str | None = None  # a signal seen through the wakeup fd (the handler may not have run)


def noted() -> str | None:
  """A signal that arrived, even one whose handler has not run yet because the main thread
  is blocked inside a C call (joining a job, a barrier); see `watch_blocked`."""
  return _requested or _noted


def watch_blocked(on_signal) -> None:
  """Several processes: a thread reads `signal.set_wakeup_fd`'s pipe, where every caught
  signal is written even while the main thread is blocked in C (no Python handler can run
  then), notes it for `noted()` and calls `on_signal(name)`. Main thread only."""
  read, write = os.pipe()
  os.set_blocking(write, False)
  signal.set_wakeup_fd(write, warn_on_full_buffer=False)

  def seen(data: bytes) -> None:
    global _noted
    for signum in data:
      if signum in SIGNALS:
        _noted = _noted or signal.Signals(signum).name
        on_signal(_noted)

  _read_forever(read, 64, seen, "dlcore-signal-watch")
