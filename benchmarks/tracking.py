"""What tracking costs a run: the same command without `--track`, with `--track mlflow`
(a real MLflow server on 127.0.0.1, SQLite store) and with all three trackers (W&B offline),
alternating, in one run. Reports each run's wall time and its training steps' seconds
(summary.json's `timings`), and the ratios to the untracked run.

    python -m benchmarks.tracking                       # mnist_mlp on Fashion-MNIST, 5 epochs
    python -m benchmarks.tracking --repeats 3 --epochs 10

Writes `benchmarks/results/tracking-<label>.{json,md}`. Needs the `mlflow` and `wandb` extras.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SERVER_WAIT_S = 90


class MlflowServer:
  """`mlflow server` on a free port of 127.0.0.1 with its SQLite store and artifacts in
  `folder`; `stop` kills it (as a crash would), `start` brings it back on the same port and
  store. Used by tests/test_track.py too."""

  def __init__(self, folder: str):
    self.folder = str(folder)
    os.makedirs(self.folder, exist_ok=True)
    with socket.socket() as s:
      s.bind(("127.0.0.1", 0))
      self.port = s.getsockname()[1]
    self.uri = f"http://127.0.0.1:{self.port}"
    self.proc = None

  def start(self) -> "MlflowServer":
    self.log = open(os.path.join(self.folder, "server.log"), "a")
    self.proc = subprocess.Popen(
        [sys.executable, "-m", "mlflow", "server", "--host", "127.0.0.1", "--port",
         str(self.port), "--workers", "1",
         "--backend-store-uri", f"sqlite:///{self.folder}/mlflow.db",
         "--default-artifact-root", f"{self.folder}/artifacts"],
        stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True)
    deadline = time.monotonic() + SERVER_WAIT_S
    while time.monotonic() < deadline:
      if self.proc.poll() is not None:
        raise RuntimeError("mlflow server ended: "
                           + open(os.path.join(self.folder, "server.log")).read()[-2000:])
      try:
        with urllib.request.urlopen(f"{self.uri}/health", timeout=2) as r:
          if r.status == 200:
            return self
      except OSError:
        time.sleep(0.3)
    self.stop()
    raise TimeoutError(f"mlflow server not up after {SERVER_WAIT_S} s")

  def stop(self) -> None:
    if self.proc is not None and self.proc.poll() is None:
      os.killpg(self.proc.pid, signal.SIGKILL)
      self.proc.wait(30)
    if getattr(self, "log", None) is not None:
      self.log.close()

  def client(self):
    import mlflow
    return mlflow.MlflowClient(self.uri)


VARIANTS = {"none": [], "mlflow": ["--track", "mlflow"], "wandb": ["--track", "wandb"],
            "tensorboard": ["--track", "tensorboard"],
            "all three": ["--track", "mlflow", "wandb", "tensorboard"]}


def main(argv=None) -> int:
  p = argparse.ArgumentParser(prog="python -m benchmarks.tracking", description=__doc__)
  p.add_argument("--dataset", default="fashion_mnist")
  p.add_argument("--epochs", type=int, default=5)
  p.add_argument("--repeats", type=int, default=2)
  p.add_argument("--label", default="cpu")
  args = p.parse_args(argv)
  cmd = ["experiments.mnist_mlp", "--dataset", args.dataset, "--no-compare", "--epochs",
         str(args.epochs), "--no-progress"]
  results: dict[str, list[dict]] = {v: [] for v in VARIANTS}
  with tempfile.TemporaryDirectory() as tmp:
    server = MlflowServer(os.path.join(tmp, "mlflow")).start()
    env = dict(os.environ, WANDB_MODE="offline", MLFLOW_TRACKING_URI=server.uri)
    try:
      for r in range(args.repeats):
        for name, extra in VARIANTS.items():
          workdir = os.path.join(tmp, f"{name.replace(' ', '_')}-{r}")
          start = time.monotonic()
          out = subprocess.run([sys.executable, "-m", *cmd, *extra, "--workdir", workdir],
                               cwd=ROOT, env=env, capture_output=True, text=True,
                               timeout=1800)
          wall = time.monotonic() - start
          if out.returncode != 0 or "warning" in out.stderr:
            raise SystemExit(f"{name}: rc {out.returncode}\n{out.stderr[-2000:]}")
          with open(os.path.join(workdir, "summary.json")) as f:
            timings = json.load(f)["timings"]
          results[name].append({"wall_s": round(wall, 2),
                                "steps_s": timings["training steps"]})
          print(f"{name:10s} repeat {r}: {wall:6.1f} s whole, "
                f"{timings['training steps']:6.2f} s of training steps", flush=True)
    finally:
      server.stop()
  base = {k: statistics.median(x[k] for x in results["none"]) for k in ("wall_s", "steps_s")}
  lines = [f"mnist_mlp on {args.dataset}, {args.epochs} epochs, {args.repeats} repeats "
           f"(medians), {datetime.date.today()}:", "",
           "| trackers | whole run (s) | x untracked | training steps (s) | x untracked |",
           "|---|---|---|---|---|"]
  for name, rows in results.items():
    w = statistics.median(x["wall_s"] for x in rows)
    s = statistics.median(x["steps_s"] for x in rows)
    lines.append(f"| {name} | {w:.1f} | {w / base['wall_s']:.2f} | {s:.2f} | "
                 f"{s / base['steps_s']:.2f} |")
  print("\n".join(lines))
  os.makedirs(os.path.join(ROOT, "benchmarks", "results"), exist_ok=True)
  stem = os.path.join(ROOT, "benchmarks", "results", f"tracking-{args.label}")
  with open(stem + ".json", "w") as f:
    json.dump({"command": cmd, "results": results}, f, indent=1)
  with open(stem + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  return 0


if __name__ == "__main__":
  sys.exit(main())
