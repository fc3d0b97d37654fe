"""`fit`: epochs of batches through a compiled step, with evaluation, metric writing, a
progress bar, periodic checkpoints, resume, and a guard that stops on a NaN/inf loss.

The engine knows nothing of run directories or consoles: metrics leave through a
`MetricWriter` (anything with `write(split, step, metrics, **extra)`); dlcore's harness
provides JSON-lines, console and TensorBoard writers.
"""
from __future__ import annotations

import contextlib
import math
from typing import Any, Callable, Iterable, Mapping, Protocol, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from dlcore import distributed, precision, preemption, timing
from dlcore.checkpoint import Checkpointer
from dlcore.train.modes import Runner

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
  return all(bool(v) for v in jax.device_get([jnp.isfinite(x).all() for x in leaves]))


def step_of(state) -> int:
  """The state's step; a vmapped ensemble carries one counter per member, all equal."""
  return int(np.ravel(jax.device_get(state.step))[0])


def host_mean(rows: list[dict]) -> dict:
  """Mean of each metric over the rows; weighted by a "count" metric when there is one.
  Rows of float16 steps (with "skipped") give the means over the applied steps
  (`dlcore.precision.applied_means`) and the fraction of steps skipped."""
  rows = jax.device_get(rows)
  if "count" in rows[0]:
    # float16: a skipped step's metrics, its count included, are zero, so the weights leave
    # it out; "skipped" and "loss_scale" are per step, not per example.
    per_step = [k for k in ("skipped", "loss_scale") if k in rows[0]]
    w = np.array([float(np.sum(r["count"])) for r in rows])
    total = w.sum()
    out = {k: float(np.dot([np.mean(r[k]) for r in rows], w) / total) if total > 0
           else float("nan")  # every step skipped: nothing measured
           for k in rows[0] if k != "count" and k not in per_step}
    out |= {k: float(np.mean([np.mean(r[k]) for r in rows])) for k in per_step}
    return out | {"count": int(total)}
  return precision.applied_means(
      {k: float(np.mean([np.mean(r[k]) for r in rows])) for k in rows[0]})


STEPS = "training steps"  # the timing section of the steps themselves (dispatch and wait)


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


def fit(state, train_step, batches: Callable[[int], Iterable], *, runner: Runner,
        num_epochs: int, steps_per_call: int = 1, stacked: bool = False,
        eval_step=None, eval_batches: Callable[[], Iterable] | None = None,
        evaluators: Sequence[Evaluator] = (), eval_every: int = 1,
        eval_seed: int | Sequence[int] = 0,
        writer: MetricWriter | None = None, run: MetricWriter | None = None,
        checkpointer: Checkpointer | None = None, resume: bool = False,
        log_every: int = 50, progress: bool = True, desc: str = "train",
        on_epoch_end: Callable[[int, object, dict], None] | None = None):
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
  history: list[dict] = []
  carried: tuple[int, list] | None = None  # an interrupted epoch's rows, from its checkpoint
  if resume and checkpointer is not None and checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
    if hasattr(writer, "resume"):
      history = list(writer.resume(step_of(state)))
    extra = checkpointer.extra(step_of(state)) or {}
    if "epoch_rows" in extra:  # back in their dtypes, so the epoch's means are bit-equal
      dtypes = extra.get("dtypes", {})
      carried = (int(extra["epoch"]),
                 [{k: np.asarray(v, dtypes.get(k)) for k, v in row.items()}
                  for row in extra["epoch_rows"]])
  start_step = step_of(state)
  last_good = checkpointer.latest_step() if checkpointer is not None else None
  state = runner.put_state(state)
  pending: list = []
  calls_done = 0  # calls whose steps are already in `state`

  def means_of(rows: list) -> tuple[dict, dict | None]:
    """(the metrics' means, each member's values or None)."""
    if n_members is None:
      return host_mean(rows), None
    from dlcore.train import members
    means, per = members.combine([host_mean(r) for r in members.split_means(rows, n_members)])
    return means, per

  def kept(which: str) -> str:
    return (f"the last {which} checkpoint (step {last_good}) is kept in "
            f"{checkpointer.directory}" if last_good is not None else "no checkpoint was saved")

  def flush(step: int, epoch: int) -> dict | None:
    if not pending:
      return None
    with timing.section(STEPS):  # the steps in flight finish here
      jax.block_until_ready(pending)
    with timing.section("metrics"):
      return _write_pending(step, epoch)

  def _write_pending(step: int, epoch: int) -> dict:
    nonlocal pending
    means, per = means_of(pending)
    pending = []
    rows = [means] if per is None else [dict(zip(per, v)) for v in zip(*per.values())]
    for row in rows:  # each member on its own
      all_skipped = row.get("skipped", 0.0) >= 1.0  # float16: no step applied, none diverged
      if "loss" in row and not math.isfinite(row["loss"]) and not all_skipped:
        raise NonFiniteLossError(
            f"loss became {row['loss']} by step {step} (epoch {epoch}); {kept('good')}. Lower "
            "the learning rate, check the inputs for NaN/inf, or resume from the checkpoint.")
    if writer is not None:
      writer.write("train", step, means, epoch=epoch, **({} if per is None else
                                                           {"per_seed": per}))
    return means

  def check_state(host_state, step: int, epoch: int) -> None:
    if not all_finite(host_state):
      raise NonFiniteLossError(
          f"the parameters or optimizer state became NaN/inf by step {step} (epoch {epoch}); "
          f"{kept('finite')}. Lower the learning rate or check the inputs.")

  def evaluate(host_state, epoch: int) -> dict:
    def due(ev):
      every = getattr(ev, "every", eval_every)  # None: after the last epoch only
      return epoch == num_epochs - 1 or bool(every and (epoch + 1) % every == 0)

    # Skipped evaluators stay in the list (as no-ops) so each keeps its index, hence its key.
    return run_evaluators([ev if due(ev) else (lambda s, k: {}) for ev in evaluators],
                          host_state, eval_seed)

  due_save = None  # (step, epoch): saved before the next step, or once the epoch's record
                  # is written, so a kill between the two resumes from the previous save

  def rows_extra(epoch: int, rows: list) -> dict:
    """The interrupted epoch's step metrics, as JSON (with their dtypes, for bit-equal
    means on resume)."""
    rows = jax.device_get(rows)
    return {"epoch": epoch,
            "epoch_rows": [{k: np.asarray(v).tolist() for k, v in r.items()} for r in rows],
            "dtypes": {k: str(np.asarray(v).dtype) for k, v in (rows[0] if rows else {}).items()}}

  def save_due(mid: bool = False) -> None:
    nonlocal due_save, last_good
    if due_save is None:
      return
    step, epoch = due_save
    due_save = None
    host = host_state_of(state)
    with timing.section("checkpoints"):
      check_state(host, step, epoch)
      # A save in the middle of an epoch keeps the epoch's rows, so a resume from it
      # reports the epoch's means over all of its steps.
      checkpointer.save(step, host, extra=rows_extra(epoch, epoch_rows) if mid else None)
    last_good = step

  def host_state_of(state):
    with timing.section(STEPS):  # the steps in flight finish here
      jax.block_until_ready(state)
    with timing.section("metrics"):
      return runner.get_state(state)

  # With several processes only process 0 shows a bar.
  bar = tqdm(total=num_epochs, desc=desc, disable=not progress or not distributed.is_primary(),
             unit="epoch", dynamic_ncols=True)
  def stop(step: int, epoch: int, epoch_rows: list, signal_name: str):
    """A signal arrived: save this step with the epoch's rows so far, then stop."""
    flush(step, epoch)
    where = None
    if checkpointer is not None:
      host = host_state_of(state)
      with timing.section("checkpoints"):
        check_state(host, step, epoch)
        checkpointer.save(step, host, force=True, extra=rows_extra(epoch, epoch_rows))
        checkpointer.wait()
      where = checkpointer.directory
    raise preemption.Preempted(signal_name, step, where, what=f"'{desc}'")

  preemption.begin_fit()  # a request left from an earlier, stopped run, or a missed stop
  # While training, a signal only asks to stop after the step in flight (see `stop`).
  with preemption.training(collective=runner.multiprocess, step=start_step), \
      contextlib.closing(bar):
    for epoch in range(num_epochs):
      epoch_rows = list(carried[1]) if carried and carried[0] == epoch else []
      for batch in _timed(batches(epoch), "data"):
        if (calls_done + 1) * steps_per_call <= start_step:  # replaying up to the resume point
          calls_done += 1
          continue
        save_due(mid=True)
        with timing.section("data"):
          batch = runner.put_batch(batch, stacked=stacked)
        with timing.section(STEPS):
          state, metrics = train_step(state, batch)
          metrics = runner.get_output(metrics)
        calls_done += 1
        pending.append(metrics)
        epoch_rows.append(metrics)
        step = calls_done * steps_per_call
        if (signal_name := preemption.reached(step)) is not None:
          stop(step, epoch, epoch_rows, signal_name)
        if checkpointer is not None and checkpointer.should_save(step):
          flush(step, epoch)
          due_save = (step, epoch)
        elif len(pending) >= log_every:
          flush(step, epoch)
      step = calls_done * steps_per_call
      if not epoch_rows:  # epoch entirely before the resume point
        bar.update(1)
        continue
      flush(step, epoch)
      host_state = host_state_of(state)
      with timing.section("metrics"):
        train_means, train_per = means_of(epoch_rows)
      record = {"epoch": epoch, "step": step, "train": train_means}
      if train_per is not None:
        record["per_seed"] = {"train": train_per}
      with timing.section("evaluation"):
        scores = evaluate(host_state, epoch) if evaluators else {}
      if scores:
        eval_per = scores.pop("per_seed", None)
        record["eval"] = scores
        if eval_per is not None:
          record.setdefault("per_seed", {})["eval"] = eval_per
        if writer is not None:
          with timing.section("metrics"):
            writer.write("eval", step, record["eval"], epoch=epoch,
                         **({} if eval_per is None else {"per_seed": eval_per}))
      history.append(record)
      if hasattr(writer, "write_epoch"):
        with timing.section("metrics"):
          writer.write_epoch(record)
      if on_epoch_end is not None:
        with timing.section("epoch callbacks"):
          on_epoch_end(epoch, host_state, record)
      save_due()  # after the epoch's record: a checkpoint never runs ahead of the history
      bar.set_postfix({k: f"{v:.4g}" for k, v in record["train"].items() if k == "loss"}
                      | {f"eval_{k}": f"{v:.4g}" for k, v in record.get("eval", {}).items()
                         if np.ndim(v) == 0 and k != "count"})
      bar.update(1)
    host_state = host_state_of(state)
    final = step_of(host_state)
    where = None
    if checkpointer is not None:
      with timing.section("checkpoints"):
        check_state(host_state, final, num_epochs - 1)
        if checkpointer.latest_step() != final:
          checkpointer.save(final, host_state, force=True)
        checkpointer.wait()
      where = checkpointer.directory
    # A signal during the last epoch's evaluation: the run is saved; stop here, not after
    # whatever the caller does next.
    if (signal_name := preemption.stopping()) is not None:
      raise preemption.Preempted(signal_name, final, where, what=f"'{desc}'")
  return host_state, history
