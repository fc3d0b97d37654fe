"""Metric writers for `dlcore.train.fit` (its `MetricWriter` interface: `write(split, step,
metrics, **extra)`): JSON lines always, the console on request, TensorBoard when
tensorboardX is installed. `say` prints a line without breaking a progress bar."""
from __future__ import annotations

import dataclasses
import json
import math
import time
from typing import Any, Mapping, Sequence

import numpy as np
from tqdm.auto import tqdm

from dlcore import distributed

TB_MISSING = ("error: --tensorboard needs tensorboardX, which is not installed; "
              "install it with: pip install 'dlcore[tb]'")


def say(*parts: Any) -> None:
  """`print` for experiments: a line above any running tqdm bar, never on the same line.
  Only process 0 of a job of several speaks; the others stay quiet unless they fail."""
  if distributed.is_primary():
    tqdm.write(" ".join(str(p) for p in parts))


def tensorboard_available() -> bool:
  try:
    import tensorboardX  # noqa: F401
  except ImportError:
    return False
  return True


def jsonable(x: Any) -> Any:
  """Config dataclasses, arrays and numbers as JSON values (non-finite floats as strings)."""
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return jsonable(dataclasses.asdict(x))
  if isinstance(x, dict):
    return {str(k): jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [jsonable(v) for v in x]
  if hasattr(x, "tolist"):  # numpy / jax arrays and scalars
    return jsonable(np.asarray(x).tolist())
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)
  return x


class JsonlWriter:
  """One JSON object per row: {"split", "step", extra..., metrics..., "time"}."""

  def __init__(self, path: str):
    self.path = path

  def write(self, split: str, step: int, metrics: Mapping[str, Any], **extra: Any) -> None:
    when = extra.pop("time", None)  # (MultiWriter's, the same for every writer)
    row = {"split": split, "step": int(step), **jsonable(extra), **jsonable(dict(metrics)),
           "time": round(time.time(), 3) if when is None else when}
    with open(self.path, "a") as f:
      f.write(json.dumps(row) + "\n")

  def close(self) -> None:
    pass


class ConsoleWriter:
  """Rows of the given splits as one line each: `[eval] step 1407 (epoch 3): loss 0.1234`."""

  def __init__(self, splits: Sequence[str] = ("eval",)):
    self.splits = tuple(splits)

  def write(self, split: str, step: int, metrics: Mapping[str, Any], **extra: Any) -> None:
    if split not in self.splits:
      return
    where = f" (epoch {extra['epoch'] + 1})" if "epoch" in extra else ""
    values = ", ".join(f"{k} {float(v):.4g}" for k, v in metrics.items() if np.ndim(v) == 0)
    say(f"[{split}] step {step}{where}: {values}")

  def close(self) -> None:
    pass


class TensorBoardWriter:
  """Scalar metrics as TensorBoard events under `logdir` (needs the `tb` extra)."""

  def __init__(self, logdir: str):
    try:
      from tensorboardX import SummaryWriter
    except ImportError:
      raise SystemExit(TB_MISSING) from None
    self._tb = SummaryWriter(logdir)

  def write(self, split: str, step: int, metrics: Mapping[str, Any], **extra: Any) -> None:
    for k, v in metrics.items():
      if np.ndim(v) == 0:
        self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

  def close(self) -> None:
    self._tb.close()


class MultiWriter:
  def __init__(self, writers):
    self.writers = list(writers)

  def write(self, split: str, step: int, metrics: Mapping[str, Any], **extra: Any) -> None:
    # One time for the row in every writer: a tracker then holds the folder's timestamps, so
    # a row sent again (a count lost with a killed server) is the same point, stored once.
    extra.setdefault("time", round(time.time(), 3))
    for w in self.writers:
      w.write(split, step, metrics, **extra)

  def close(self) -> None:
    # Trackers' mirrors (`end`/`join`) finish side by side, within one shared wait.
    for w in self.writers:
      (w.end if hasattr(w, "end") else w.close)()
    from dlcore.harness.track import CLOSE_WAIT_S
    deadline = time.monotonic() + CLOSE_WAIT_S
    for w in self.writers:
      if hasattr(w, "join"):
        w.join(deadline - time.monotonic())
