"""The GPU check: one prepared command for a machine with one GPU, under 8 minutes.

    python -m benchmarks.gpu_check --data-dir DIR        # on the GPU machine (make gpu-check)
    python -m benchmarks.gpu_check --small --out DIR     # the same steps, tiny, on any machine

1. the machine: JAX's backend and devices, versions;
2. the tests that touch the device, on the device (`DLCORE_TEST_PLATFORM=gpu`): precision
   (every model in bfloat16), PyTorch parity (float32 matmuls at "highest" precision: a GPU's
   default TF32 would be a different function) and the single-device modes; the
   several-device tests need as many devices and are deselected;
3. every model's jit training step in float32 / bfloat16 / float16 beside PyTorch eager and
   `torch.compile` in the same precision (`benchmarks.jit_vs_eager`, interleaved rounds);
4. one real training run, the chapter 3 MLP (`experiments.mnist_mlp`), in float32 and in
   bfloat16: seconds per epoch (after the first, which compiles) and test accuracy.
It writes `benchmarks/results/gpu-<device>-<date>.{json,md}` (with `--out`, there instead).

A GPU machine may have its own JAX (e.g. 0.11 with CUDA 13), Flax, Optax, Orbax, chex and
PyTorch, and no package index. dlcore runs there from the checkout (`PYTHONPATH=.`); what it
lacks is pure Python and travels as wheels, with the Fashion-MNIST files for step 4. Here:

    echo /.whl/ >> .git/info/exclude; echo /.data/ >> .git/info/exclude
    python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \\
        --implementation cp -d .whl tyro==1.0.17 docstring-parser==0.18.0 typeguard==4.6.1
    mkdir -p .data && cp /usr/share/datasets/fashion-mnist/*.gz .data/

and there (carrying .whl and .data):

    python3 -m pip install -q --no-index --no-deps --target /tmp/site .whl/*.whl
    PYTHONPATH=/tmp/site:. python3 -m benchmarks.gpu_check --data-dir .data

Without `--data-dir` (and no dataset installed) step 4 trains on scikit-learn's digits,
whose epochs are too short to time a GPU: the report says which data it used.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEVICE_TESTS = ["tests/test_precision.py", "tests/test_torch_parity.py", "tests/test_modes.py"]
# Tests that need several devices (one GPU has one) or run whole experiments on the CPU.
NOT_ON_ONE_DEVICE = ("not every_mode and not data_parallel and not batchnorm_statistics and "
                     "not pmap and not sharded and not resume and not gan_refuses and not "
                     "switch_default")
PRECISIONS = ("float32", "bfloat16", "float16")


def _say(msg: str) -> None:
  print(f"[gpu_check] {msg}", flush=True)


def machine() -> dict:
  import jax
  info = {"backend": jax.default_backend(), "devices": [str(d) for d in jax.devices()],
          "device_kind": jax.devices()[0].device_kind, "jax": jax.__version__,
          "python": sys.version.split()[0], "date": time.strftime("%Y-%m-%d")}
  for name in ("flax", "optax", "orbax.checkpoint", "torch"):
    try:
      info[name] = __import__(name, fromlist=["_"]).__version__
    except Exception:  # noqa: BLE001 - a missing optional package is reported, not fatal
      info[name] = None
  return info


def run_tests(small: bool, timeout: int) -> dict:
  """pytest on the device tests in a child process (JAX's platform is fixed per process)."""
  env = dict(os.environ, DLCORE_TEST_PLATFORM="gpu", JAX_DEFAULT_MATMUL_PRECISION="highest",
             PYTHONPATH=os.pathsep.join(filter(None, [ROOT, os.environ.get("PYTHONPATH")])))
  cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *DEVICE_TESTS,
         "-k", "choices_match" if small else NOT_ON_ONE_DEVICE]
  t0 = time.perf_counter()
  try:
    p = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    tail, rc = (p.stdout + p.stderr).strip().splitlines()[-15:], p.returncode
  except subprocess.TimeoutExpired:
    tail, rc = [f"pytest ran past {timeout} s"], 124
  summary = next((line for line in reversed(tail) if " passed" in line or " failed" in line),
                 tail[-1] if tail else "")
  return {"command": " ".join(cmd[1:]), "returncode": rc, "summary": summary, "tail": tail,
          "seconds": time.perf_counter() - t0}


def run_benchmark(small: bool, stem: str) -> dict:
  from benchmarks import jit_vs_eager
  args = ["--modes", "jit", "torch"] + ([] if small else ["torch_compile"])
  args += ["--precision", *PRECISIONS, "--out", stem]
  if small:
    args += ["--cases", "mlp", "--rounds", "1", "--min-time", "0.02", "--fused-steps", "10"]
  else:
    args += ["--all", "--rounds", "3", "--min-time", "0.1", "--fused-steps", "200"]
  out = jit_vs_eager.main(args)
  return {"command": "python -m benchmarks.jit_vs_eager " + " ".join(args),
          "precision_table": out["precision_table"], "files": stem + ".{json,md,png}"}


def run_training(small: bool, data_dir: str | None, workdir: str) -> dict:
  """The chapter 3 MLP in float32 and bfloat16: seconds per epoch from its epoch records."""
  from experiments import mnist_mlp
  out = {}
  for prec in ("float32", "bfloat16"):
    folder = os.path.join(workdir, f"mnist_mlp-{prec}")
    args = ["--workdir", folder, "--overwrite", "--no-progress", "--no-compare",
            "--precision", prec, "--epochs", "2" if small else "4"]
    args += (["--dataset", "fashion_mnist", "--data-dir", data_dir] if data_dir
             else ["--dataset", "digits"])
    if small:
      args += ["--train-limit", "256", "--test-limit", "128"]
    t0 = time.perf_counter()
    summary = mnist_mlp.main(args)
    wall = time.perf_counter() - t0
    with open(os.path.join(folder, "metrics.jsonl")) as f:
      rows = [json.loads(line) for line in f]
    ends = [r["time"] for r in rows if r.get("split") == "eval"]  # one per epoch
    entry = summary["2.3.1"]
    out[prec] = {"seconds_per_epoch": ((ends[-1] - ends[0]) / (len(ends) - 1)
                                       if len(ends) > 1 else None),
                 "wall_s": wall, "epochs": entry["epochs"],
                 "test_accuracy": entry["test_accuracy"], "dataset": entry["dataset_name"],
                 "command": "python -m experiments.mnist_mlp " + " ".join(args)}
  return out


def markdown(report: dict) -> str:
  m, t = report["machine"], report["tests"]
  lines = [f"# GPU check, {m['date']}: {m['device_kind']} ({m['backend']})", "",
           f"jax {m['jax']}, flax {m['flax']}, optax {m['optax']}, torch {m['torch']}, "
           f"Python {m['python']}. Command: `{report['command']}` ({report['seconds']:.0f} s).",
           "", f"## Device tests\n\n`{t['command']}`: {t['summary']} (exit {t['returncode']})",
           "", "## Training step, ms (median over rounds; jit vs PyTorch eager and "
           "torch.compile, each in the same precision)", "",
           f"`{report['benchmark']['command']}`", ""]
  from benchmarks.jit_vs_eager import precision_markdown
  ptable = report["benchmark"]["precision_table"]
  modes = list(next(iter(ptable.values())))
  lines += [precision_markdown(ptable, modes, list(PRECISIONS)), "",
            "## One training run (chapter 3 MLP)", "",
            "| precision | dataset | epochs | s/epoch (after the first) | test accuracy |",
            "|---|---|---|---|---|"]
  for prec, r in report["training"].items():
    spe = f"{r['seconds_per_epoch']:.2f}" if r["seconds_per_epoch"] else "-"
    lines.append(f"| {prec} | {r['dataset']} | {r['epochs']} | {spe} | "
                 f"{r['test_accuracy']:.4f} |")
  return "\n".join(lines) + "\n"


def main(argv=None) -> dict:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--small", action="store_true",
                 help="tiny settings (any machine, seconds): the suite runs this")
  p.add_argument("--data-dir", default=None,
                 help="folder with Fashion-MNIST's IDX .gz files for the training run")
  p.add_argument("--out", default=None,
                 help="output folder (default benchmarks/results, files gpu-<device>-<date>.*)")
  p.add_argument("--test-timeout", type=int, default=240, help="seconds for the device tests")
  args = p.parse_args(argv)
  t0 = time.perf_counter()
  info = machine()
  _say(f"machine: {info}")
  if info["backend"] == "cpu" and not args.small:
    _say("no GPU: JAX runs on the CPU here (the numbers below are the CPU's)")
  kind = "".join(ch if ch.isalnum() else "-" for ch in info["device_kind"]).strip("-")
  out_dir = args.out or os.path.join(ROOT, "benchmarks", "results")
  os.makedirs(out_dir, exist_ok=True)
  stem = os.path.join(out_dir, f"gpu-{kind}-{info['date']}")
  _say("1/3 device tests")
  tests = run_tests(args.small, args.test_timeout)
  _say(f"    {tests['summary']}")
  _say("2/3 training steps, every model and precision")
  bench = run_benchmark(args.small, stem + "-steps")
  _say("3/3 one training run in float32 and bfloat16")
  training = run_training(args.small, args.data_dir, os.path.join(out_dir, "gpu-check-runs"))
  report = {"machine": info, "command": "python -m benchmarks.gpu_check "
            + " ".join(argv if argv is not None else sys.argv[1:]),
            "tests": tests, "benchmark": bench, "training": training,
            "seconds": time.perf_counter() - t0}
  with open(stem + ".json", "w") as f:
    json.dump(report, f, indent=1)
  with open(stem + ".md", "w") as f:
    f.write(markdown(report))
  _say(f"wrote {stem}.json and .md in {report['seconds']:.0f} s; tests exit {tests['returncode']}")
  return report


if __name__ == "__main__":
  main()
