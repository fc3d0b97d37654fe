"""`--sweep NAME=V1,V2,... [NAME=...]`: the grid of those values, crossed with `--seeds N`,
trained as the members of one program (`dlcore.train.members`): each point's numbers enter
the step as arrays in the optimizer state (`dlcore.optim.injected`), so one compilation
serves every point.

    sweep = Sweep.of(cfg)                        # None without --sweep
    seeds, hyper = sweep.members(seed_list)      # member i: seeds[i] with hyperparams hyper[i]
    entry = sweep.summarize(member_entries, seed_list, best="test_accuracy")
    sweep.write(run, entry, key="test_accuracy", curves={...})

An experiment names what it can sweep in its Config: `SWEEPABLE` (a ClassVar tuple of its
option names that enter the step as numbers: members of one program) and `SWEEP_SHAPES`
(options that change shapes or the program: one program per value, the numbers vmapped
inside each); `cli.parse` refuses any other name before any work, with one line that lists
them. Member (point P, seed S) computes what the single
run with P's options and `--seed S` computes, to float rounding (tests/test_sweeps.py).
"""
from __future__ import annotations

import csv
import dataclasses
import io
import itertools
import math
import typing
from typing import Sequence

import numpy as np

from dlcore.harness.errors import ConfigError


def sweepable(config_cls) -> tuple[str, ...]:
  """The names `--sweep` takes: numbers in the step (SWEEPABLE), then the options that change
  shapes or the program (SWEEP_SHAPES: one program per value)."""
  return (*numeric(config_cls), *shapes(config_cls))


def numeric(config_cls) -> tuple[str, ...]:
  return tuple(getattr(config_cls, "SWEEPABLE", ()))


def shapes(config_cls) -> tuple[str, ...]:
  return tuple(getattr(config_cls, "SWEEP_SHAPES", ()))


def _cast(cfg, name: str, text: str):
  """`text` as the type of `cfg.name` (int or float)."""
  kind = typing.get_type_hints(type(cfg))[name]
  kind = typing.get_args(kind)[0] if typing.get_origin(kind) is typing.Annotated else kind
  if typing.get_args(kind):  # `float | None`: the number
    kind = next(k for k in typing.get_args(kind) if k is not type(None))
  try:
    value = kind(text)
  except ValueError:
    raise ConfigError(f"--sweep {name}: {text!r} is not a{'n' if kind is int else ''} "
                      f"{kind.__name__}") from None
  if isinstance(value, float) and not math.isfinite(value):
    raise ConfigError(f"--sweep {name}: {text!r} is not a finite number")
  return value


def parse(cfg, specs: Sequence[str]) -> dict[str, list]:
  """{name: values} from `NAME=V1,V2,...` items; one line (ConfigError) for a name the
  experiment cannot sweep, a repeated name or value, or a value its option refuses."""
  from dlcore.harness import cli
  names = sweepable(type(cfg))
  grid: dict[str, list] = {}
  common = getattr(cfg, "common", None)
  if specs and getattr(common, "mode", None) == "pmap":
    raise ConfigError("--sweep cannot run under --mode pmap (its points are members); use "
                      "--mode sharded, which splits them over the devices")
  changed = set(getattr(common, "allow_change", ()) if specs else ()) & {*names, "sweep"}
  if changed:  # the numbers live in the checkpoint's optimizer state: a change would be lost
    raise ConfigError(f"--allow-change {' '.join(sorted(changed))}: a sweep's numbers are in "
                      "its checkpoints and cannot change on --resume; start a new --workdir")
  for spec in specs:
    name, eq, values = spec.partition("=")
    name = name.strip().replace("-", "_")
    if name not in names:
      listed = ", ".join(names) if names else "none (this experiment has no --sweep yet)"
      raise ConfigError(f"--sweep {spec}: cannot sweep {name!r}; sweepable: {listed}")
    if not eq or not values.strip():
      raise ConfigError(f"--sweep {spec}: give NAME=V1,V2,... (e.g. {name}=0.01,0.05)")
    if name in grid:
      raise ConfigError(f"--sweep names {name} twice; give all its values in one item")
    vals = [_cast(cfg, name, v.strip()) for v in values.split(",")]
    if len(set(vals)) != len(vals):
      raise ConfigError(f"--sweep {spec}: a value is repeated")
    for v in vals:  # each value within its option's range, as --NAME V would be checked
      cli.check(dataclasses.replace(cfg, **{name: v}))
    grid[name] = vals
  return grid


@dataclasses.dataclass(frozen=True)
class Sweep:
  grid: dict[str, list]

  @classmethod
  def of(cls, cfg) -> "Sweep | None":
    specs = getattr(getattr(cfg, "common", None), "sweep", ())
    return cls(parse(cfg, specs)) if specs else None

  @property
  def names(self) -> tuple[str, ...]:
    return tuple(self.grid)

  def programs(self, static: Sequence[str]) -> list[tuple[dict, "Sweep"]]:
    """One (shape point, the numeric rest of the grid) per program: the values of the names
    in `static` change the program; the others are members inside each."""
    fixed = [n for n in self.names if n in static]
    rest = Sweep({n: v for n, v in self.grid.items() if n not in static})
    return [(dict(zip(fixed, vals)), rest)
            for vals in itertools.product(*(self.grid[n] for n in fixed))]

  def ordered(self, static: Sequence[str]) -> "Sweep":
    """The same grid with the names in `static` first: its points are in the order of
    `programs` (each program's members one after another)."""
    return Sweep({n: self.grid[n] for n in sorted(self.names, key=lambda n: n not in static)})

  @property
  def points(self) -> list[dict]:
    """Every point of the grid, the first name varying slowest."""
    return [dict(zip(self.grid, vals)) for vals in itertools.product(*self.grid.values())]

  def members(self, seeds: Sequence[int]) -> tuple[list[int], list[dict]]:
    """(each member's seed, each member's hyperparameters): point-major, so member
    p * len(seeds) + s is point p with seeds[s]."""
    pairs = [(s, p) for p in self.points for s in seeds]
    return [s for s, _ in pairs], [p for _, p in pairs]

  @staticmethod
  def label(point: dict) -> str:
    return " ".join(f"{k}={v:g}" for k, v in point.items())

  def summarize(self, entries: Sequence[dict], seeds: Sequence[int], *, best: str,
                higher_is_better: bool = True) -> dict:
    """The summary entry of a sweep from every member's entry (point-major, as `members`):
    "sweep" lists each point {"point", <key>: mean over seeds, <key>_std, "per_seed"};
    the top level holds the best point's numbers (by `best`) and "best_point"."""
    from dlcore.harness.seeds import summarize
    n = len(seeds)
    rows = []
    for i, point in enumerate(self.points):
      part = list(entries[i * n:(i + 1) * n])
      rows.append({"point": point, **summarize(part, seeds if n > 1 else None)})
    def rank(row):  # a NaN (a diverged point) ranks last either way
      v = row[best]
      return (not math.isnan(v), v if higher_is_better else -v)
    top = max(rows, key=rank)
    out = {k: v for k, v in top.items() if k != "point"}
    out |= {"best_point": top["point"], "best_by": best, "sweep": rows}
    return out

  def write(self, run, entry: dict, seeds: Sequence[int], keys: Sequence[str], *,
            curves: dict[str, np.ndarray] | None = None, title: str = "",
            name: str = "sweep") -> None:
    """<name>.csv (a row per point and seed), a markdown table in the log, a plot of each
    final metric in `keys` against each swept name (<name>_<key>.png), the learning curves
    of every point in one figure (`curves`: metric name -> members x epochs;
    <name>_curves_<metric>.png), and last the best point's line."""
    from dlcore import files
    from dlcore.harness import plots
    from dlcore.harness.writers import say
    rows = entry["sweep"]
    out = io.StringIO()
    table = csv.writer(out, lineterminator="\n")
    table.writerow([*self.names, "seed", *keys])
    for row in rows:
      per = row.get("per_seed", {})
      for j, seed in enumerate(seeds):
        # per seed where the seeds differ; a value all seeds share, or a point's only seed
        values = [per[k][j] if k in per else row[k] if len(seeds) == 1 or not isinstance(
            row[k], (list, dict)) else "" for k in keys]
        table.writerow([*(row["point"][k] for k in self.names), seed, *values])
    files.write_text(run.file(f"{name}.csv"), out.getvalue())
    head = f"| {' | '.join(self.names)} | " + " | ".join(keys) + " |"
    lines = [head, "|" + "---|" * (len(self.names) + len(keys))]
    for row in rows:
      cells = [f"{row[k]:.4f}" + (f" +- {row[k + '_std']:.4f}" if k + "_std" in row else "")
               for k in keys]
      point = " | ".join(format(row["point"][k], "g") for k in self.names)
      lines.append(f"| {point} | " + " | ".join(cells) + " |")
    say((f"{title}\n" if title else "") + "\n".join(lines))
    for key in keys:
      plots.sweep(rows, self.names, key, run.file(f"{name}_{key}.png"), seeds=len(seeds),
                  title=title)
    if curves:
      n = len(seeds)
      for key, per_member in curves.items():  # a list: points may differ in epochs
        series = {self.label(p): np.asarray(per_member[i * n:(i + 1) * n], dtype=float)
                  if n > 1 else np.asarray(per_member[i], dtype=float)
                  for i, p in enumerate(self.points)}
        plots.curves(series, run.file(f"{name}_curves_{key}.png"), xlabel="epoch", ylabel=key,
                     title=f"{title}: {key} of every point")
    say(f"best point: {self.label(entry['best_point'])} with {entry['best_by']} "
        f"{entry[entry['best_by']]:.4f}" + (f" (mean of {len(seeds)} seeds)"
                                           if len(seeds) > 1 else ""))
