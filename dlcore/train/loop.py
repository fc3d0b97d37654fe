"""`fit`: epochs of batches through a compiled step, with evaluation, logging, a progress
bar, periodic checkpoints, resume, and a guard that stops on a NaN/inf loss."""
from __future__ import annotations

import math
from typing import Callable, Iterable

import jax
import numpy as np
from tqdm.auto import tqdm

from dlcore.checkpoint import Checkpointer
from dlcore.runs import RunDir
from dlcore.train.modes import Runner


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss; the last good checkpoint is kept."""


def step_of(state) -> int:
  """The state's step; a vmapped ensemble carries one counter per member, all equal."""
  return int(np.ravel(jax.device_get(state.step))[0])


def _host_mean(rows: list[dict]) -> dict:
  """Mean of each metric over the rows; weighted by a "count" metric when there is one."""
  rows = jax.device_get(rows)
  if "count" in rows[0]:
    w = np.array([float(np.sum(r["count"])) for r in rows])
    out = {k: float(np.dot([np.mean(r[k]) for r in rows], w) / w.sum())
           for k in rows[0] if k != "count"}
    return out | {"count": int(w.sum())}
  return {k: float(np.mean([np.mean(r[k]) for r in rows])) for k in rows[0]}


def fit(state, train_step, batches: Callable[[int], Iterable], *, runner: Runner,
        num_epochs: int, steps_per_call: int = 1, stacked: bool = False,
        eval_step=None, eval_batches: Callable[[], Iterable] | None = None,
        eval_every: int = 1, run: RunDir | None = None,
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
  history: one dict per epoch {"epoch", "step", "train": {...}, "eval": {...}}.
  """
  if resume and checkpointer is not None and checkpointer.latest_step() is not None:
    state = checkpointer.restore(state)
  start_step = step_of(state)
  last_good = checkpointer.latest_step() if checkpointer is not None else None
  state = runner.put_state(state)
  history: list[dict] = []
  pending: list = []
  calls_done = 0  # calls whose steps are already in `state`

  def flush(step: int, epoch: int) -> dict | None:
    nonlocal pending
    if not pending:
      return None
    means = _host_mean(pending)
    pending = []
    if "loss" in means and not math.isfinite(means["loss"]):
      kept = (f"the last good checkpoint (step {last_good}) is kept in "
              f"{checkpointer.directory}" if last_good is not None else "no checkpoint was saved")
      raise NonFiniteLossError(
          f"loss became {means['loss']} by step {step} (epoch {epoch}); {kept}. Lower the "
          "learning rate, check the inputs for NaN/inf, or resume from the checkpoint.")
    if run is not None:
      run.log("train", step, means, epoch=epoch)
    return means

  bar = tqdm(total=num_epochs, desc=desc, disable=not progress, unit="epoch",
             dynamic_ncols=True)
  try:
    for epoch in range(num_epochs):
      epoch_rows = []
      for batch in batches(epoch):
        if (calls_done + 1) * steps_per_call <= start_step:  # replaying up to the resume point
          calls_done += 1
          continue
        state, metrics = train_step(state, runner.put_batch(batch, stacked=stacked))
        calls_done += 1
        metrics = runner.get_output(metrics)
        pending.append(metrics)
        epoch_rows.append(metrics)
        step = calls_done * steps_per_call
        save_now = checkpointer is not None and checkpointer.should_save(step)
        if save_now or len(pending) >= log_every:
          flush(step, epoch)
        if save_now:
          checkpointer.save(step, runner.get_state(state))
          last_good = step
      step = calls_done * steps_per_call
      if not epoch_rows:  # epoch entirely before the resume point
        bar.update(1)
        continue
      flush(step, epoch)
      record = {"epoch": epoch, "step": step, "train": _host_mean(epoch_rows)}
      if eval_step is not None and ((epoch + 1) % eval_every == 0 or epoch == num_epochs - 1):
        rows = [eval_step(state, b) for b in eval_batches()]
        record["eval"] = _host_mean(rows)
        if run is not None:
          run.log("eval", step, record["eval"], epoch=epoch)
      history.append(record)
      if on_epoch_end is not None:
        on_epoch_end(epoch, runner.get_state(state), record)
      bar.set_postfix({k: f"{v:.4g}" for k, v in record["train"].items() if k == "loss"}
                      | {f"eval_{k}": f"{v:.4g}" for k, v in record.get("eval", {}).items()})
      bar.update(1)
  finally:
    bar.close()
  host_state = runner.get_state(state)
  if checkpointer is not None:
    final = step_of(host_state)
    if checkpointer.latest_step() != final:
      checkpointer.save(final, host_state, force=True)
    checkpointer.wait()
  return host_state, history
