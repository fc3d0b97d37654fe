"""`fit`: epochs of batches through a compiled step, with evaluation, metric writing, a
progress bar, periodic checkpoints, resume, and a guard that stops on a NaN/inf loss.

The engine knows nothing of run directories or consoles: metrics leave through a
`MetricWriter` (anything with `write(split, step, metrics, **extra)`); dlcore's harness
provides JSON-lines, console and TensorBoard writers.

`fit` is the loop; each job around the step is a piece of its own: `_Steps` (the state and
the compiled step, the replay up to a resume point), `_MetricLog` (the step metrics,
fetched and written once per log interval, the NaN guard), `_Saves` (periodic, stop and
final checkpoints, every saved state finite), `_Records` (each epoch's record: means,
evaluation, writing, the callback), `_restore` (resume) and `_epoch_evaluation` (the
evaluators due each epoch). Each piece's time is its own section of `dlcore.timing`.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from dlcore import data as dldata
from dlcore import distributed, precision, preemption, timing
from dlcore.checkpoint import CheckpointError, Checkpointer
from dlcore.train.modes import Runner
from dlcore.train.steps import Gathered

# evaluator(host_state, key) -> {metric: float}. `key` is the same at every evaluation of a
# run (fold_in(PRNGKey(eval_seed), evaluator index)), so sampled metrics compare across epochs.
Evaluator = Callable[[Any, jax.Array], Mapping[str, float]]


class MetricWriter(Protocol):
  def write(self, split: str, step: int, metrics: Mapping[str, Any], **extra: Any) -> None:
    ...


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss or state; the last good checkpoint is kept."""


def all_finite(tree) -> bool:
  """Whether every floating-point leaf of `tree` (params, optimizer state, ...) is finite."""
  leaves = [x for x in jax.tree.leaves(tree)
            if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.inexact)]
  if all(_on_host(x) for x in leaves):
    # Read where the arrays are: a program for the check cost ~0.3 s of compilation per
    # run (cold) to save microseconds per checkpoint.
    return all(bool(np.isfinite(np.asarray(x)).all()) for x in leaves)
  return bool(_all_finite(leaves))


def _on_host(x) -> bool:
  """Whether numpy can read `x` without a program: a host array, or a CPU array this
  process holds whole (spread over several CPU devices, numpy gathers a copy)."""
  return isinstance(x, (np.ndarray, np.generic)) or (
      isinstance(x, jax.Array) and x.is_fully_addressable
      and all(d.platform == "cpu" for d in x.devices()))


@jax.jit
def _all_finite(leaves):  # on accelerators (and arrays spread over processes)
  # One program for the whole state: op by op it compiled two per leaf shape (~0.5 s cold).
  return jnp.all(jnp.stack([jnp.isfinite(x).all() for x in leaves]))


def step_of(state) -> int:
  """The state's step; a vmapped ensemble carries one counter per member, all equal."""
  return int(np.ravel(jax.device_get(state.step))[0])


def fetch(tree):
  """Host copies of `tree`'s arrays, as `jax.device_get` gives them. On the CPU the arrays
  are read where they are (no transfer to start): 4x faster for the thousands of metric
  scalars a run fetches."""
  if jax.default_backend() != "cpu":
    return jax.device_get(tree)
  return jax.tree.map(np.asarray, tree)


def _row_means(rows: list[dict], k: str):
  """Each row's mean of metric `k`; a scalar is its own mean (np.mean of one value is that
  value, in its dtype), which skips a NumPy call per row."""
  values = [r[k] for r in rows]
  if all(np.ndim(v) == 0 for v in values):
    return np.asarray(values)
  return [np.mean(v) for v in values]


def host_mean(rows: list[dict]) -> dict:
  """Mean of each metric over the rows; weighted by a "count" metric when there is one.
  Rows of float16 steps (with "skipped") give the means over the applied steps
  (`dlcore.precision.applied_means`) and the fraction of steps skipped."""
  rows = fetch(rows)
  if "count" in rows[0]:
    # float16: a skipped step's metrics, its count included, are zero, so the weights leave
    # it out; "skipped" and "loss_scale" are per step, not per example.
    per_step = [k for k in ("skipped", "loss_scale") if k in rows[0]]
    w = np.array([float(np.sum(r["count"])) for r in rows])
    total = w.sum()
    out = {k: float(np.dot(_row_means(rows, k), w) / total) if total > 0
           else float("nan")  # every step skipped: nothing measured
           for k in rows[0] if k != "count" and k not in per_step}
    out |= {k: float(np.mean(_row_means(rows, k))) for k in per_step}
    return out | {"count": int(total)}
  return precision.applied_means(
      {k: float(np.mean(_row_means(rows, k))) for k in rows[0]})


STEPS = "training steps"  # the timing section of the steps themselves (dispatch and wait)


def _wait(tree) -> None:
  """Waits for the steps in flight that compute `tree` (their time is the steps')."""
  with timing.section(STEPS):
    jax.block_until_ready(tree)


def _timed(iterable: Iterable, name: str):
  """`iterable`'s items, the time to produce each counted for timing section `name`."""
  iterator = iter(iterable)
  while True:
    with timing.section(name):
      item = next(iterator, _END)
    if item is _END:
      return
    yield item


_END = object()


def batch_evaluator(eval_step, batches: Callable[[], Iterable], *,
                    uses_key: bool = False) -> Evaluator:
  """An evaluator from a per-batch `eval_step(state, batch[, key]) -> metrics` (e.g.
  `runner.compile_eval(make_eval_step(...))`): the metrics' mean over `batches()`, exact
  when the step reports a "count". With `uses_key`, batch i gets `fold_in(key, i)`."""

  def evaluate(state, key):
    if uses_key:
      rows = [eval_step(state, b, jax.random.fold_in(key, i)) for i, b in enumerate(batches())]
    else:
      rows = [eval_step(state, b) for b in batches()]
    return host_mean(rows)

  return evaluate


def run_evaluators(evaluators: Sequence[Evaluator], state, eval_seed: int = 0) -> dict:
  """All of `evaluators` on `state` with the keys `fit` gives them: evaluator i gets
  fold_in(PRNGKey(eval_seed), i). A stacked member state (`dlcore.train.members`) is
  evaluated member by member, member m with `eval_seed[m]` (a sequence) or `eval_seed`, and
  gives the mean over members with their values under "per_seed"."""
  if np.ndim(getattr(state, "step", 0)) != 0:
    return _member_evaluations(evaluators, state, eval_seed)
  out: dict = {}
  for i, ev in enumerate(evaluators):
    out |= dict(ev(state, jax.random.fold_in(jax.random.PRNGKey(eval_seed), i)))
  return out


def _member_evaluations(evaluators, state, eval_seed) -> dict:
  """Evaluator i on each member m with key fold_in(PRNGKey(eval_seed[m]), i); one marked
  `stacked = True` is called once with the stacked state and returns each metric as a list
  over the members (e.g. a vmapped evaluation of each member's own test set)."""
  from dlcore.train import members
  n = members.num_members(state)
  seeds = list(eval_seed) if np.ndim(eval_seed) else [eval_seed] * n
  scores: list[dict] = [{} for _ in range(n)]
  for i, ev in enumerate(evaluators):
    if getattr(ev, "stacked", False):
      out = dict(ev(state, jax.random.PRNGKey(0)))
      for m in range(n):
        scores[m] |= {k: v[m] for k, v in out.items()}
      continue
    for m in range(n):
      scores[m] |= dict(ev(members.member(state, m),
                           jax.random.fold_in(jax.random.PRNGKey(seeds[m]), i)))
  if not scores[0]:
    return {}
  means, per = members.combine(scores)
  return means | {"per_seed": per}


def _members_batch_evaluator(eval_step, batches, n: int) -> Evaluator:
  """`batch_evaluator` for a stacked member state: one vmapped call per batch evaluates every
  member; returns each metric as a list over the members (a `stacked` evaluator)."""
  from dlcore.train import members
  step = jax.vmap(eval_step, in_axes=(0, None))

  def evaluate(state, key):
    per = [host_mean(rows) for rows in members.split_means([step(state, b) for b in batches()],
                                                            n)]
    return {k: [p[k] for p in per] for k in per[0]}

  evaluate.stacked = True
  return evaluate


class _MetricLog:
  """The step metrics: kept as the steps return them (on the device) and fetched, averaged
  and written every `log_every` calls, at saves, stops and epoch ends; a non-finite loss
  then stops the run before anything is saved from its state."""

  def __init__(self, writer, n_members: int | None, log_every: int, saves: "_Saves"):
    self.writer, self.n_members, self.log_every, self.saves = writer, n_members, log_every, saves
    self.pending: list = []     # not written yet
    self.epoch_rows: list = []  # this epoch's, for its record (and a mid-epoch checkpoint)

  def start_epoch(self, rows: list) -> None:
    self.epoch_rows = list(rows)

  def add(self, metrics) -> None:
    self.pending.append(metrics)
    self.epoch_rows.append(metrics)

  @property
  def full(self) -> bool:
    return len(self.pending) >= self.log_every

  def means(self, rows: list) -> tuple[dict, dict | None]:
    """(the metrics' means, each member's values or None)."""
    if self.n_members is None:
      return host_mean(rows), None
    from dlcore.train import members
    return members.combine([host_mean(r) for r in members.split_means(rows, self.n_members)])

  def flush(self, step: int, epoch: int) -> None:
    if not self.pending:
      return
    _wait(self.pending)
    with timing.section("metrics"):
      # Fetched once: the epoch's rows keep the host copies (its record reuses them).
      rows = fetch(self.pending)
      self.epoch_rows[len(self.epoch_rows) - len(rows):] = rows
      means, per = self.means(rows)
      self.pending = []
      rows = [means] if per is None else [dict(zip(per, v)) for v in zip(*per.values())]
      for row in rows:  # each member on its own
        all_skipped = row.get("skipped", 0.0) >= 1.0  # float16: no step applied, none diverged
        if "loss" in row and not math.isfinite(row["loss"]) and not all_skipped:
          raise NonFiniteLossError(
              f"loss became {row['loss']} by step {step} (epoch {epoch}); "
              f"{self.saves.kept('good')}. Lower the learning rate, check the inputs for "
              "NaN/inf, or resume from the checkpoint.")
      if self.writer is not None:
        self.writer.write("train", step, means, epoch=epoch,
                          **({} if per is None else {"per_seed": per}))

  def saved_rows(self, epoch: int) -> dict:
    """The epoch's step metrics so far, as JSON for a checkpoint (with their dtypes, so a
    resume from it reports the epoch's means bit for bit)."""
    rows = fetch(self.epoch_rows)
    return {"epoch": epoch,
            "epoch_rows": [{k: np.asarray(v).tolist() for k, v in r.items()} for r in rows],
            "dtypes": {k: str(np.asarray(v).dtype) for k, v in (rows[0] if rows else {}).items()}}


class _Saves:
  """The checkpoints of one `fit`: a periodic save falls due at a step and is made before the
  next step, or once the epoch's record is written (so a kill between the two resumes from
  the previous save); a stop saves at once; the end saves the final step. Every state saved
  is finite."""

  def __init__(self, checkpointer: Checkpointer | None, what: str = "training",
               fused: bool = False, start: int = 0):
    self.checkpointer, self.what, self.fused = checkpointer, what, fused
    self.last_good = checkpointer.latest_step() if checkpointer is not None else None
    self.due: tuple[int, int] | None = None  # (step, epoch)
    # Orbax makes a first save at the first step of a run without checkpoints.
    self.first = start + 1 if self.last_good is None else None

  def kept(self, which: str) -> str:
    if self.last_good is None:
      return "no checkpoint was saved"
    try:  # a write may still be in flight: the step is named only once it is on disk
      self.checkpointer.wait()
    except CheckpointError as e:
      return f"the save of step {self.last_good} failed ({e})"
    return (f"the last {which} checkpoint (step {self.last_good}) is kept in "
            f"{self.checkpointer.directory}")

  def check(self, host_state, step: int, epoch: int) -> None:
    if not all_finite(host_state):
      raise NonFiniteLossError(
          f"the parameters or optimizer state became NaN/inf by step {step} (epoch {epoch}); "
          f"{self.kept('finite')}. Lower the learning rate or check the inputs.")

  def point(self, step: int) -> bool:
    """Whether a periodic save may fall due at `step` (a fused call ends there). Orbax's
    first save, due at any step until one is made, is then made at the end of a call."""
    return self.checkpointer is not None and step % self.checkpointer.save_every == 0

  def falls_due(self, step: int, epoch: int, settled: bool = True) -> bool:
    """Whether a save falls due at `step` (it is made before the next call). Fused
    (`fused_step`), the steps are the interval's and the run's first (as Orbax decides them
    for single calls), and a step inside a call (not `settled`: the state is further on) is
    marked but not saved, so the metrics are written at the same steps as without fusing."""
    if self.checkpointer is None:
      return False
    if self.fused:
      due = self.point(step) or step == self.first
      if not due or not settled:
        return due
    elif not self.checkpointer.should_save(step):
      return False
    self.due = (step, epoch)
    return True

  def save_due(self, host_state: Callable[[], Any], extra: Callable[[int], dict] | None = None
               ) -> None:
    """Makes the save that fell due; `extra(epoch)`: in the middle of an epoch, its rows
    so far (a resume from it then reports the epoch's means over all of its steps)."""
    if self.due is None:
      return
    (step, epoch), self.due = self.due, None
    host = host_state()
    with timing.section("checkpoints"):
      self.check(host, step, epoch)
      self.checkpointer.save(step, host, extra=extra(epoch) if extra else None)
    self.last_good = step

  def save_now(self, host_state, step: int, epoch: int, extra: dict | None = None
               ) -> str | None:
    """Saves `step` (unless it is saved already) and waits for it; returns the folder, or
    None without a checkpointer."""
    if self.checkpointer is None:
      return None
    with timing.section("checkpoints"):
      self.check(host_state, step, epoch)
      if extra is not None or self.checkpointer.latest_step() != step:
        self.checkpointer.save(step, host_state, force=True, extra=extra)
      self.checkpointer.wait()
    self.last_good = step
    return self.checkpointer.directory

  def stop(self, signal_name: str, host_state: Callable[[], Any], step: int, epoch: int,
           extra: Callable[[int], dict]):
    """A signal arrived: saves this step with the epoch's rows so far (`extra(epoch)`), then
    stops the run (raises `preemption.Preempted`)."""
    if self.checkpointer is None:
      where = None
    elif self.last_good == step:  # a save point just saved this step (with its rows): it stands
      with timing.section("checkpoints"):
        self.checkpointer.wait()
      where = self.checkpointer.directory
    else:
      where = self.save_now(host_state(), step, epoch, extra=extra(epoch))
    raise preemption.Preempted(signal_name, step, where, what=self.what)


class _Steps:
  """The compiled step over the batches. The training state lives here, placed for the
  runner; `host()` waits for the steps in flight and gives one host-usable copy. After a
  resume, the batches up to the restored step are replayed without running. With a fused
  step (`scan_steps` of the step), `calls` stacks each stretch of same-shape batches up to a
  save point into one call, and `run` hands out its steps' metrics one by one."""

  def __init__(self, runner: Runner, train_step, state, steps_per_call: int, stacked: bool,
               fused_step=None):
    self.runner, self.train_step, self.fused = runner, train_step, fused_step
    self.steps_per_call, self.stacked = steps_per_call, stacked
    self.start = step_of(state)
    self.state = runner.put_state(state)
    self.done = 0  # steps in `state` (the replayed ones too)
    self.step = 0  # the step of the metrics handed out last (behind `done` inside a fused call)
    self.max_block: int | None = None
    self._buffers: dict = {}
    self._device: tuple | None = None  # (the host arrays' items, their device copy)

  @property
  def settled(self) -> bool:
    """Whether `state` is the state after `step` (not further on, inside a fused call)."""
    return self.step == self.done

  def replaying(self) -> bool:
    """Whether the next batch's steps are already in the (restored) state; counts it."""
    if self.done + self.steps_per_call <= self.start:
      self.done = self.step = self.done + self.steps_per_call
      return True
    return False

  def calls(self, batches: Iterable, ends_at: Callable[[int], bool]):
    """The batches still to run, as calls: each batch, or with a fused step each stretch of
    same-shape batches (at most FUSE_BYTES of them) that ends at a step where `ends_at(step)`
    (a save may fall due) or before a batch of another shape, as one `_Block`: under jit,
    batches of `dlcore.data.batches` as their examples' indices, gathered inside the call
    from one copy of the arrays on the device (`_gathers`); others stacked on the host."""
    source = batches if self._gathers(batches) else None
    if source is None:
      self._device = None
    block: list = []
    layout = None  # block's
    for batch in (batches if source is None else source.selections):
      if self.replaying():
        continue
      if self.fused is None:
        yield batch
        continue
      this = _layout(batch) if source is None else len(batch)
      if block and (this != layout or len(block) == self.max_block):
        yield self._block(block, layout, source)
        block = []
      layout = this
      # (gathered blocks need no bound: their arrays are at most FUSE_BYTES)
      if self.max_block is None and source is None:
        size = sum(np.asarray(x).nbytes for x in jax.tree.leaves(batch))
        self.max_block = max(1, FUSE_BYTES // max(1, size))
      block.append(batch)
      if ends_at(self.done + len(block)):
        yield self._block(block, layout, source)
        block = []
    if block:
      yield self._block(block, layout, source)

  def _gathers(self, batches) -> bool:
    """Whether the fused calls gather `batches` on the device: `dlcore.data.batches` under
    jit, their arrays at most FUSE_BYTES (one copy of them stays on the device)."""
    return (self.fused is not None and self.runner.mode == "jit"
            and isinstance(batches, dldata.Batches)
            and sum(v.nbytes for v in batches.arrays.values()) <= FUSE_BYTES)

  def _block(self, batches: list, layout, source: dldata.Batches | None = None):
    """One batch runs as itself (the step's own program), several as a `_Block`. With a
    `source`, `batches` are its selections: one is gathered on the host as `source` yields
    it, several become a `Gathered` of their indices and the arrays' device copy (made once).
    Otherwise they are stacked in a buffer kept for the next block of that layout: a new
    47 MB array each epoch costs ~0.1 s of page faults. It is refilled only once the call that
    read it has finished (`run` waits for a block's metrics before the next call is made)."""
    if len(batches) == 1:
      return batches[0] if source is None else source.take(batches[0])
    if source is not None:
      return _Block(Gathered(idx=np.stack(batches).astype(np.int32),
                             arrays=self._on_device(source.arrays)), len(batches))
    buffer = self._buffers.get(layout)
    if buffer is None or len(jax.tree.leaves(buffer)[0]) < len(batches):
      buffer = jax.tree.map(lambda x: np.empty((len(batches), *np.shape(x)), np.asarray(x).dtype),
                            batches[0])
      self._buffers = {layout: buffer}  # (one layout at a time: the epoch's full batches)
    view = jax.tree.map(lambda b: b[:len(batches)], buffer)
    for i, batch in enumerate(batches):
      jax.tree.map(lambda b, x: b.__setitem__(i, x), view, batch)
    return _Block(view, len(batches))

  def _on_device(self, arrays: dict) -> dict:
    """The device copy of `arrays`, made again when any of them is another array (a dict
    refilled each epoch); the old copy is dropped first."""
    items = list(arrays.items())
    if self._device is None or not _same_items(self._device[0], items):
      self._device = None
      self._device = (items, jax.device_put(arrays))
    return self._device[1]

  def run(self, call):
    """Runs one call (a batch or a `_Block`); yields each step's metrics (a batch's on the
    device, a block's fetched once, after its steps: the wait that lets `_block` refill the
    block's buffer; do not make it lazy)."""
    block = isinstance(call, _Block)
    with timing.section("data"):
      batch = self.runner.put_batch(call.batches if block else call,
                                    stacked=block or self.stacked)
    with timing.section(STEPS):
      self.state, metrics = (self.fused if block else self.train_step)(self.state, batch)
      metrics = self.runner.get_output(metrics)
    if not block:
      self.done = self.step = self.done + self.steps_per_call
      yield metrics
      return
    self.done += call.steps
    _wait(metrics)
    with timing.section("metrics"):
      metrics = fetch(metrics)
    for i in range(call.steps):
      self.step += 1
      yield {k: v[i] for k, v in metrics.items()}

  def host(self):
    _wait(self.state)
    with timing.section("metrics"):
      return self.runner.get_state(self.state)


# A fused call stacks at most this much of its batches' data (a copy on the host, then on
# the device): an epoch of (Fashion-)MNIST is 47 MB.
FUSE_BYTES = 512 * 2**20


class _Block:
  """Same-shape batches stacked along a new leading axis, one per step."""

  def __init__(self, batches, steps: int):
    self.batches, self.steps = batches, steps


def _same_items(a: list, b: list) -> bool:
  return len(a) == len(b) and all(ka == kb and va is vb for (ka, va), (kb, vb) in zip(a, b))


def _layout(batch):
  leaves, tree = jax.tree.flatten(batch)
  return tree, tuple((np.shape(x), str(np.asarray(x).dtype)) for x in leaves)


class _Records:
  """Each epoch's record {"epoch", "step", "train", "eval"[, "per_seed"]}: its training means,
  its evaluation; written, kept in the history and passed to `on_epoch_end`."""

  def __init__(self, writer, log: _MetricLog, history: list, on_epoch_end, evaluate):
    self.writer, self.log, self.history = writer, log, history
    self.on_epoch_end, self.evaluate = on_epoch_end, evaluate

  def close(self, epoch: int, step: int, host_state) -> dict:
    with timing.section("metrics"):
      train_means, train_per = self.log.means(self.log.epoch_rows)
    record = {"epoch": epoch, "step": step, "train": train_means}
    if train_per is not None:
      record["per_seed"] = {"train": train_per}
    if scores := self.evaluate(host_state, epoch):
      eval_per = scores.pop("per_seed", None)
      record["eval"] = scores
      if eval_per is not None:
        record.setdefault("per_seed", {})["eval"] = eval_per
      if self.writer is not None:
        with timing.section("metrics"):
          self.writer.write("eval", step, scores, epoch=epoch,
                            **({} if eval_per is None else {"per_seed": eval_per}))
    self.history.append(record)
    if hasattr(self.writer, "write_epoch"):
      with timing.section("metrics"):
        self.writer.write_epoch(record)
    if self.on_epoch_end is not None:
      with timing.section("epoch callbacks"):
        self.on_epoch_end(epoch, host_state, record)
    return record


def _postfix(record: dict) -> dict:
  """The progress bar's numbers: the epoch's training loss and its scalar test metrics."""
  return ({k: f"{v:.4g}" for k, v in record["train"].items() if k == "loss"}
          | {f"eval_{k}": f"{v:.4g}" for k, v in record.get("eval", {}).items()
             if np.ndim(v) == 0 and k != "count"})


def _restore(state, checkpointer, writer, resume: bool):
  """(state, history, carried): the newest checkpoint's state when resuming, the history up to
  it, and the rows of the epoch it interrupted as (epoch, rows) or None."""
  if not resume or checkpointer is None:
    return state, [], None
  if checkpointer.latest_step() is None:  # stopped before its first save (fused calls save
    if hasattr(writer, "resume"):          # at the first save point): its rows go, as after
      writer.resume(0)                     # a checkpoint those past it
    return state, [], None
  state = checkpointer.restore(state)
  history = list(writer.resume(step_of(state))) if hasattr(writer, "resume") else []
  extra = checkpointer.extra(step_of(state)) or {}
  # A stop at an epoch's last step saved its rows; a resumed run then wrote the epoch's
  # record at that same step (and had no later step to save): the record stands.
  if "epoch_rows" not in extra or any(h.get("epoch") == extra["epoch"] for h in history):
    return state, history, None
  dtypes = extra.get("dtypes", {})  # back in their dtypes, so the epoch's means are bit-equal
  return state, history, (int(extra["epoch"]),
                          [{k: np.asarray(v, dtypes.get(k)) for k, v in row.items()}
                           for row in extra["epoch_rows"]])


def _epoch_evaluation(evaluators: list, eval_every: int, num_epochs: int, eval_seed):
  """evaluate(host_state, epoch) -> scores of the evaluators due that epoch."""

  def evaluate(host_state, epoch: int) -> dict:
    def due(ev):
      every = getattr(ev, "every", eval_every)  # None: after the last epoch only
      return epoch == num_epochs - 1 or bool(every and (epoch + 1) % every == 0)

    if not evaluators:
      return {}
    # Skipped evaluators stay in the list (as no-ops) so each keeps its index, hence its key.
    with timing.section("evaluation"):
      return run_evaluators([ev if due(ev) else (lambda s, k: {}) for ev in evaluators],
                            host_state, eval_seed)

  return evaluate


def fit(state, train_step, batches: Callable[[int], Iterable], *, runner: Runner,
        num_epochs: int, steps_per_call: int = 1, stacked: bool = False,
        eval_step=None, eval_batches: Callable[[], Iterable] | None = None,
        evaluators: Sequence[Evaluator] = (), eval_every: int = 1,
        eval_seed: int | Sequence[int] = 0,
        writer: MetricWriter | None = None, run: MetricWriter | None = None,
        checkpointer: Checkpointer | None = None, resume: bool = False,
        log_every: int = 50, progress: bool = True, desc: str = "train",
        on_epoch_end: Callable[[int, object, dict], None] | None = None,
        fused_step=None):
  """Trains `state` for `num_epochs` and returns `(host_state, history)`.

  batches(epoch) yields the epoch's batches (host arrays, deterministic in `epoch`, so a
  resumed run replays the same data); each call of the compiled `train_step` (from
  `runner.compile`) consumes one and advances `steps_per_call` optimizer steps (more than 1
  for fused `repeat_step`/`scan_steps`; `stacked` batches carry a leading steps axis).
  Metrics are fetched every `log_every` calls, at checkpoints and at epoch ends; a non-finite
  loss then raises NonFiniteLossError before anything is saved from the bad state.

  Evaluation runs every `eval_every` epochs (an evaluator's own `every` attribute overrides
  it; None: after the last epoch only) and after the last: `eval_step` over `eval_batches()`
  (see `batch_evaluator`) and each of `evaluators`, whose metrics are merged into the
  epoch's "eval" record. Evaluators get the host state and a key derived from
  `eval_seed`, so sampled metrics (a VAE's ELBO, a GAN's sample scores) are deterministic.
  `writer` (or its older name `run`) receives "train" and "eval" rows; a writer with
  `write_epoch(record)` also gets each epoch's record, and one with `resume(step)` is told the
  restored step on resume and returns the records up to it, so `history` covers the run.
  Before each checkpoint and at the end, the state itself (params, optimizer state) must be
  finite, so every checkpoint written restores to finite values.
  history: one dict per epoch {"epoch", "step", "train": {...}, "eval": {...}}.

  `fused_step`: the same step fused, `runner.compile(scan_steps(step))`. Each stretch of
  same-shape batches up to a step where a save may fall due (the checkpointer's interval)
  then runs as one call: under jit, batches from `dlcore.data.batches` are gathered inside
  the call from one copy of their arrays on the device (arrays of `FUSE_BYTES` at most),
  other batches are stacked on the host (`FUSE_BYTES` at most per call); the metrics are still
  each step's, written at the same steps, so the rows, records and state equal those of the
  loop of calls wherever XLA compiles the scanned step to the same arithmetic (checked for
  the experiments that fuse by default). A stop signal is honoured at the end of a call.

  Members (`runner` a `dlcore.train.members.MemberRunner`, `state` stacked): the step's
  metrics carry a members axis; "train" and "eval" hold the means over members and the
  record's "per_seed" {"train": {metric: [member values]}, "eval": {...}} each member's
  (writers get it as `per_seed=`); evaluators run member by member, member m with key seed
  `eval_seed[m]` (a sequence, or the same int for all). A non-finite loss in any member
  stops the run.
  """
  writer = writer if writer is not None else run
  evaluators = list(evaluators)
  n_members = getattr(runner, "members", None)
  if eval_step is not None:
    if eval_batches is None:
      raise ValueError("fit: eval_step needs eval_batches (a function returning the batches)")
    evaluators.insert(0, batch_evaluator(eval_step, eval_batches) if n_members is None else
                      _members_batch_evaluator(eval_step, eval_batches, n_members))
  if fused_step is not None and (steps_per_call != 1 or stacked or n_members is not None
                                 or runner.mode not in ("jit", "sharded")):
    raise ValueError("fit: fused_step fuses single steps (steps_per_call 1, not stacked) of "
                     "one member under jit or sharded")
  state, history, carried = _restore(state, checkpointer, writer, resume)
  steps = _Steps(runner, train_step, state, steps_per_call, stacked, fused_step)
  saves = _Saves(checkpointer, what=f"'{desc}'", fused=fused_step is not None,
                 start=steps.start)
  log = _MetricLog(writer, n_members, log_every, saves)
  records = _Records(writer, log, history, on_epoch_end,
                     _epoch_evaluation(evaluators, eval_every, num_epochs, eval_seed))
  # With several processes only process 0 shows a bar.
  bar = tqdm(total=num_epochs, desc=desc, disable=not progress or not distributed.is_primary(),
             unit="epoch", dynamic_ncols=True)
  preemption.begin_fit()  # a request left from an earlier, stopped run, or a missed stop
  # While training, a signal only asks to stop after the step in flight (see `_Saves.stop`).
  with preemption.training(collective=runner.multiprocess, step=steps.start), \
      contextlib.closing(bar):
    for epoch in range(num_epochs):
      log.start_epoch(carried[1] if carried and carried[0] == epoch else [])
      for call in _timed(steps.calls(batches(epoch), saves.point), "data"):
        saves.save_due(steps.host, log.saved_rows)
        # A signal that came since the last call: a fused call would run many steps first.
        if isinstance(call, _Block) and (signal_name := preemption.reached(steps.step)):
          log.flush(steps.step, epoch)
          saves.stop(signal_name, steps.host, steps.step, epoch, log.saved_rows)
        for metrics in steps.run(call):  # (a fused call's steps one by one)
          log.add(metrics)
          if steps.settled and (signal_name := preemption.reached(steps.step)) is not None:
            log.flush(steps.step, epoch)
            saves.stop(signal_name, steps.host, steps.step, epoch, log.saved_rows)
          if saves.falls_due(steps.step, epoch, steps.settled) or log.full:
            log.flush(steps.step, epoch)
      if log.epoch_rows:  # (none: the epoch was entirely before the resume point)
        log.flush(steps.step, epoch)
        record = records.close(epoch, steps.step, steps.host())
        saves.save_due(steps.host)  # after the epoch's record: a checkpoint never runs ahead
        bar.set_postfix(_postfix(record))  # of the history
      bar.update(1)
    final_state = steps.host()
    final = step_of(final_state)
    where = saves.save_now(final_state, final, num_epochs - 1)
    # A signal during the last epoch's evaluation: the run is saved; stop here, not after
    # whatever the caller does next.
    if (signal_name := preemption.stopping()) is not None:
      raise preemption.Preempted(signal_name, final, where, what=saves.what)
  return final_state, history
