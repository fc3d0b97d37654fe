"""`--seeds N` for the experiments: N runs (seeds seed..seed+N-1) trained as one program
through the engine's members (`dlcore.train.members`), and their numbers as mean, spread and
per-seed values.

    seeds = Seeds.of(cfg.common)                      # from --seed and --seeds
    runner = seeds.runner(runner)                     # a MemberRunner when N > 1
    state = seeds.state(model, tx, x[:2])             # stacked when N > 1
    step = runner.compile(seeds.step(make_train_step(loss_fn)))
    fit(state, step, lambda e: seeds.batches(train, 64, e), eval_seed=seeds.eval_seed(0), ...)
    entry = seeds.summarize([entry_of(s, h) for s, h in seeds.each(state, history)])

With N = 1 every method returns what the single-run code did before `--seeds` existed (the
same state, step, batches and summary), so default runs are unchanged bit for bit.
"""
from __future__ import annotations

import dataclasses
from typing import Iterator, Sequence

import jax
import numpy as np

from dlcore import data as dldata
from dlcore.harness.errors import ConfigError
from dlcore.harness.sweeps import Sweep
from dlcore.train import members as mb
from dlcore.train.state import create_train_state


@dataclasses.dataclass
class Seeds:
  seeds: list[int]  # each member's seed (a sweep repeats `--seed`..`--seeds` per point)
  # id(host arrays) -> (those arrays, their device copy): the data goes to the device once
  _device: dict = dataclasses.field(default_factory=dict, repr=False, compare=False)
  sweep: "Sweep | None" = None     # `--sweep`: the grid, crossed with the seeds
  base: list[int] | None = None    # with a sweep: the seeds of each point
  hyper: list[dict] | None = None  # with a sweep: each member's hyperparameters

  @classmethod
  def of(cls, common, default: int = 1, *, sweep: "Sweep | None" = None) -> "Seeds":
    """The seeds `--seed S --seeds N` ask for (a `cli.Common`); `default` when N is None.
    `sweep` (`Sweep.of(cfg)`): every point of its grid with every seed is a member."""
    n = getattr(common, "seeds", None)
    base = mb.member_seeds(common.seed, default if n is None else n)
    if sweep is None:
      return cls(base)
    seeds, hyper = sweep.members(base)
    return cls(seeds, sweep=sweep, base=base, hyper=hyper)

  @property
  def n(self) -> int:
    return len(self.seeds)

  @property
  def many(self) -> bool:
    return self.n > 1 or self.sweep is not None

  @property
  def per_point(self) -> list[int]:
    """The seeds of one point (all of them without a sweep)."""
    return self.seeds if self.sweep is None else self.base

  def optimizer(self, factory, **values):
    """`factory(**values)`, today's optimizer; with a sweep `optim.injected`, so that each
    member's point (set by `state`) enters the step as numbers. `values` name every swept
    name (the experiment's SWEEPABLE)."""
    if self.sweep is None or not self.sweep.names:  # (a shape point's program, no numbers)
      return factory(**values)
    if missing := sorted(set(self.sweep.names) - set(values)):
      raise ValueError(f"{', '.join(missing)} swept but not an argument of the optimizer")
    from dlcore import optim
    return optim.injected(factory, **values)

  def describe(self, programs: int = 1) -> str:
    """The log line of a sweep: its size, in how many programs."""
    k, p = len(self.per_point), len(self.sweep.points)
    if programs > 1:
      return (f"sweep: {programs} programs (one per shape value), each {p} point"
              f"{'s' * (p > 1)} x {k} seed{'s' * (k > 1)} = {self.n} members")
    return (f"sweep: {p} point{'s' * (p > 1)} x {k} seed{'s' * (k > 1)} = {self.n} members, "
            "one program")

  def runner(self, runner):
    if not self.many:
      return runner
    try:
      return mb.MemberRunner(runner, self.n)
    except ValueError as e:  # pmap: one line that names the fix
      raise ConfigError(str(e)) from None

  def state(self, model, tx, example_x, *, init_args: tuple = (), loss_scale=None):
    if not self.many:
      return create_train_state(model, tx, example_x, self.seeds[0], init_args, loss_scale)
    return mb.create_members(model, tx, example_x, self.seeds, init_args, loss_scale,
                             hyperparams=self.hyper)

  def step(self, step):
    return mb.over_members(step) if self.many else step

  def batches(self, arrays: dict, batch_size: int, epoch: int, *, shuffle: bool = True,
              drop_remainder: bool = False):
    """Epoch `epoch`'s batches of `arrays` (host arrays), each seed in its own order."""
    if not self.many:
      return dldata.batches(arrays, batch_size, shuffle=shuffle, seed=self.seeds[0],
                            epoch=epoch, drop_remainder=drop_remainder)
    return mb.member_batches(self._on_device(arrays), batch_size, self.seeds, epoch,
                             shuffle=shuffle, drop_remainder=drop_remainder)

  def _on_device(self, arrays: dict) -> dict:
    key = id(arrays)
    if key not in self._device:  # once per array set: only indices travel per step
      self._device[key] = (arrays, jax.device_put(arrays))
    return self._device[key][1]

  def eval_seed(self, offset: int = 0):
    """`fit`'s eval_seed when a single run uses `seed + offset`."""
    return self.seeds[0] + offset if not self.many else [s + offset for s in self.seeds]

  def each(self, state, history: list[dict] | None = None) -> Iterator[tuple]:
    """(member state, member history) for each seed, as that seed's single run has them."""
    if not self.many:
      yield state, history
      return
    for i in range(self.n):
      yield mb.member(state, i), (None if history is None else mb.member_view(history, i))

  def histories(self, history: list[dict]) -> list[list[dict]]:
    """Each member's history, as its single run has it."""
    return [history] if not self.many else [mb.member_view(history, i) for i in range(self.n)]

  def shown(self, history: list[dict]) -> list[dict]:
    """The history a run's own figures draw: every seed (a band), or under a sweep the first
    member's alone (a band over points would mix settings; the sweep has its own figures)."""
    return history if self.sweep is None else mb.member_view(history, 0)

  def first(self, state):
    """Seed 0's state (for figures drawn from one model)."""
    return mb.member(state, 0) if self.many else state

  def curve(self, history: list[dict], split: str, key: str):
    return curve(history, split, key)

  def summarize(self, entries: Sequence[dict], *, best: str | None = None,
                higher_is_better: bool = True) -> dict:
    """One entry from every member's (see `summarize`); with a sweep `Sweep.summarize`, its
    best point by `best`."""
    if self.sweep is None:
      return summarize(entries, self.seeds)
    if best is None:
      raise ValueError("a sweep's summary needs the key that picks the best point")
    return self.sweep.summarize(entries, self.base, best=best,
                                higher_is_better=higher_is_better)


def curve(history: list[dict], split: str, key: str):
  """A metric per epoch from `fit`'s history: a list (one seed), or members x epochs from
  the records' "per_seed" (plots draw it as a mean with a band)."""
  per = [h.get("per_seed", {}).get(split, {}).get(key) for h in history]
  if not history or any(p is None for p in per):
    return [h.get(split, {}).get(key, np.nan) for h in history]
  return np.array(per, dtype=float).T


def is_number(v) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


def summarize(entries: Sequence[dict], seeds: Sequence[int] | None = None) -> dict:
  """One summary entry from each seed's results (settings are added by the caller): a number
  becomes the mean over seeds under its own key, its sample standard deviation (ddof=1) under `<key>_std` and every seed's value in
  `per_seed[key]` (`per_seed[key][i]` is seed i's); a list of numbers is averaged element by
  element; nested dicts are summarised the same way; other values kept when all seeds agree,
  else listed per seed. One entry is returned unchanged."""
  entries = list(entries)
  if len(entries) == 1:
    return entries[0]
  out, per = {}, {}
  for key in entries[0]:
    vals = [e.get(key) for e in entries]
    if all(is_number(v) for v in vals):
      out[key] = float(np.mean(vals))
      out[f"{key}_std"] = float(np.std(vals, ddof=1))
      per[key] = vals
    elif all(isinstance(v, dict) for v in vals):
      out[key] = summarize(vals)
    elif (all(isinstance(v, (list, tuple)) for v in vals) and len({len(v) for v in vals}) == 1
          and all(is_number(x) for v in vals for x in v)):
      out[key] = np.mean(np.asarray(vals, dtype=float), 0).tolist()
      per[key] = vals
    elif all(v == vals[0] for v in vals):
      out[key] = vals[0]
    else:
      out[key] = per[key] = vals
  if per:
    out["per_seed"] = per
  if seeds is not None:
    out["seeds"] = list(seeds)
  return out


def spread(entry: dict, key: str, fmt: str = ".4f") -> str:
  """`0.8953 +- 0.0021 (8 seeds)` from a summarised entry; the value alone for one seed."""
  value = entry[key]
  if f"{key}_std" not in entry:
    return format(value, fmt)
  return f"{value:{fmt}} +- {entry[f'{key}_std']:{fmt}} ({len(entry['per_seed'][key])} seeds)"
