"""Seeds as members: each experiment with `--seeds 1` and `--seeds N` in one invocation, their
wall times (the whole command: start-up, data, training, evaluation, figures) and the numbers
with their spread over the N seeds.

    python -m benchmarks.seeds                            # every case, 8 seeds
    python -m benchmarks.seeds --cases planar --seeds 8   # the acceptance: < 3x of one seed

Each run is a fresh process (`python -m experiments.<name> ... --seeds N --no-progress`) in a
temporary run directory, one after another, so the machine is shared by nothing else of
ours. Writes `benchmarks/results/seeds-<label>.{json,md}`: per case the wall time of one
seed, of N seeds, their ratio, and each reported number as mean +- std (ddof=1) over the
seeds beside the single run (seed 0, = member 0).
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

# case -> (command after `python -m`, [(summary id, key path, label)])
CASES = {
    "planar": (["experiments.planar"],
               [(i, ("loss",), f"{i} loss") for i in ("0.1", "0.2", "0.3", "0.4", "0.5")]),
    "two_layer": (["experiments.two_layer"],
                  [(i, ("loss",), f"{i} loss") for i in ("1.1", "1.4", "1.5", "1.6")]),
    "fizzbuzz": (["experiments.fizzbuzz"], [("1.7", ("correct_of_100",), "1.7 correct of 100")]),
    "spiral": (["experiments.spiral"],
               [(i, ("test_accuracy",), f"{i} test accuracy") for i in ("3.1", "3.2", "3.3")]
               + [("3.4", ("train_accuracy",), "3.4 train accuracy"),
                  ("3.4", ("test_accuracy",), "3.4 test accuracy")]),
    "basics": (["experiments.basics"], [("2.2.1", ("numpy", "w"), "2.2.1 w (NumPy)"),
                                        ("2.2.1", ("numpy", "b"), "2.2.1 b (NumPy)"),
                                        ("2.2.1", ("jit", "loss"), "2.2.1 loss (jit)")]),
    "lstm_tagger": (["experiments.lstm", "--task", "tagger"],
                    [("2.7.1", ("final_train_loss",), "2.7.1 final train NLL")]),
    "lstm_timeseries": (["experiments.lstm", "--task", "timeseries"],
                        [("2.7.2", ("test_mse",), "2.7.2 test MSE (normalised)")]),
    "mnist_mlp": (["experiments.mnist_mlp", "--dataset", "fashion_mnist", "--no-compare"],
                  [("2.3.1", ("test_accuracy",), "2.3.1 test accuracy (Fashion-MNIST)")]),
    "vae": (["experiments.vae", "--dataset", "fashion_mnist"],
            [("2.8.1", ("test_loss",), "2.8.1 test loss per sample (Fashion-MNIST)"),
             ("2.8.1", ("frechet_distance",), "2.8.1 Frechet distance")]),
}


def run(case: str, seeds: int, workdir: str) -> tuple[float, dict]:
  cmd, _ = CASES[case]
  argv = [sys.executable, "-m", *cmd, "--workdir", workdir, "--no-progress"]
  # fizzbuzz and the tagger default to 10 seeds: ask for the count explicitly
  argv += ["--seeds", str(seeds)]
  start = time.perf_counter()
  out = subprocess.run(argv, cwd=ROOT, capture_output=True, text=True)
  wall = time.perf_counter() - start
  if out.returncode != 0:
    raise SystemExit(f"{case} --seeds {seeds} failed:\n{out.stderr[-2000:]}")
  with open(os.path.join(workdir, "summary.json")) as f:
    return wall, json.load(f)


def _get(entry: dict, path: tuple) -> tuple[float, float | None]:
  """(value, std or None) at `path` of a summary entry."""
  *parents, key = path
  for p in parents:
    entry = entry[p]
  return entry[key], entry.get(f"{key}_std")


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   prog="python -m benchmarks.seeds")
  parser.add_argument("--cases", nargs="+", choices=list(CASES), default=list(CASES))
  parser.add_argument("--seeds", type=int, default=8, help="members of the N-seed run")
  parser.add_argument("--label", default="cpu-2core", help="results file name part")
  parser.add_argument("--out", default=os.path.join(ROOT, "benchmarks", "results"))
  args = parser.parse_args(argv)
  rows = []
  with tempfile.TemporaryDirectory() as tmp:
    for case in args.cases:
      w1, s1 = run(case, 1, os.path.join(tmp, f"{case}-1"))
      wn, sn = run(case, args.seeds, os.path.join(tmp, f"{case}-{args.seeds}"))
      numbers = []
      for sid, path, label in CASES[case][1]:
        one, _ = _get(s1[sid], path)
        mean, std = _get(sn[sid], path)
        numbers.append({"label": label, "seed_0": one, "mean": mean, "std": std})
      rows.append({"case": case, "wall_1_s": round(w1, 1), f"wall_{args.seeds}_s": round(wn, 1),
                   "ratio": round(wn / w1, 2), "numbers": numbers})
      print(f"{case}: 1 seed {w1:.1f} s, {args.seeds} seeds {wn:.1f} s ({wn / w1:.2f}x)",
            flush=True)
  meta = {"date": datetime.date.today().isoformat(), "seeds": args.seeds,
          "command": "python -m benchmarks.seeds " + " ".join(argv or sys.argv[1:]),
          "cpus": os.cpu_count()}
  os.makedirs(args.out, exist_ok=True)
  base = os.path.join(args.out, f"seeds-{args.label}")
  with open(base + ".json", "w") as f:
    json.dump({"meta": meta, "rows": rows}, f, indent=2)
  n = args.seeds
  lines = [f"`{meta['command']}` ({meta['date']}, {meta['cpus']} CPUs)", "",
           f"| case | 1 seed (s) | {n} seeds (s) | ratio | number | seed 0 | mean +- std over {n} |",
           "|---|---|---|---|---|---|---|"]
  for r in rows:
    for j, num in enumerate(r["numbers"]):
      head = (f"| {r['case']} | {r['wall_1_s']} | {r[f'wall_{n}_s']} | {r['ratio']}x "
              if j == 0 else "| | | | ")
      std = "" if num["std"] is None else f" +- {num['std']:.4g}"
      lines.append(f"{head}| {num['label']} | {num['seed_0']:.4g} | {num['mean']:.4g}{std} |")
  with open(base + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
