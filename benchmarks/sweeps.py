"""A learning-rate sweep as one command (`--sweep lr=...`, every point a member of one
program) against the same points as separate commands, whole wall time, in one run.

    python -m benchmarks.sweeps                                 # every case, 8 points
    python -m benchmarks.sweeps --cases spiral mnist_mlp        # the acceptance: <= 1/3

Each command is a fresh process (`python -m experiments.<name> ... --no-progress`) in a
temporary run directory, one after another, with JAX's compilation cache off (each of the
separate commands would otherwise reuse the first one's programs, which a user's first sweep
cannot). Also checks that every point's number from the sweep equals its separate command's
(the largest relative difference is reported). Writes
`benchmarks/results/sweeps-<label>.{json,md}`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# 8 learning rates spanning two decades around each experiment's default.
LRS = {
    "spiral": [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2],
    "fizzbuzz": [0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5],
    "mnist_mlp": [0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2],
    "vae": [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2],
    "cnn": [1e-4, 2e-4, 5e-4, 1e-3, 2e-3, 5e-3, 1e-2, 2e-2],
}
# case -> (command after `python -m`, summary id, key compared between the two ways)
CASES = {
    "spiral": (["experiments.spiral"], "3.1", "final_train_loss"),
    "fizzbuzz": (["experiments.fizzbuzz", "--seeds", "1", "--epochs", "1000"], "1.7",
                 "final_train_loss"),
    "mnist_mlp": (["experiments.mnist_mlp", "--dataset", "digits", "--no-compare"], "2.3.1",
                  "test_loss"),
    "vae": (["experiments.vae", "--dataset", "fashion_mnist", "--epochs", "2",
             "--score-samples", "0"], "2.8.1", "test_loss"),
    "cnn": (["experiments.cnn", "--dataset", "fashion_mnist", "--epochs", "2", "--no-demos"],
            "2.6.2", "test_loss"),
}


def run(argv: list[str], workdir: str) -> tuple[float, dict]:
  env = {**os.environ, "DLCORE_JAX_CACHE": "0"}
  start = time.perf_counter()
  out = subprocess.run([sys.executable, "-m", *argv, "--workdir", workdir, "--no-progress"],
                       cwd=ROOT, capture_output=True, text=True, env=env)
  wall = time.perf_counter() - start
  if out.returncode != 0:
    raise SystemExit(f"{' '.join(argv)} failed:\n{out.stderr[-2000:]}")
  with open(os.path.join(workdir, "summary.json")) as f:
    return wall, json.load(f)


def measure(case: str, lrs: list[float], tmp: str) -> dict:
  cmd, sid, key = CASES[case]
  one_wall, one = run([*cmd, "--sweep", "lr=" + ",".join(map(str, lrs))],
                      os.path.join(tmp, f"{case}-sweep"))
  walls, diffs = [], []
  for i, lr in enumerate(lrs):
    wall, single = run([*cmd, "--lr", str(lr)], os.path.join(tmp, f"{case}-{i}"))
    walls.append(wall)
    a, b = one[sid]["sweep"][i][key], single[sid][key]
    diffs.append(abs(a - b) / max(abs(b), 1e-12))
  separate = sum(walls)
  return {"points": len(lrs), "sweep_s": round(one_wall, 1), "separate_s": round(separate, 1),
          "ratio": round(one_wall / separate, 3), "key": f"{sid} {key}",
          "max_rel_diff": max(diffs), "rel_diff_per_point": dict(zip(map(str, lrs), diffs)),
          "best_point": one[sid]["best_point"]}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   prog="python -m benchmarks.sweeps")
  parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
  parser.add_argument("--label", default="cpu-2core", help="results file name part")
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
  args = parser.parse_args(argv)
  results = {}
  with tempfile.TemporaryDirectory() as tmp:
    for case in args.cases:
      r = results[case] = measure(case, LRS[case], tmp)
      print(f"{case}: one command {r['sweep_s']} s, {r['points']} commands {r['separate_s']} s "
            f"({r['ratio']:.2f}x); {r['key']} max relative difference {r['max_rel_diff']:.2g}",
            flush=True)
  meta = {"date": datetime.date.today().isoformat(), "cpus": os.cpu_count(),
          "command": "python -m benchmarks.sweeps " + " ".join(argv or sys.argv[1:])}
  os.makedirs(args.out, exist_ok=True)
  base = os.path.join(args.out, f"sweeps-{args.label}")
  with open(base + ".json", "w") as f:
    json.dump({"meta": meta, "results": results}, f, indent=2)
  lines = [f"`{meta['command']}` ({meta['date']}, {meta['cpus']} CPUs, compilation cache off)",
           "", "| case | points | one command (s) | separate commands (s) | ratio | compared | "
           "max relative difference | best point |", "|---|---|---|---|---|---|---|---|"]
  for case, r in results.items():
    best = " ".join(f"{k}={v:g}" for k, v in r["best_point"].items())
    lines.append(f"| {case} | {r['points']} | {r['sweep_s']} | {r['separate_s']} | "
                 f"{r['ratio']:.2f}x | {r['key']} | {r['max_rel_diff']:.2g} | {best} |")
  with open(base + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
