"""Data parallelism across processes: one step's time on 1 device, on 1 process x 2 devices
(sharded), and on 2 processes x 1 device (sharded over jax.distributed, gloo on CPU).

    python -m benchmarks.processes                      # MLP (2.3.1) and LeNet (4.5) steps
    python -m benchmarks.processes --cases mnist_mlp --rounds 3

Each setting runs in fresh processes (the 2-process one through `python -m dlcore.launch`),
one after another in one invocation; each times the same global batch, the case's step from
`benchmarks.cases`, for `--rounds` rounds of >= 0.2 s and reports the median ms per step. The
table gives each setting's time over the 1-device time. On a CPU machine the host devices
and the processes share the same cores: this measures the cost of the machinery (collectives
through gloo, per-step synchronisation), not a speed-up.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import statistics
import subprocess
import sys
import time

SETTINGS = (("1 device", 1, 1), ("1 process x 2 devices", 1, 2), ("2 processes x 1 device", 2, 1))
DEFAULT_CASES = ("mnist_mlp", "lenet")
RESULT = "RESULT "


def worker(cases: list[str], devices: int, rounds: int) -> None:
  """Times each case in this process (joined to a job when DLCORE_* are set)."""
  from dlcore import distributed
  from dlcore.train.modes import set_host_devices

  set_host_devices(devices)
  several = distributed.initialize()
  import jax
  import numpy as np
  from jax.experimental import multihost_utils

  from benchmarks.cases import CASES
  from dlcore.train import Runner

  out = {}
  for name in cases:
    case = CASES[name]
    parallel = several or devices > 1
    runner = Runner("sharded" if parallel else "jit", devices=devices if parallel else None)
    state, step, batch = case.build()
    step = runner.compile(step)
    state, batch = runner.put_state(state), runner.put_batch(batch)
    state, m = step(state, batch)  # compile
    jax.block_until_ready((state, m))
    t0 = time.perf_counter()
    for _ in range(5):
      state, m = step(state, batch)
    jax.block_until_ready((state, m))
    # Steps per round (>= 0.2 s): process 0's count for all, or their collectives mismatch.
    n = max(5, int(0.2 / ((time.perf_counter() - t0) / 5)))
    n = int(multihost_utils.broadcast_one_to_all(np.int32(n))) if several else n
    times = []
    for _ in range(rounds):
      t0 = time.perf_counter()
      for _ in range(n):
        state, m = step(state, batch)
      jax.block_until_ready((state, m))
      times.append((time.perf_counter() - t0) / n * 1e3)
    out[name] = {"ms": statistics.median(times), "rounds_ms": times, "batch": case.batch,
                 "steps_per_round": n, "devices_total": runner.devices}
  if distributed.is_primary():
    print(RESULT + json.dumps(out), flush=True)


def _measure(processes: int, devices: int, cases, rounds) -> dict:
  args = ["benchmarks.processes", "--worker", "--devices", str(devices), "--rounds",
          str(rounds), "--cases", *cases]
  cmd = [sys.executable, "-m", *(["dlcore.launch", "-n", str(processes), *args]
                                 if processes > 1 else args)]
  env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
  proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
  lines = [l for l in proc.stdout.splitlines() if l.startswith(RESULT)]
  if proc.returncode or not lines:
    raise SystemExit(f"error: {processes} process(es) x {devices} device(s) failed "
                     f"(exit {proc.returncode}): {proc.stderr.strip().splitlines()[-1:]}")
  return json.loads(lines[-1][len(RESULT):])


def main(argv=None) -> None:
  p = argparse.ArgumentParser(prog="python -m benchmarks.processes", description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument("--cases", nargs="+", default=list(DEFAULT_CASES),
                 help="benchmark case ids (benchmarks.cases), batch divisible by 2")
  p.add_argument("--rounds", type=int, default=5, help="timing rounds of >= 0.2 s each")
  p.add_argument("--out", default="benchmarks/results/processes-cpu-2core",
                 help="path prefix of the .json and .md results")
  p.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
  p.add_argument("--devices", type=int, default=1, help=argparse.SUPPRESS)
  a = p.parse_args(argv)
  if a.worker:
    worker(a.cases, a.devices, a.rounds)
    return
  results = {}
  for label, procs, devs in SETTINGS:
    print(f"timing {label} ...", file=sys.stderr, flush=True)
    results[label] = _measure(procs, devs, a.cases, a.rounds)
  base = SETTINGS[0][0]
  rows = ["| case (batch) | " + " | ".join(f"{label} ms" for label, _, _ in SETTINGS)
          + " | " + " | ".join(f"{label} / 1 device" for label, _, _ in SETTINGS[1:]) + " |",
          "|---" * (2 * len(SETTINGS)) + "|"]
  for name in a.cases:
    ms = [results[label][name]["ms"] for label, _, _ in SETTINGS]
    rows.append(f"| {name} ({results[base][name]['batch']}) | "
                + " | ".join(f"{m:.3f}" for m in ms) + " | "
                + " | ".join(f"{m / ms[0]:.2f}x" for m in ms[1:]) + " |")
  table = "\n".join(rows)
  print(table)
  import jax
  meta = {"date": datetime.date.today().isoformat(), "jax": jax.__version__,
          "backend": jax.default_backend(), "cpu_count": os.cpu_count(),
          "command": "python -m benchmarks.processes " + " ".join(argv or sys.argv[1:])}
  os.makedirs(os.path.dirname(a.out) or ".", exist_ok=True)
  with open(a.out + ".json", "w") as f:
    json.dump({"meta": meta, "results": results}, f, indent=2)
  with open(a.out + ".md", "w") as f:
    f.write(f"{meta['command']} ({meta['date']}, jax {meta['jax']}, {meta['backend']}, "
            f"{meta['cpu_count']} cores)\n\n{table}\n")


if __name__ == "__main__":
  main()
