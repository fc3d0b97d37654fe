"""Run directories: one run per folder, with an identity, a lock, honest resume, and the
metric writer `fit` writes to (JSON lines, optional console and TensorBoard)."""
from __future__ import annotations

import datetime
import errno
import fcntl
import json
import os
import shutil
import uuid

from dlcore import files, timing
from dlcore.harness.errors import ConfigError, RunDirError
from dlcore.harness.errors import flag as _flag
from dlcore.harness.writers import ConsoleWriter, JsonlWriter, MultiWriter, jsonable, say

# Settings a resumed run may change: how it runs, not what it computes (a mode never changes
# a result), and how long it trains (extending --epochs is what resume is for).
RESUMABLE = {"common.resume", "common.auto_resume", "common.progress", "common.tensorboard",
             "common.track", "common.tracking_uri", "common.mode",
             "common.devices", "common.overwrite", "common.allow_change", "common.workdir",
             "common.coordinator", "common.num_processes", "common.process_id",
             "epochs", "score_every", "fuse"}


# Settings added since runs were first saved, at the value that computes what runs without
# them computed: a saved run that lacks one resumes as if it had this value.
ADDED = {"common.sweep": [], "lr_scale": 1.0}  # lr_scale: planar's


def _flat(d: dict, prefix: str = "") -> dict:
  out = {}
  for k, v in d.items():
    if isinstance(v, dict):
      out |= _flat(v, f"{prefix}{k}.")
    else:
      out[f"{prefix}{k}"] = v
  return out


def _read_jsonl(path: str) -> list[dict]:
  if not os.path.exists(path):
    return []
  rows = []
  with open(path) as f:
    for line in f:
      try:
        rows.append(json.loads(line))
      except json.JSONDecodeError:  # a line cut short by a kill: nothing after it is trusted
        break
  return rows


def _write_jsonl(path: str, rows: list[dict]) -> None:
  files.write_text(path, "".join(json.dumps(r) + "\n" for r in rows))


def _read_json(path: str) -> dict:
  """A run file written by dlcore (always whole: see `dlcore.files`); one that does not
  parse was damaged by something else, and the error says which file."""
  try:
    with open(path) as f:
      value = json.load(f)
  except (OSError, ValueError) as e:
    raise RunDirError(f"{path} is unreadable ({type(e).__name__}: {str(e)[:80]}); restore it "
                      "or start over with --overwrite") from None
  if not isinstance(value, dict):
    raise RunDirError(f"{path} holds no JSON object; restore it or start over with "
                      "--overwrite")
  return value


def _epoch_records(run_path: str, step: int, scope: str | None) -> list[dict]:
  """The run's epoch records of `scope` up to `step`, as `fit` keeps them (no scope key)."""
  return [{k: v for k, v in r.items() if k != "scope"}
          for r in _read_jsonl(os.path.join(run_path, "history.jsonl"))
          if r.get("scope") == scope and r.get("step", 0) <= step]


class _Scoped:
  """A writer for one of several `fit` calls sharing a run directory (e.g. planar's nets):
  its rows carry `scope`, and resuming it touches only its own rows."""

  def __init__(self, run: "RunDir", scope: str):
    self.run, self.scope = run, scope

  def write(self, split, step, metrics, **extra):
    self.run.write(split, step, metrics, scope=self.scope, **extra)

  def write_epoch(self, record: dict) -> None:
    self.run.write_epoch(record | {"scope": self.scope})

  def resume(self, step: int) -> list[dict]:
    return self.run.resume(step, scope=self.scope)


class RunDir:
  """A run's output folder, and the metric writer that `fit` writes to.

  run.json      identity: run id, start time, resumes
  config.json   the run's configuration (compared on --resume)
  metrics.jsonl one JSON object per logged row (`split`, `step`, metrics)
  history.jsonl one record per epoch ({"epoch", "step", "train", "eval"}), so a resumed
                run's summary and plots cover the whole run
  summary.json  SPEC id -> final metrics (each with the run's precision), merged across calls
                to `update_summary`
  tb/           TensorBoard events (`track=("tensorboard",)`; needs tensorboardX)
  *.png         figures; checkpoints/ and model/ for saved states

  A lock (`.lock`, an flock the OS drops when its holder dies) keeps a second run out while
  this one is alive. A folder that holds a run is only reused with `resume` (same settings,
  see `RESUMABLE`) or `overwrite` (its contents are deleted first); `auto_resume` resumes
  when the folder holds a run and starts one when it does not (`resumed` says which).

  `track`: trackers that mirror the run (`dlcore.harness.track`: mlflow, wandb, tensorboard),
  fed from background threads; with trackers, `experiment` (its module) and the environment
  (versions, git commit, devices) go into run.json, where `sync` finds them.
  """

  def __init__(self, path: str, *, tensorboard: bool = False, console: tuple[str, ...] = (),
               config=None, resume: bool = False, overwrite: bool = False,
               allow_change: tuple[str, ...] = (), auto_resume: bool = False,
               track: tuple[str, ...] = (), tracking_uri: str | None = None,
               experiment: str | None = None):
    self.path = os.path.abspath(path)
    # Every summary entry records the run's precision (`--precision`), when it has one.
    self.precision = getattr(getattr(config, "common", None), "precision", None)
    try:
      os.makedirs(self.path, exist_ok=True)
    except OSError as e:
      raise RunDirError(f"cannot create run directory {self.path}: {e.strerror}") from None
    self._lock = self._acquire_lock()
    holds_run = any(os.path.exists(os.path.join(self.path, f))
                    for f in ("run.json", "config.json", "metrics.jsonl", "checkpoints"))
    if auto_resume:  # the same command starts the run and continues it after a requeue
      if overwrite:
        self._release()
        raise RunDirError("--auto-resume and --overwrite contradict each other; drop one")
      resume = holds_run
    self.resumed = resume
    if resume and not holds_run:
      self._release()
      raise RunDirError(f"--resume: {self.path} holds no run; check --workdir, or drop "
                        "--resume to start a new run there")
    if holds_run and not resume:
      if not overwrite:
        self._release()
        raise RunDirError(f"{self.path} already holds a run; continue it with --resume, start "
                          "it over with --overwrite (deletes it), or choose another --workdir")
      for name in os.listdir(self.path):
        if name != ".lock":
          target = os.path.join(self.path, name)
          shutil.rmtree(target) if os.path.isdir(target) else os.remove(target)
    if resume and config is not None:
      self._check_same_settings(config, allow_change)
    if resume:
      self._repair_rows()
    track = tuple(track) + (("tensorboard",) if tensorboard else ())
    environment = None
    if track:  # what trackers are sent; an untracked run.json stays as it was
      from dlcore.harness.track import environment as gather
      environment = gather()
    else:
      experiment = None
    self._write_identity(resumed=resume, experiment=experiment, environment=environment)
    if config is not None:
      self.write_config(config)
    writers = [JsonlWriter(os.path.join(self.path, "metrics.jsonl"))]
    if console:
      writers.append(ConsoleWriter(console))
    self._mirrors = []
    if track:
      from dlcore.harness import track as tracking
      uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")  # said in a warning
      info = tracking.RunInfo(self.path, self.run_id, os.path.basename(self.path),
                              experiment or "experiments", uri)
      self._mirrors = tracking.mirrors(track, info, _read_jsonl(self.file("metrics.jsonl")))
    self.writer = MultiWriter(writers + self._mirrors)

  # ---- identity and lock -----------------------------------------------------------------
  def _acquire_lock(self):
    f = open(os.path.join(self.path, ".lock"), "a+")
    try:
      fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
      f.seek(0)
      holder = f.read().strip() or "another process"
      f.close()
      if e.errno in (errno.EAGAIN, errno.EACCES):
        raise RunDirError(f"{self.path} is in use by a running run ({holder}); wait for it "
                          "to finish or choose another --workdir") from None
      raise
    f.seek(0)
    f.truncate()
    f.write(f"pid {os.getpid()}")
    f.flush()
    return f

  def _release(self) -> None:
    if self._lock is not None:
      fcntl.flock(self._lock, fcntl.LOCK_UN)
      self._lock.close()
      self._lock = None

  def _write_identity(self, *, resumed: bool, experiment: str | None = None,
                      environment: dict | None = None) -> None:
    path = os.path.join(self.path, "run.json")
    now = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    ident = {}
    if resumed and os.path.exists(path):
      try:
        ident = _read_json(path)
      except RunDirError:
        self._release()
        raise
    ident.setdefault("run_id", uuid.uuid4().hex[:12])
    ident.setdefault("started", now)
    if experiment:
      ident.setdefault("experiment", experiment)
    if environment:  # where the run started (a resume on other machines keeps the first)
      ident.setdefault("environment", environment)
    if resumed:
      ident["resumed"] = ident.get("resumed", []) + [now]
    files.write_json(path, ident, indent=2)
    self.run_id = ident["run_id"]

  def _check_same_settings(self, config, allow_change) -> None:
    path = os.path.join(self.path, "config.json")
    if not os.path.exists(path):
      return
    try:
      old = _flat(_read_json(path))
    except RunDirError:
      self._release()
      raise
    new = _flat(jsonable(config))
    for key, value in ADDED.items():  # a run saved before the setting existed
      if key in new:
        old.setdefault(key, value)
    allowed = set(allow_change)
    changed = [k for k in sorted(set(old) | set(new))
               if old.get(k) != new.get(k) and k not in RESUMABLE
               and k.rsplit(".", 1)[-1] not in allowed]
    if changed:
      self._release()
      diffs = ", ".join(f"{_flag(k)} {old.get(k)!r} -> {new.get(k)!r}" for k in changed)
      names = " ".join(k.rsplit(".", 1)[-1] for k in changed)
      raise RunDirError(f"cannot --resume {self.path} with other settings: {diffs}; use the "
                        f"saved values, or pass --allow-change {names} to change them on "
                        "purpose")

  def _repair_rows(self) -> None:
    """A run killed mid-line (SIGKILL) leaves a row cut short at the end of a .jsonl file;
    rows appended after it would be glued to it. Keep the whole rows only."""
    for name in ("metrics.jsonl", "history.jsonl"):
      path = os.path.join(self.path, name)
      if not os.path.exists(path) or os.path.getsize(path) == 0:
        continue
      with open(path, "rb") as f:
        f.seek(-1, os.SEEK_END)
        if f.read(1) == b"\n":
          continue
      _write_jsonl(path, _read_jsonl(path))

  # ---- files and metrics -----------------------------------------------------------------
  def file(self, *parts: str) -> str:
    p = os.path.join(self.path, *parts)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p

  def write_config(self, config) -> None:
    files.write_json(self.file("config.json"), jsonable(config), indent=2)

  def write(self, split: str, step: int, metrics: dict, **extra) -> None:
    self.writer.write(split, step, metrics, **extra)

  log = write  # older name

  def write_epoch(self, record: dict) -> None:
    with open(self.file("history.jsonl"), "a") as f:
      f.write(json.dumps(jsonable(record)) + "\n")

  def resume(self, step: int, *, scope: str | None = None) -> list[dict]:
    """Called by `fit` after restoring `step`: drops the rows a killed run wrote after it
    (of this scope), and returns the epoch records up to it."""
    def keep(row):
      return row.get("scope") != scope or row.get("step", 0) <= step

    for name in ("metrics.jsonl", "history.jsonl"):
      path = os.path.join(self.path, name)
      if os.path.exists(path):
        _write_jsonl(path, [r for r in _read_jsonl(path) if keep(r)])
    self._truncated()
    return _epoch_records(self.path, step, scope)

  def _truncated(self) -> None:
    """Tells the trackers' mirrors how many rows the folder holds after a resume dropped
    some: they are computed again, and not sent twice."""
    if self._mirrors:
      rows = len(_read_jsonl(os.path.join(self.path, "metrics.jsonl")))
      for m in self._mirrors:
        m.truncate(rows)

  def scoped(self, scope: str) -> _Scoped:
    return _Scoped(self, scope)

  def restart_rows(self) -> None:
    """A resumed run of an experiment that keeps no checkpoints starts over: the rows of
    the interrupted attempt are dropped, so every step is recorded once."""
    for name in ("metrics.jsonl", "history.jsonl"):
      path = os.path.join(self.path, name)
      if os.path.exists(path):
        _write_jsonl(path, [])
    self._truncated()

  def update_summary(self, entries: dict) -> dict:
    path = self.file("summary.json")
    summary = _read_json(path) if os.path.exists(path) else {}
    if self.precision is not None:
      entries = {k: {"precision": self.precision} | v if isinstance(v, dict) else v
                 for k, v in entries.items()}
    summary.update(jsonable(entries))
    # Where this process's time went so far (a resumed run: since it resumed).
    summary["timings"] = timing.report()
    files.write_json(path, summary, indent=2, sort_keys=True)
    return summary

  def close(self) -> None:
    self.writer.close()
    busy = [m for m in self._mirrors if m.sending()]
    if busy:  # a tracker still sending (the run stopped waiting): the folder stays locked
      import threading  # until it is done, so no resume or sync sends beside it

      def release_after():
        for m in busy:
          m.wait()
        self._release()
      threading.Thread(target=release_after, daemon=True).start()
    else:
      self._release()


class FollowerRun:
  """A run directory as processes 1..N-1 of a job see it: process 0 owns and writes the
  folder; these write nothing there. `file("checkpoints")` is the shared checkpoint folder
  (every process takes part in Orbax saves); any other file goes to a private scratch
  folder, removed on `close`, so experiment code runs unchanged. `resume` reads the run's
  history without rewriting it."""
  resumed = False  # set by start_run from process 0's decision

  def __init__(self, path: str):
    import tempfile
    self.path = os.path.abspath(path)
    self._scratch = tempfile.mkdtemp(prefix="dlcore-follower-")
    ident = os.path.join(self.path, "run.json")
    with open(ident) as f:
      self.run_id = json.load(f)["run_id"]
    self._summary: dict = {}

  def file(self, *parts: str) -> str:
    base = self.path if parts and parts[0] == "checkpoints" else self._scratch
    p = os.path.join(base, *parts)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p

  def write_config(self, config) -> None:
    pass

  def write(self, split: str, step: int, metrics: dict, **extra) -> None:
    pass

  log = write

  def write_epoch(self, record: dict) -> None:
    pass

  def resume(self, step: int, *, scope: str | None = None) -> list[dict]:
    return _epoch_records(self.path, step, scope)

  def scoped(self, scope: str) -> _Scoped:
    return _Scoped(self, scope)

  def restart_rows(self) -> None:
    pass

  def update_summary(self, entries: dict) -> dict:
    self._summary.update(jsonable(entries))
    return dict(self._summary)

  def close(self) -> None:
    shutil.rmtree(self._scratch, ignore_errors=True)


def read_metrics(path: str) -> list[dict]:
  """Rows of a run's metrics.jsonl (path to the run directory or the file)."""
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.jsonl")
  return _read_jsonl(path)


def start_run(cfg, name: str, *, console: tuple[str, ...] = (), checkpoints: bool = True):
  """Common experiment start: JAX's compilation cache (`jaxcache`), host devices, joining a
  job of several processes
  (`dlcore.distributed`), run directory (identity, lock, resume checks, config.json; with
  several processes only process 0 writes it, the others get a `FollowerRun`), Runner.
  `cfg.common` is a `dlcore.harness.cli.Common`. `checkpoints=False`: the experiment keeps
  none, so a resumed run starts over (its earlier rows dropped).
  Returns (RunDir, Runner)."""
  import jax

  from dlcore import distributed
  from dlcore.train.modes import Runner, set_host_devices

  from dlcore.harness import jaxcache

  common = cfg.common
  jaxcache.enable()  # a repeated or restarted run skips the compilations done before
  if common.devices:
    set_host_devices(common.devices)
  several = distributed.initialize(common.coordinator, common.num_processes, common.process_id)
  if several and common.mode != "sharded":
    raise ConfigError(f"--mode {common.mode} runs in one process, and this job has "
                      f"{jax.process_count()}; use --mode sharded (one program over every "
                      "process's devices)")
  path = common.workdir.format(name=name)

  def open_run() -> RunDir:
    from dlcore.harness import track
    return RunDir(path, tensorboard=common.tensorboard, console=console, config=cfg,
                  resume=common.resume, overwrite=common.overwrite,
                  allow_change=common.allow_change, auto_resume=common.auto_resume,
                  track=common.track, tracking_uri=common.tracking_uri,
                  experiment=track.experiment_of(cfg, name))

  if not several:
    run = open_run()
  elif distributed.is_primary():
    try:
      run = open_run()
    except Exception:
      distributed.publish(_RUN_KEY, "")  # the others stop; this process says why
      raise
    distributed.publish(_RUN_KEY, f"{int(run.resumed)}:{run.path}")
  else:
    ready = distributed.wait_for(_RUN_KEY, RUN_WAIT_S, what="open the run directory")
    if not ready:
      raise distributed.DistributedError(
          f"process {jax.process_index()}: process 0 could not open the run directory "
          "(its output says why)")
    resumed, _, ready = ready.partition(":")
    run = FollowerRun(ready)
    run.resumed = resumed == "1"
  # --auto-resume decided here whether this run continues: the experiment reads --resume.
  common.resume = run.resumed
  again = ""
  if run.resumed and not checkpoints:
    run.restart_rows()
    again = " (resumed: this experiment keeps no checkpoints, so it starts over)"
  runner = Runner(common.mode, devices=common.devices)
  procs = f" processes={jax.process_count()}" if several else ""
  if common.precision != "float32":
    procs += f" precision={common.precision}"
  say(f"[{name}] mode={common.mode} devices={runner.devices}{procs} run directory: {run.path}"
      + (again or (" (resumed)" if common.resume else "")))
  return run, runner


_RUN_KEY = "dlcore/run_dir"
RUN_WAIT_S = 120  # process 0 may be deleting an old run (--overwrite)

