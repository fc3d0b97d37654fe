"""The convolution models on the CPU: XLA's convolutions inside and outside the YNNPACK
fusion, against PyTorch eager and torch.compile, in one run.

    python -m benchmarks.cpu_convolutions                         # lenet cnn dcgan alexnet
    python -m benchmarks.cpu_convolutions --cases lenet --repeats 2

XLA reads its flags when its CPU backend starts, so each setting needs its own process:
every repeat runs `benchmarks.jit_vs_eager` once per setting, in alternating order, so both
see the same machine. The settings: `ynn_fusion` (JAX's default; `DLCORE_XLA_DEFAULTS=1`)
and `xla_kernel` (dlcore's default, dlcore/xlaflags.py). PyTorch's eager step runs in every
process, so each jit time has a PyTorch time measured beside it; torch.compile runs in the
first process. Reported per model: median ms per training step of each, and PyTorch eager /
dlcore jit (>= 1.0: dlcore is at least as fast), the median of the per-process ratios.
Results: benchmarks/results/cpu-convolutions-<machine>.{json,md}.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

# name -> (environment, what it is). The first is the reference the others are compared to.
SETTINGS = {
    "ynn_fusion": ({"DLCORE_XLA_DEFAULTS": "1"}, "JAX's default: convolutions in YNNPACK"),
    "xla_kernel": ({"DLCORE_XLA_DEFAULTS": "0"}, "dlcore's default: XLA's convolution kernel"),
    # Not a default: dense layers out of YNNPACK too (changes every model's rounding).
    "xla_kernel_and_dot": ({"DLCORE_XLA_DEFAULTS": "1", "XLA_FLAGS":
                            "--xla_cpu_experimental_ynn_fusion_type=-individual_convolution,"
                            "-individual_dot"}, "also dots out of YNNPACK (not a default)"),
}
DEFAULT_SETTINGS = ("ynn_fusion", "xla_kernel")
CASES = ("lenet", "cnn", "dcgan", "alexnet")


def run_once(cases, setting, modes, rounds, min_time, out) -> dict:
  env = dict(os.environ)
  env.pop("XLA_FLAGS", None)  # the setting alone decides
  env.update(SETTINGS[setting][0])
  cmd = [sys.executable, "-m", "benchmarks.jit_vs_eager", "--cases", *cases, "--modes", *modes,
         "--rounds", str(rounds), "--min-time", str(min_time), "--out", out]
  subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
  with open(out + ".json") as f:
    return json.load(f)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--cases", nargs="+", default=list(CASES))
  p.add_argument("--repeats", type=int, default=3, help="processes per setting")
  p.add_argument("--rounds", type=int, default=3, help="timing rounds per process")
  p.add_argument("--min-time", type=float, default=0.5, help="seconds per timing")
  p.add_argument("--settings", nargs="+", default=list(DEFAULT_SETTINGS), choices=list(SETTINGS))
  p.add_argument("--no-compile", action="store_true", help="leave torch.compile out")
  p.add_argument("--out", default=None, help="output stem (default benchmarks/results/"
                                             "cpu-convolutions-<machine>)")
  args = p.parse_args(argv)
  cores = os.cpu_count()
  out = args.out or os.path.join(os.path.dirname(__file__), "results",
                                 f"cpu-convolutions-cpu-{cores}core")
  settings = args.settings
  runs = {s: [] for s in settings}
  start = time.time()
  with tempfile.TemporaryDirectory() as tmp:
    for rep in range(args.repeats):
      order = settings if rep % 2 == 0 else settings[::-1]
      for setting in order:
        modes = ["jit", "torch"]
        if rep == 0 and setting == settings[-1] and not args.no_compile:
          modes.append("torch_compile")
        print(f"repeat {rep + 1}/{args.repeats}: {setting}", flush=True)
        runs[setting].append(run_once(args.cases, setting, modes, args.rounds, args.min_time,
                                      os.path.join(tmp, f"{setting}-{rep}")))

  def times(setting, case, mode):
    return [t for r in runs[setting] if mode in r["cases"][case]["modes"]
            for t in r["cases"][case]["modes"][mode]["all_ms"]]

  def ratios(setting, case):  # PyTorch eager / jit, within each process
    return [r["cases"][case]["modes"]["torch"]["median_ms"]
            / r["cases"][case]["modes"]["jit"]["median_ms"] for r in runs[setting]]

  result = {"machine": f"{platform.machine()} {cores} cores", "date": time.strftime("%Y-%m-%d"),
            "command": "python -m benchmarks.cpu_convolutions " + " ".join(argv or sys.argv[1:]),
            "xla_flags": {s: runs[s][0]["machine"]["xla_flags"] for s in settings},
            "repeats": args.repeats, "rounds": args.rounds, "seconds": round(time.time() - start),
            "cases": {}}
  for case in args.cases:
    entry = {}
    for setting in settings:
      entry[f"jit_{setting}_ms"] = statistics.median(times(setting, case, "jit"))
      entry[f"torch_over_jit_{setting}"] = statistics.median(ratios(setting, case))
    entry["torch_ms"] = statistics.median([t for s in settings for t in times(s, case, "torch")])
    compiled = [t for s in settings for t in times(s, case, "torch_compile")]
    entry["torch_compile_ms"] = statistics.median(compiled) if compiled else None
    entry["faster"] = min(settings, key=lambda s: entry[f"jit_{s}_ms"])
    result["cases"][case] = entry

  ref = settings[0]
  head = ["model", *[f"jit, {s} ms" for s in settings],
          *[f"{s} vs {ref}" for s in settings[1:]], "PyTorch eager ms", "torch.compile ms",
          *[f"PyTorch eager / jit, {s}" for s in settings]]
  lines = [f"# CPU convolutions: XLA settings vs PyTorch ({result['machine']}, "
           f"{result['date']})", "", f"`{result['command']}` ({result['seconds']} s; "
           f"{args.repeats} processes per setting x {args.rounds} rounds, medians). Settings: "
           + "; ".join(f"`{s}`: {SETTINGS[s][1]}" for s in settings) + ".", "",
           "| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for case, e in result["cases"].items():
    tc = f"{e['torch_compile_ms']:.1f}" if e["torch_compile_ms"] else "-"
    cells = [case, *[f"{e[f'jit_{s}_ms']:.1f}" for s in settings],
             *[f"{100 * (e[f'jit_{s}_ms'] / e[f'jit_{ref}_ms'] - 1):+.0f} %" for s in settings[1:]],
             f"{e['torch_ms']:.1f}", tc,
             *[f"{e[f'torch_over_jit_{s}']:.2f}x" for s in settings]]
    lines.append("| " + " | ".join(cells) + " |")
  os.makedirs(os.path.dirname(out) or ".", exist_ok=True)
  with open(out + ".json", "w") as f:
    json.dump(result, f, indent=1)
  with open(out + ".md", "w") as f:
    f.write("\n".join(lines) + "\n")
  print("\n".join(lines))


if __name__ == "__main__":
  main()
