"""Trackers (MLflow, Weights & Biases, TensorBoard) as mirrors of a run folder.

The run folder is the source of truth (metrics.jsonl, summary.json, figures); a tracker gets
a copy of it, sent from a background thread, so a tracker that is down, slow or refuses never
stops or slows training: it costs one warning line, and the run finishes with its folder
complete. Whatever did not reach a tracker is sent afterwards with

    python -m dlcore.harness.track sync RUN_DIR --track mlflow [--tracking-uri URI]

which is the same code, run in the foreground over the folder's files (also the way to send
a run from a machine without network).

A run sends: every option (flattened names) and dlcore/JAX/Flax versions, the git commit,
device kind and count as parameters; every metric row as `<split>/<metric>` at its step (and
`epoch`); with members (`--seeds`), the mean under the metric's name, `<metric>/std` (ddof=1,
as the summary) and `<metric>/seed_<s>`; at the end the summary's numbers as
`summary/<id>/<key>` and the figures, CSVs, config.json and summary.json as artifacts. With
`--sweep`, the command is a parent run and every point a child run (MLflow's nested runs; a
W&B group; a TensorBoard subfolder) with the point's values as parameters.

Continuity: the tracker's run is found again by the dlcore run id (a tag), kept with the
tracker's own ids in run.json under "tracking", so `--resume`, `--auto-resume` and `sync`
continue the same run. No step is sent twice: MLflow is asked which steps it holds; W&B and
TensorBoard keep the last step sent of every metric in run.json (a kill between a send and
that record can repeat one batch there). Only process 0 of a job writes the run folder, so
only it talks to a tracker.

Every call to a tracker has a timeout: MLflow's HTTP requests `CALL_TIMEOUT_S` seconds with
no retries (unless MLFLOW_HTTP_REQUEST_TIMEOUT / _MAX_RETRIES say otherwise), W&B's start
`CALL_TIMEOUT_S`; at the end of a run the mirror gets `CLOSE_WAIT_S` seconds to finish.
"""
from __future__ import annotations

import argparse
import dataclasses
import fcntl
import glob
import importlib.util
import itertools
import json
import logging
import math
import os
import queue
import subprocess
import sys
import threading
import time
from typing import Any, Mapping, Sequence

BACKENDS = ("mlflow", "wandb", "tensorboard")
_MODULE = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tensorboardX"}
_EXTRA = {"mlflow": "mlflow", "wandb": "wandb", "tensorboard": "tb"}
CALL_TIMEOUT_S = 10   # one request to a tracker
CLOSE_WAIT_S = 30     # the end of a run waits this long for its mirrors, then leaves
SEND_EVERY_S = 2.0    # a mirror wakes at most this often: fewer, larger requests off the loop
_BATCH = 1000         # metrics per request (MLflow's log_batch takes at most 1000)
_ARTIFACTS = ("*.png", "*.csv", "*.txt", "summary.json", "config.json")
_RUN_JSON = threading.Lock()  # mirrors of several trackers update run.json from their threads
# Trackers open (import their packages, start W&B's service) one at a time: two imports in
# threads at once raised "SystemError: AST constructor recursion depth mismatch" (CPython
# 3.11's ast module is not thread-safe: gh-106905).
_OPENING = threading.Lock()


def installed(module: str) -> bool:
  if module in sys.modules:
    return sys.modules[module] is not None
  return importlib.util.find_spec(module) is not None


def missing(names: Sequence[str]) -> str | None:
  """One line for the first tracker in `names` whose package is not installed, else None."""
  for name in names:
    if not installed(_MODULE[name]):
      what = {"mlflow": "MLflow", "wandb": "wandb", "tensorboard": "tensorboardX"}[name]
      return (f"--track {name} needs {what}, which is not installed; install it with: "
              f"pip install \"dlcore[{_EXTRA[name]}]\"")
  return None


# ---- what a run sends ------------------------------------------------------------------------
@dataclasses.dataclass
class Point:
  key: str
  step: int
  value: float
  time_ms: int


def params_of(config: Mapping, run_json: Mapping) -> dict[str, str]:
  """Every option under its command-line name (the last part of its path, the whole path
  where two groups share a name), and the run's environment from run.json."""
  from dlcore.harness.rundir import _flat
  flat = _flat(dict(config))
  leaves = [k.rsplit(".", 1)[-1] for k in flat]
  out = {}
  for k, v in flat.items():
    leaf = k.rsplit(".", 1)[-1]
    name = leaf if leaves.count(leaf) == 1 else k
    out[name] = json.dumps(v) if isinstance(v, (list, dict)) else str(v)
  for k, v in run_json.get("environment", {}).items():
    out[k] = str(v)
  out["run_id"] = str(run_json.get("run_id"))
  return out


def environment() -> dict:
  """Versions, git commit and devices of the running process, for run.json."""
  import flax
  import jax

  import dlcore
  try:
    from importlib.metadata import version
    ours = version("dlcore")
  except Exception:  # noqa: BLE001 - run from a checkout that was never installed
    ours = "unknown"
  env = {"dlcore.version": ours, "jax.version": jax.__version__,
         "flax.version": flax.__version__}
  try:
    out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                         timeout=5, cwd=os.path.dirname(os.path.abspath(dlcore.__file__)))
    if out.returncode == 0:
      env["git.commit"] = out.stdout.strip()
  except (OSError, subprocess.TimeoutExpired):
    pass
  devices = jax.devices()
  env["device.kind"] = devices[0].device_kind
  env["device.count"] = len(devices)
  return env


_SKIP = {"split", "step", "epoch", "time", "scope", "per_seed"}


def _number(v) -> float | None:
  if isinstance(v, bool) or not isinstance(v, (int, float)):
    if isinstance(v, str) and v in ("nan", "inf", "-inf"):
      return float(v)
    return None
  return float(v)


def _std(values: Sequence[float]) -> float:
  n = len(values)
  if n < 2:
    return 0.0
  mean = sum(values) / n
  return math.sqrt(sum((v - mean) ** 2 for v in values) / (n - 1))


def _sweep_grid(specs: Sequence[str]) -> dict[str, list[str]]:
  grid = {}
  for spec in specs:
    name, _, values = spec.partition("=")
    grid[name.strip().replace("-", "_")] = [v.strip() for v in values.split(",")]
  return grid


def _label(value: str) -> str:
  try:
    return format(float(value), ".12g")
  except ValueError:
    return value


@dataclasses.dataclass
class Layout:
  """How rows of metrics.jsonl become tracker metrics: members and sweep points."""
  seed: int = 0
  sweep: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  @classmethod
  def of(cls, config: Mapping) -> "Layout":
    common = config.get("common", {}) if isinstance(config, Mapping) else {}
    return cls(int(common.get("seed", 0) or 0), _sweep_grid(common.get("sweep", []) or []))

  def split_scope(self, scope: str | None) -> tuple[str, dict[str, str]]:
    """(prefix for the metric keys, the sweep's shape values the scope names)."""
    if not scope:
      return "", {}
    static, rest = {}, []
    for token in scope.replace(",", " ").split():  # "sweep hidden=64,batch_size=32"
      name, eq, value = token.partition("=")
      if eq and name in self.sweep:
        static[name] = _label(value)
      elif token != "sweep" or not self.sweep:
        rest.append(token)
    return ("/".join(rest) + "/" if rest else ""), static

  def points(self, row: Mapping) -> list[tuple[str | None, Point]]:
    """(child run label or None for the run itself, metric point) of one row."""
    step = int(row.get("step", 0))
    t = round(float(row.get("time", time.time())) * 1000)
    prefix, static = self.split_scope(row.get("scope"))
    split = row.get("split", "train")
    per = row.get("per_seed") or {}
    scalars = {k: x for k, v in row.items() if k not in _SKIP
               and (x := _number(v)) is not None}
    out: list[tuple[str | None, Point]] = []
    if not self.sweep:
      if "epoch" in row and split == "train":  # (an eval row shares its step)
        out.append((None, Point(f"{prefix}epoch", step, float(row["epoch"]), t)))
      for k, v in scalars.items():
        out.append((None, Point(f"{prefix}{split}/{k}", step, v, t)))
        values = [_number(x) for x in per.get(k, [])]
        if len(values) > 1 and None not in values:
          out.append((None, Point(f"{prefix}{split}/{k}/std", step, _std(values), t)))
          out += [(None, Point(f"{prefix}{split}/{k}/seed_{self.seed + i}", step, x, t))
                  for i, x in enumerate(values)]
      return out
    inner = {n: v for n, v in self.sweep.items() if n not in static}
    grid = [dict(zip(inner, vals)) for vals in itertools.product(*inner.values())]
    labels = [" ".join(f"{name}={_label(v)}" for name, v in {**static, **point}.items())
              for point in grid]
    if "epoch" in row and split == "train":
      out += [(label, Point(f"{prefix}epoch", step, float(row["epoch"]), t))
              for label in labels]
    for k in scalars:
      values = [_number(x) for x in per.get(k, [scalars[k]])]
      if None in values or not values or len(values) % len(grid):
        continue
      n = len(values) // len(grid)
      for p, label in enumerate(labels):
        part = values[p * n:(p + 1) * n]
        key = f"{prefix}{split}/{k}"
        out.append((label, Point(key, step, sum(part) / n, t)))
        if n > 1:
          out.append((label, Point(f"{key}/std", step, _std(part), t)))
          out += [(label, Point(f"{key}/seed_{self.seed + i}", step, x, t))
                  for i, x in enumerate(part)]
    return out

  def point_params(self, label: str) -> dict[str, str]:
    return dict(token.split("=", 1) for token in label.split())


def summary_points(summary: Mapping, step: int) -> list[Point]:
  """summary.json's numbers (one level of keys below each entry) as final metrics."""
  t = int(time.time() * 1000)
  out = []
  for entry, values in summary.items():
    if entry == "timings" or not isinstance(values, Mapping):
      continue
    for k, v in values.items():
      x = _number(v)
      if x is not None and math.isfinite(x):
        out.append(Point(f"summary/{entry}/{k}", step, x, t))
  return out


def read_rows(path: str) -> list[dict]:
  from dlcore.harness.rundir import _read_jsonl
  return _read_jsonl(path)


def _read_json(path: str) -> dict:
  try:
    with open(path) as f:
      value = json.load(f)
    return value if isinstance(value, dict) else {}
  except (OSError, ValueError):
    return {}


# ---- backends --------------------------------------------------------------------------------
class _Backend:
  """One tracker: a run (and child runs for sweep points) it writes to."""
  name = ""

  def open(self, info: "RunInfo", saved: dict) -> dict:
    """Connects and finds or creates the run; returns what run.json keeps for next time."""
    raise NotImplementedError

  def rows_held(self) -> dict[str | None, int] | None:
    """How many of the folder's rows each run (None: the run itself; a child's label) holds;
    None: the tracker cannot be asked (run.json keeps the counts)."""
    return None

  def destination(self) -> str:
    """Where this tracker writes: counts kept in run.json hold only for the same place."""
    return ""

  def child(self, label: str, params: dict[str, str]) -> None:
    raise NotImplementedError

  def params(self, params: dict[str, str]) -> None:
    raise NotImplementedError

  def metrics(self, child: str | None, points: list[Point], rows: int) -> None:
    """Sends `points` to the run (`child`); afterwards it holds the folder's first `rows`
    rows (MLflow records that in the same request)."""
    raise NotImplementedError

  def artifacts(self, paths: list[str]) -> None:
    pass

  def finish(self, status: str) -> None:
    pass


class MlflowBackend(_Backend):
  name = "mlflow"

  def open(self, info, saved):
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_TIMEOUT", str(CALL_TIMEOUT_S))
    os.environ.setdefault("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    os.environ.setdefault("MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT", "true")
    for name in ("mlflow", "urllib3", "alembic"):
      logging.getLogger(name).setLevel(logging.CRITICAL)
    from mlflow import MlflowClient
    self.info = info
    self.client = MlflowClient(tracking_uri=info.tracking_uri)
    exp = self.client.get_experiment_by_name(info.experiment)
    self.experiment_id = (exp.experiment_id if exp is not None
                          else self.client.create_experiment(info.experiment))
    runs = self.client.search_runs(
        [self.experiment_id], filter_string=f"tags.`dlcore.run_id` = '{info.run_id}'",
        max_results=10000)
    self.children = {}
    self.run_id = None
    for r in runs:
      point = r.data.tags.get("dlcore.point")
      if point is None:
        self.run_id = r.info.run_id
      else:
        self.children[point] = r.info.run_id
    if self.run_id is None:
      self.run_id = self.client.create_run(
          self.experiment_id, run_name=info.name,
          tags={"dlcore.run_id": info.run_id, "dlcore.run_dir": info.path}).info.run_id
    elif self.client.get_run(self.run_id).info.status != "RUNNING":
      self.client.update_run(self.run_id, status="RUNNING")
    return {"run_id": self.run_id, "experiment_id": self.experiment_id,
            "tracking_uri": self.client.tracking_uri}

  def rows_held(self):
    return {child: int(self.client.get_run(run_id).data.tags.get("dlcore.rows", 0))
            for child, run_id in [(None, self.run_id), *self.children.items()]}

  def child(self, label, params):
    if label not in self.children:
      self.children[label] = self.client.create_run(
          self.experiment_id, run_name=f"{self.info.name} {label}",
          tags={"dlcore.run_id": self.info.run_id, "dlcore.point": label,
                "mlflow.parentRunId": self.run_id}).info.run_id
    self._params(self.children[label], params)

  def params(self, params):
    self._params(self.run_id, params)

  def _params(self, run_id, params):
    from mlflow.entities import Param, RunTag
    held = self.client.get_run(run_id).data.params
    new = [Param(k[:250], v[:6000]) for k, v in params.items() if k[:250] not in held]
    # An option changed on --resume (--allow-change): MLflow's parameters are immutable.
    changed = [RunTag(f"resumed_with.{k}"[:250], v[:5000]) for k, v in params.items()
               if k[:250] in held and held[k[:250]] != v[:6000]]
    for i in range(0, max(len(new), len(changed)), 100):
      self.client.log_batch(run_id, params=new[i:i + 100], tags=changed[i:i + 100])

  def metrics(self, child, points, rows):
    from mlflow.entities import Metric, RunTag
    run_id = self.run_id if child is None else self.children[child]
    ms = [Metric(p.key, p.value, p.time_ms, p.step) for p in points]
    # One request holds at most 1000 entities: 999 metrics and the count of rows held, which
    # is stored with the last of them (a longer list, rare, is sent in pieces before it).
    last = max(0, len(ms) - 999)
    for i in range(0, last, 1000):
      self.client.log_batch(run_id, metrics=ms[i:min(i + 1000, last)])
    self.client.log_batch(run_id, metrics=ms[last:], tags=[RunTag("dlcore.rows", str(rows))])

  def artifacts(self, paths):
    for path in paths:
      self.client.log_artifact(self.run_id, path)

  def finish(self, status):
    for run_id in [*self.children.values(), self.run_id]:
      self.client.set_terminated(run_id, status)


def _wandb_key() -> bool:
  """Whether W&B can start without asking for a key: offline or disabled, a key in the
  environment, or one saved by `wandb login` (~/.netrc)."""
  if os.environ.get("WANDB_MODE", "").lower() in ("offline", "dryrun", "disabled"):
    return True
  if os.environ.get("WANDB_API_KEY"):
    return True
  import netrc
  host = os.environ.get("WANDB_BASE_URL", "https://api.wandb.ai").split("//")[-1].split("/")[0]
  try:
    return netrc.netrc(os.environ.get("NETRC")).authenticators(host) is not None
  except (OSError, netrc.NetrcParseError):
    return False


class WandbBackend(_Backend):
  name = "wandb"

  def open(self, info, saved):
    os.environ.setdefault("WANDB_SILENT", "true")
    if not _wandb_key():  # online without a key W&B would ask for one, in this thread
      raise TrackerError("no W&B API key (run `wandb login` or set WANDB_API_KEY; "
                         "WANDB_MODE=offline records the run locally)")
    import wandb
    self.wandb, self.info = wandb, info
    self.project = os.environ.get("WANDB_PROJECT") or "dlcore"
    self.runs = {None: self._init(info.run_id, info.name, group=None)}
    self.runs[None].define_metric("*", step_metric="step")
    return {"run_id": info.run_id, "project": self.project}

  def _init(self, run_id, name, group):
    return self.wandb.init(
        project=self.project, id=run_id, name=name, group=group, resume="allow",
        dir=os.path.join(self.info.path), job_type="train", reinit="create_new",
        settings=self.wandb.Settings(init_timeout=CALL_TIMEOUT_S, silent=True,
                                     console="off", save_code=False))

  def child(self, label, params):
    if label not in self.runs:
      import hashlib
      digest = hashlib.sha1(label.encode()).hexdigest()[:12]  # ids: unique, short, stable
      with _OPENING:
        run = self._init(f"{self.info.run_id}-{digest}", f"{self.info.name} {label}",
                         group=self.info.name)
      run.define_metric("*", step_metric="step")
      self.runs[label] = run
    self.runs[label].config.update(params, allow_val_change=True)

  def params(self, params):
    self.runs[None].config.update(params, allow_val_change=True)

  def destination(self):
    return f"{os.environ.get('WANDB_MODE', 'online').lower()}:{self.project}"

  def metrics(self, child, points, rows):
    run = self.runs[child]
    for step, group in itertools.groupby(points, key=lambda p: p.step):
      run.log({"step": step, **{p.key: p.value for p in group}})

  def artifacts(self, paths):
    for path in paths:
      self.runs[None].save(path, base_path=os.path.dirname(path), policy="now")

  def finish(self, status):
    code = 0 if status == "FINISHED" else 1
    for run in self.runs.values():
      run.finish(exit_code=code)


class TensorBoardBackend(_Backend):
  name = "tensorboard"

  def open(self, info, saved):
    from tensorboardX import SummaryWriter
    self.info, self.logdir = info, os.path.join(info.path, "tb")
    self.writers = {None: SummaryWriter(self.logdir)}
    return {"logdir": self.logdir}

  def child(self, label, params):
    if label not in self.writers:
      from tensorboardX import SummaryWriter
      safe = "".join(ch if ch.isalnum() or ch in "=.-_" else "_" for ch in label)
      self.writers[label] = SummaryWriter(os.path.join(self.logdir, safe))
      self._text(self.writers[label], params)

  def params(self, params):
    self._text(self.writers[None], params)

  @staticmethod
  def _text(writer, params):
    rows = "\n".join(f"| {k} | {v} |" for k, v in sorted(params.items()))
    writer.add_text("params", "| option | value |\n|---|---|\n" + rows, 0)

  def destination(self):
    return self.logdir

  def metrics(self, child, points, rows):
    w = self.writers[child]
    for p in points:
      w.add_scalar(p.key, p.value, p.step, walltime=p.time_ms / 1000)
    w.flush()  # on disk before run.json counts the rows as held

  def finish(self, status):
    for w in self.writers.values():
      w.close()


_BACKEND = {"mlflow": MlflowBackend, "wandb": WandbBackend, "tensorboard": TensorBoardBackend}


# ---- the mirror ------------------------------------------------------------------------------
@dataclasses.dataclass
class RunInfo:
  path: str
  run_id: str
  name: str          # the run's name in the tracker: the run folder's
  experiment: str    # MLflow's experiment / the module: experiments.vae
  tracking_uri: str | None = None


def _say(line: str) -> None:
  from dlcore.harness.writers import say
  say(line)


def _yield_cpu() -> None:
  """The mirror's thread (and the processes it starts: W&B's service) at the lowest CPU
  priority, so that on a busy machine it takes what the training leaves (Linux: a thread's
  own nice value)."""
  try:
    os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
  except (AttributeError, OSError):
    pass


class TrackerError(RuntimeError):
  """A tracker dlcore refuses to start; the message says why and what to do."""


def _reason(e: Exception) -> str:
  """A tracker's failure in a few words: the HTTP clients' messages run to pages."""
  text = " ".join(str(e).split())
  if isinstance(e, TrackerError):
    return text
  where = f" ({type(e).__name__})"
  if "timed out" in text.lower() or "timeout" in text.lower():
    return "no answer in time (timed out)" + where
  if "refused" in text.lower():
    return "connection refused" + where
  if "name or service not known" in text.lower() or "nodename nor servname" in text.lower():
    return "unknown host" + where
  return f"{type(e).__name__}: {text[:160]}" if text else type(e).__name__


class Mirror:
  """A writer (`write(split, step, metrics, **extra)`, `close`) that sends a run folder's
  rows to one tracker from a background thread (`background=False`: in the caller's thread,
  as `sync` does). `rows`: the rows the folder already holds (a resumed run's), sent first.

  Each tracker run (the run, and a child per sweep point) holds the first N rows of the
  folder's metrics.jsonl (MLflow: its tag `dlcore.rows`, written in the same request as the
  metrics; others: run.json, for the same destination). A resume that drops rows
  after its checkpoint (`truncate`) computes them again, the same rows in the same order, so
  rows at positions the tracker already holds are not sent again: every row once, also when
  several `fit`s of one run start again at step 0."""

  def __init__(self, backend: str, info: RunInfo, rows: Sequence[dict] = (), *,
               background: bool = True):
    self.backend_name, self.info = backend, info
    self.backend = _BACKEND[backend]()
    self.layout = Layout.of(_read_json(os.path.join(info.path, "config.json")))
    self.failed: str | None = None
    self.held: dict[str | None, int] = {}  # run (None) or child -> the folder rows it holds
    self.position = 0      # the folder position of the next row this mirror sees
    self._children: set[str] = set()
    self._last_step = 0
    self._queue: queue.Queue = queue.Queue()
    self._queue.put(("rows", list(rows)))
    self._thread = None
    self._ended = False
    if background:
      _live.add(self)
      self._thread = threading.Thread(target=self._work, name=f"dlcore-track-{backend}",
                                      daemon=True)
      self._thread.start()

  # the writer interface ----------------------------------------------------------------------
  def write(self, split: str, step: int, metrics: Mapping[str, Any], **extra: Any) -> None:
    if self.failed is None:
      self._queue.put(("row", {"split": split, "step": int(step), **extra, **dict(metrics),
                               "time": extra.get("time", round(time.time(), 3))}))

  def truncate(self, rows: int) -> None:
    """The folder now holds `rows` rows (a resume dropped those after its checkpoint)."""
    self._queue.put(("truncate", rows))

  def close(self, status: str = "FINISHED", wait: float = CLOSE_WAIT_S) -> bool:
    """Sends the artifacts and summary, ends the tracker's run; waits at most `wait` seconds.
    True when everything was sent."""
    self.end(status)
    return self.join(wait)

  def end(self, status: str = "FINISHED") -> None:
    if not self._ended:
      self._ended = True
      self._queue.put(("close", status))
      _live.discard(self)

  def sending(self) -> bool:
    return self._thread is not None and self._thread.is_alive()

  def wait(self) -> None:
    if self._thread is not None:
      self._thread.join()

  def join(self, wait: float = CLOSE_WAIT_S) -> bool:
    if self._thread is None:
      self._work()
    else:
      wait = max(wait, 0.0)
      self._thread.join(wait)
      if self._thread.is_alive():
        self._warn(f"still sending after the run ended (waited {wait:.0f} s)")
        return False
    return self.failed is None

  # the worker -------------------------------------------------------------------------------
  def _work(self) -> None:
    if self._thread is not None:
      _yield_cpu()
    try:
      self._open()
      last = 0.0
      while True:
        kind, item = self._queue.get()
        if kind != "close" and self._thread is not None:
          time.sleep(max(0.0, last + SEND_EVERY_S - time.monotonic()))
        last = time.monotonic()
        events = [(kind, item)]
        while kind != "close":  # what else is waiting goes in the same requests
          try:
            kind, item = self._queue.get_nowait()
          except queue.Empty:
            break
          events.append((kind, item))
        batch: list[tuple[int, dict]] = []
        for kind, item in events:
          if kind in ("row", "rows"):
            for row in ([item] if kind == "row" else item):
              batch.append((self.position, row))
              self.position += 1
              self._last_step = max(self._last_step, int(row.get("step", 0)))
          elif kind == "truncate":
            self._send(batch)
            batch = []
            self.position = item
          else:
            self._send(batch)
            self._finish(item)
            return
        self._send(batch)
    except BaseException as e:  # noqa: BLE001 - a tracker never stops a run (nor its thread)
      self._warn(_reason(e))

  def _warn(self, why: str) -> None:
    if self.failed is None:
      self.failed = why
      print(f"warning: {self.backend_name}: {why}; the run goes on and its folder is "
            f"complete; send it later with: python -m dlcore.harness.track sync "
            f"{self.info.path} --track {self.backend_name}" + (
                f" --tracking-uri {self.info.tracking_uri}"
                if self.backend_name == "mlflow" and self.info.tracking_uri else ""),
            file=sys.stderr, flush=True)

  def _open(self) -> None:
    if getattr(self, "_state", None) is not None:
      return
    run_json = _read_json(os.path.join(self.info.path, "run.json"))
    saved = run_json.get("tracking", {}).get(self.backend_name, {})
    with _OPENING:
      state = self.backend.open(self.info, saved)
    held = self.backend.rows_held()
    same = saved.get("destination", "") == self.backend.destination()
    if held is None:  # counts from run.json, when they are of the same place
      held = {(k or None): int(v) for k, v in (saved.get("rows", {}) if same else {}).items()}
    self.held = held
    self._summary_sent = dict(saved.get("summary", {})) if same else {}
    self._state = state | {"destination": self.backend.destination()}
    self._remember()
    self._params = params_of(_read_json(os.path.join(self.info.path, "config.json")), run_json)
    self.backend.params(self._params)

  def _remember(self) -> None:
    """The tracker's ids, the rows it holds and the summary numbers sent, in run.json."""
    state = dict(self._state) | {"rows": {k or "": v for k, v in self.held.items()},
                                 "summary": self._summary_sent}
    from dlcore import files
    with _RUN_JSON:
      path = os.path.join(self.info.path, "run.json")
      ident = _read_json(path)
      if not ident:
        return
      ident.setdefault("tracking", {})[self.backend_name] = state
      files.write_json(path, ident, indent=2)

  def _send(self, rows: list[tuple[int, dict]]) -> None:
    """Sends the rows (folder position, row) that each run lacks, in requests of at most
    999 metrics per run, each recording the rows its run then holds."""
    if not rows:
      return
    from dlcore.harness.writers import jsonable
    pending: dict[str | None, list[Point]] = {}
    end = rows[0][0]
    for pos, row in rows:
      points: dict[str | None, list[Point]] = {}
      for child, p in self.layout.points(jsonable(row)):
        if pos >= self.held.get(child, 0):
          points.setdefault(child, []).append(p)
      if any(len(pending.get(c, [])) + len(ps) > 999 for c, ps in points.items()):
        self._flush(pending, end)
        pending = {}
      for child, ps in points.items():
        pending.setdefault(child, []).extend(ps)
      end = pos + 1
    self._flush(pending, end)

  def _flush(self, pending: dict[str | None, list[Point]], end: int) -> None:
    """Each run gets its points and the news that it holds the first `end` rows."""
    for child, points in pending.items():
      if child is not None and child not in self._children:
        self.backend.child(child, self._params | self.layout.point_params(child))
        self._children.add(child)
      self.backend.metrics(child, points, end)
      self.held[child] = end
    if pending:
      self._remember()

  def _finish(self, status: str) -> None:
    summary = _read_json(os.path.join(self.info.path, "summary.json"))
    points = [p for p in summary_points(summary, self._last_step)
              if self._summary_sent.get(p.key) != p.value]
    if points:
      self.backend.metrics(None, points, self.held.get(None, 0))
      self._summary_sent |= {p.key: p.value for p in points}
      self._remember()
    paths = sorted({p for pattern in _ARTIFACTS
                    for p in glob.glob(os.path.join(self.info.path, pattern))})
    self.backend.artifacts(paths)
    self.backend.finish(status)


_live: set = set()  # mirrors of runs not closed yet (a run that stops on an error)


def close_all(status: str, wait: float = 5.0) -> None:
  """Ends the mirrors of runs that stopped without closing (an error, a SIGTERM): their
  trackers' runs end with `status` (FAILED, KILLED), waiting at most `wait` seconds in all."""
  live = list(_live)
  for m in live:
    m.end(status)
  deadline = time.monotonic() + wait
  for m in live:
    m.join(deadline - time.monotonic())


def experiment_of(cfg, name: str) -> str:
  """The experiment's module (`experiments.vae`), also when run as `python -m`."""
  from dlcore.harness.cli import module_of
  return module_of(type(cfg)) or f"experiments.{name}"


def mirrors(names: Sequence[str], info: RunInfo, rows: Sequence[dict]) -> list[Mirror]:
  return [Mirror(n, info, rows) for n in dict.fromkeys(names)]


# ---- python -m dlcore.harness.track sync -------------------------------------------------
class SyncError(ValueError):
  """A run folder or tracker that `sync` cannot use; the message names the fix."""


def sync(run_dir: str, names: Sequence[str], tracking_uri: str | None = None,
         experiment: str | None = None) -> dict[str, bool]:
  """Sends a run folder (finished, stopped or recorded offline) to the trackers `names`:
  what they miss of its rows, its summary and artifacts. {tracker: everything sent}."""
  path = os.path.abspath(run_dir)
  ident = _read_json(os.path.join(path, "run.json"))
  if not ident.get("run_id"):
    raise SyncError(f"{path} holds no dlcore run (no run.json); pass a run folder")
  if (why := missing(names)) is not None:
    raise SyncError(why)
  lock = open(os.path.join(path, ".lock"), "a+")
  try:
    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
  except OSError:
    lock.close()
    raise SyncError(f"{path} is in use by a running run; it sends its own rows, run sync "
                    "after it ends") from None
  try:
    experiment = experiment or ident.get("experiment")
    if not experiment:
      raise SyncError(f"{path}/run.json names no experiment (a run from before tracking); "
                      "pass --experiment experiments.NAME")
    done = {}
    for name in dict.fromkeys(names):
      uri = (tracking_uri or ident.get("tracking", {}).get(name, {}).get("tracking_uri")
             or os.environ.get("MLFLOW_TRACKING_URI"))
      info = RunInfo(path, ident["run_id"], os.path.basename(path), experiment, uri)
      m = Mirror(name, info, read_rows(os.path.join(path, "metrics.jsonl")),
                 background=False)
      done[name] = m.close()
    return done
  finally:
    fcntl.flock(lock, fcntl.LOCK_UN)
    lock.close()


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m dlcore.harness.track",
                              description=__doc__.split("\n\n")[0])
  sub = p.add_subparsers(dest="command", required=True)
  s = sub.add_parser("sync", help="send a run folder to trackers (what they miss of it)")
  s.add_argument("run_dir", help="a run folder (its run.json, metrics.jsonl, summary.json)")
  s.add_argument("--track", nargs="+", choices=BACKENDS, required=True,
                 help="trackers to send to")
  s.add_argument("--tracking-uri", default=None,
                 help="MLflow's server (default: the run's, else MLFLOW_TRACKING_URI)")
  s.add_argument("--experiment", default=None,
                 help="MLflow's experiment (default: the run's module, from run.json)")
  args = p.parse_args(argv)
  try:
    done = sync(args.run_dir, args.track, args.tracking_uri, args.experiment)
  except SyncError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  for name, ok in done.items():
    print(f"{name}: {'sent' if ok else 'incomplete (see the warning above)'}")
  return 0 if all(done.values()) else 1


if __name__ == "__main__":
  sys.exit(main())
