"""Run directories: config, metrics (JSON lines, optional TensorBoard), figures, summary."""
from __future__ import annotations

import json
import os

from dlcore.harness.writers import (ConsoleWriter, JsonlWriter, MultiWriter, TensorBoardWriter,
                                    jsonable, say)


class RunDir:
  """A run's output folder, and the metric writer that `fit` writes to.

  config.json   the experiment's configuration
  metrics.jsonl one JSON object per logged row (`split`, `step`, metrics)
  summary.json  SPEC id -> final metrics, merged across calls to `update_summary`
  tb/           TensorBoard events (with `tensorboard=True`; needs tensorboardX)
  *.png         figures; checkpoints/ and model/ for saved states
  """

  def __init__(self, path: str, *, tensorboard: bool = False, console: tuple[str, ...] = ()):
    self.path = os.path.abspath(path)
    os.makedirs(self.path, exist_ok=True)
    writers = [JsonlWriter(os.path.join(self.path, "metrics.jsonl"))]
    if console:
      writers.append(ConsoleWriter(console))
    if tensorboard:
      writers.append(TensorBoardWriter(os.path.join(self.path, "tb")))
    self.writer = MultiWriter(writers)

  def file(self, *parts: str) -> str:
    p = os.path.join(self.path, *parts)
    os.makedirs(os.path.dirname(p), exist_ok=True)
    return p

  def write_config(self, config) -> None:
    with open(self.file("config.json"), "w") as f:
      json.dump(jsonable(config), f, indent=2)

  def write(self, split: str, step: int, metrics: dict, **extra) -> None:
    self.writer.write(split, step, metrics, **extra)

  log = write  # older name

  def update_summary(self, entries: dict) -> dict:
    path = self.file("summary.json")
    summary = {}
    if os.path.exists(path):
      with open(path) as f:
        summary = json.load(f)
    summary.update(jsonable(entries))
    with open(path, "w") as f:
      json.dump(summary, f, indent=2, sort_keys=True)
    return summary

  def close(self) -> None:
    self.writer.close()


def read_metrics(path: str) -> list[dict]:
  """Rows of a run's metrics.jsonl (path to the run directory or the file)."""
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.jsonl")
  with open(path) as f:
    return [json.loads(line) for line in f if line.strip()]


def start_run(cfg, name: str, *, console: tuple[str, ...] = ()):
  """Common experiment start: host devices, run directory, config.json, Runner.

  `cfg.common` is a `dlcore.harness.cli.Common`. Returns (RunDir, Runner)."""
  from dlcore.train.modes import Runner, set_host_devices

  common = cfg.common
  if common.devices:
    set_host_devices(common.devices)
  run = RunDir(common.workdir.format(name=name), tensorboard=common.tensorboard,
               console=console)
  run.write_config(cfg)
  runner = Runner(common.mode, devices=common.devices)
  say(f"[{name}] mode={common.mode} devices={runner.devices} run directory: {run.path}")
  return run, runner
