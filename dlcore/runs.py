"""Run directories: config, metrics (JSONL, optional TensorBoard), figures, summary.json."""
from __future__ import annotations

import dataclasses
import json
import math
import os
import time
from typing import Any

import numpy as np


def _jsonable(x: Any) -> Any:
  if dataclasses.is_dataclass(x) and not isinstance(x, type):
    return _jsonable(dataclasses.asdict(x))
  if isinstance(x, dict):
    return {str(k): _jsonable(v) for k, v in x.items()}
  if isinstance(x, (list, tuple)):
    return [_jsonable(v) for v in x]
  if hasattr(x, "tolist"):  # numpy / jax arrays and scalars
    return _jsonable(np.asarray(x).tolist())
  if isinstance(x, float) and not math.isfinite(x):
    return str(x)
  return x


class RunDir:
  """A run's output folder.

  config.json   the experiment's configuration
  metrics.jsonl one JSON object per logged row (`split`, `step`, metrics)
  summary.json  SPEC id -> final metrics, merged across calls to `update_summary`
  *.png         figures; checkpoints/ and models/ for saved states
  """

  def __init__(self, path: str, *, tensorboard: bool = False):
    self.path = os.path.abspath(path)
    os.makedirs(self.path, exist_ok=True)
    self._tb = None
    if tensorboard:
      try:
        from tensorboardX import SummaryWriter
      except ImportError:
        raise ImportError("TensorBoard logs need tensorboardX: pip install -e '.[tb]'") from None
      self._tb = SummaryWriter(os.path.join(self.path, "tb"))

  def file(self, *parts: str) -> str:
    p = os.path.join(self.path, *parts)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p

  def write_config(self, config: Any) -> None:
    with open(self.file("config.json"), "w") as f:
      json.dump(_jsonable(config), f, indent=2)

  def log(self, split: str, step: int, metrics: dict, **extra: Any) -> None:
    row = {"split": split, "step": int(step), **_jsonable(extra), **_jsonable(metrics),
           "time": round(time.time(), 3)}
    with open(self.file("metrics.jsonl"), "a") as f:
      f.write(json.dumps(row) + "\n")
    if self._tb is not None:
      for k, v in metrics.items():
        if np.ndim(v) == 0:
          self._tb.add_scalar(f"{split}/{k}", float(v), int(step))

  def update_summary(self, entries: dict) -> dict:
    path = self.file("summary.json")
    summary = {}
    if os.path.exists(path):
      with open(path) as f:
        summary = json.load(f)
    summary.update(_jsonable(entries))
    with open(path, "w") as f:
      json.dump(summary, f, indent=2, sort_keys=True)
    return summary

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str) -> list[dict]:
  """Rows of a run's metrics.jsonl (path to the run directory or the file)."""
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def start_run(cfg, name: str):
  """Common experiment start: host devices, run directory, config.json, Runner.

  `cfg` has the fields of `dlcore.cli.Common`. Returns (RunDir, Runner)."""
  from dlcore.train.modes import Runner, set_host_devices

  if cfg.devices:
    set_host_devices(cfg.devices)
  run = RunDir(cfg.workdir.format(name=name), tensorboard=cfg.tensorboard)
  run.write_config(cfg)
  runner = Runner(cfg.mode, devices=cfg.devices or None)
  print(f"[{name}] mode={cfg.mode} devices={runner.devices} run directory: {run.path}")
  return run, runner
