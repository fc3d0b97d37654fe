"""What JAX's persistent compilation cache (`dlcore.harness.jaxcache`) saves: one command run
twice with a fresh, empty cache folder (cold, then warm), in one invocation.

    python -m benchmarks.compile_cache                   # experiments.mnist_mlp, 1 epoch
    python -m benchmarks.compile_cache -- experiments.vae --dataset fashion_mnist --epochs 1

Reports the wall time of each run and the time from the start of the process to its first
metrics row (`metrics.jsonl`, written at the first log point, a quarter epoch in for the
classifiers): start-up, data, compilation and those first steps. Both runs share the same
data and machine; only JAX's cache differs.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time

from dlcore.harness import jaxcache

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT = ["experiments.mnist_mlp", "--dataset", "digits", "--no-compare", "--epochs", "1"]


def run(cmd: list[str], cache: str, workdir: str) -> dict:
  env = dict(os.environ, DLCORE_CACHE=cache)
  env.pop("DLCORE_JAX_CACHE", None)
  start = time.time()
  out = subprocess.run([sys.executable, "-m", *cmd, "--workdir", workdir, "--no-progress"],
                       cwd=ROOT, env=env, capture_output=True, text=True)
  wall = time.time() - start
  if out.returncode != 0:
    raise SystemExit(out.stderr[-2000:])
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    first = json.loads(f.readline())
  return {"wall_s": round(wall, 2), "first_row_s": round(first["time"] - start, 2)}


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                   prog="python -m benchmarks.compile_cache")
  parser.add_argument("command", nargs="*", default=DEFAULT,
                      help="module and arguments (after --); default: %(default)s")
  args = parser.parse_args(argv)
  with tempfile.TemporaryDirectory() as tmp:
    cache = os.path.join(tmp, "cache")
    # The scorer cache lives under DLCORE_CACHE too: link the user's, so only JAX's is cold.
    user = jaxcache.cache_root()
    os.makedirs(cache)
    if os.path.isdir(os.path.join(user, "scorers")):
      os.symlink(os.path.join(user, "scorers"), os.path.join(cache, "scorers"))
    cold = run(args.command, cache, os.path.join(tmp, "cold"))
    warm = run(args.command, cache, os.path.join(tmp, "warm"))
  print(f"`python -m {' '.join(args.command)}`")
  print("| run | wall (s) | first metrics row (s) |\n|---|---|---|")
  print(f"| cold cache | {cold['wall_s']} | {cold['first_row_s']} |")
  print(f"| warm cache | {warm['wall_s']} | {warm['first_row_s']} |")


if __name__ == "__main__":
  main()
