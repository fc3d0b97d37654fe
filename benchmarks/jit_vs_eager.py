"""What compilation buys, for every model in dlcore: ms per training step (forward, backward,
update) at the seed's batch size in eager, un-jitted Python, jit, jit with donated state,
pmap and sharded jit, beside the PyTorch original's eager step; compile time; FLOP
utilisation against the float32 matmul throughput measured in the same run; fused training
loops (`lax.scan`) against a Python loop of jitted steps.

    python -m benchmarks.jit_vs_eager --all                # every model: JSON, table, chart
    python -m benchmarks.jit_vs_eager --cases lenet vae    # some of them
    python -m benchmarks.jit_vs_eager --all --devices 4    # pmap/sharded over 4 host devices
    python -m benchmarks.jit_vs_eager --all --modes jit torch --precision float32 bfloat16
                                                           # precisions side by side

`--precision` builds dlcore's models in that computation dtype (float32 master weights,
float16 with loss scaling) and runs PyTorch's step under `torch.autocast` in the same dtype;
with several precisions every (case, mode, precision) runs interleaved in the same rounds and
the report adds a table of each precision's step time against the first one's.

The machine is shared and noisy: contestants run interleaved in rounds, each timing covers
enough steps to last `--min-time` seconds, and cells report the median and min over rounds.
Results go to benchmarks/results/<machine>.{json,md,png}.
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import time
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
from jax.extend.core import jaxprs_in_params

MODES = ("eager", "python", "jit_nodonate", "jit", "pmap", "sharded", "torch", "torch_compile")
DEFAULT_MODES = MODES[:-1]  # torch.compile takes 3-17 s per model to compile: on request
CHART_MODES = ("eager", "python", "jit", "torch", "torch_compile")


# ---- FLOPs -------------------------------------------------------------------------------
def _dot_flops(eqn) -> int:
  (lc, rc), (lb, _) = eqn.params["dimension_numbers"]
  lhs, rhs = eqn.invars[0].aval.shape, eqn.invars[1].aval.shape
  contract = math.prod(lhs[d] for d in lc)
  batch = math.prod(lhs[d] for d in lb)
  free_l = math.prod(s for d, s in enumerate(lhs) if d not in lc and d not in lb)
  free_r = math.prod(s for d, s in enumerate(rhs) if d not in rc and d not in eqn.params[
      "dimension_numbers"][1][1])
  return 2 * batch * free_l * free_r * contract


def _conv_flops(eqn) -> int:
  out = eqn.outvars[0].aval.shape
  rhs = eqn.invars[1].aval.shape
  dn = eqn.params["dimension_numbers"]
  # Each output element: (in_features / groups) * prod(window) multiply-adds.
  kernel_in = rhs[dn.rhs_spec[1]]
  window = math.prod(rhs[d] for d in dn.rhs_spec[2:])
  return 2 * math.prod(out) * kernel_in * window


def matmul_flops(fn: Callable, *args) -> int:
  """FLOPs of the matrix multiplications and convolutions in `fn(*args)` (2 per
  multiply-add), counted on its jaxpr, loops multiplied by their trip count. Elementwise
  work is left out: this is the work a matmul peak bounds."""

  def walk(jaxpr, mult=1):
    total = 0
    for eqn in jaxpr.eqns:
      name = eqn.primitive.name
      if name == "dot_general":
        total += mult * _dot_flops(eqn)
      elif name == "conv_general_dilated":
        total += mult * _conv_flops(eqn)
      for sub in jaxprs_in_params(eqn.params):
        n = eqn.params.get("length", 1) if name == "scan" else 1
        total += walk(sub, mult * n)
    return total

  return walk(jax.make_jaxpr(fn)(*args).jaxpr)


def xla_flops(compiled) -> float | None:
  """XLA's own count (all ops, elementwise included), for comparison."""
  try:
    cost = compiled.cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops")) if cost and cost.get("flops") is not None else None
  except Exception:  # not every backend reports it
    return None


def matmul_peak(size: int) -> Callable[[], float]:
  """A timed float32 matmul (size^3): returns a function giving GFLOP/s for one call."""
  a = jax.random.normal(jax.random.PRNGKey(0), (size, size), jnp.float32)
  b = jax.random.normal(jax.random.PRNGKey(1), (size, size), jnp.float32)
  f = jax.jit(lambda a, b: a @ b)
  jax.block_until_ready(f(a, b))

  def run(reps=3):
    t0 = time.perf_counter()
    for _ in range(reps):
      out = f(a, b)
    jax.block_until_ready(out)
    return 2 * size ** 3 * reps / (time.perf_counter() - t0) / 1e9

  return run


# ---- contestants -------------------------------------------------------------------------
class Contestant:
  """Runs `n` steps of one (case, mode); `first_s` is the first call (trace + compile)."""

  def __init__(self, case, mode: str, devices: int | None, prec: str = "float32"):
    self.case, self.mode = case, mode
    if mode.startswith("torch"):
      self._torch = case.torch(prec, compiled=mode == "torch_compile")
      t0 = time.perf_counter()
      self._torch()
      self.first_s = time.perf_counter() - t0
      return
    from dlcore.train import Runner

    runner_mode = "jit" if mode.startswith("jit") else mode
    runner = Runner(runner_mode, devices=devices if mode in ("pmap", "sharded") else None,
                    donate=mode != "jit_nodonate")
    state, step, batch = case.build(prec)
    self._step = runner.compile(step)
    self._state, self._batch = runner.put_state(state), runner.put_batch(batch)
    t0 = time.perf_counter()
    self.run(1)
    self.first_s = time.perf_counter() - t0

  def run(self, n: int) -> None:
    if self.mode.startswith("torch"):
      for _ in range(n):
        out = self._torch()
      out.detach().item()  # waits for the step (PyTorch's CPU ops are synchronous; CUDA is not)
      return
    s = self._state
    for _ in range(n):
      s, m = self._step(s, self._batch)
    jax.block_until_ready((s, m))
    self._state = s


def skip_reason(case, mode: str, has_torch: bool, prec: str = "float32") -> str | None:
  n = jax.local_device_count()
  if prec == "float16" and any(m.startswith(("gan", "cgan", "dcgan")) for m in case.models):
    return "no float16 loss scaling in the GAN steps"
  if mode.startswith("torch") and (case.torch is None or not has_torch):
    return "PyTorch not installed" if case.torch else "no PyTorch original"
  if mode in ("pmap", "sharded") and (case.batch == 0 or case.batch % n):
    return f"batch {case.batch} does not split over {n} devices"
  return None


def calibrate(c: Contestant, min_time: float, max_steps: int) -> int:
  dts = []
  for _ in range(2 if c.first_s > 1 else 3):  # the fastest of a few: one stall misleads
    t0 = time.perf_counter()
    c.run(1)
    dts.append(time.perf_counter() - t0)
  dt = min(dts)
  return int(max(1, min(max_steps, math.ceil(min_time / max(dt, 1e-7)))))


def bench_steps(cases, modes, rounds, min_time, devices, has_torch, log=print,
                precisions=("float32",)):
  """Times every (case, mode, precision); keys are (case id, mode, precision)."""
  results, contestants = {}, {}
  for case in cases:
    for mode in modes:
      for prec in precisions:
        key = (case.id, mode, prec)
        why = skip_reason(case, mode, has_torch, prec)
        if why:
          results[key] = {"skipped": why}
          continue
        t0 = time.perf_counter()
        c = Contestant(case, mode, devices, prec)
        n = calibrate(c, min_time, 1000 if mode != "eager" else 50)
        contestants[key] = (c, n)
        results[key] = {"first_call_s": c.first_s, "steps_per_round": n, "ms": []}
        log(f"  {case.id:28s} {mode:10s} {prec:9s} first call {c.first_s:8.3f} s, {n} "
            f"steps/round ({time.perf_counter() - t0:.1f} s)")
  for r in range(rounds):
    for key, (c, n) in contestants.items():
      t0 = time.perf_counter()
      c.run(n)
      results[key]["ms"].append(1e3 * (time.perf_counter() - t0) / n)
    log(f"round {r + 1}/{rounds} done")
  return results


def compile_and_flops(case, prec: str = "float32") -> dict:
  """Lowering + XLA compile time of the jitted step, and its FLOPs both ways."""
  state, step, batch = case.build(prec)
  state = jax.device_put(state)
  batch = jax.device_put(batch)
  t0 = time.perf_counter()
  lowered = jax.jit(step).lower(state, batch)
  t1 = time.perf_counter()
  compiled = lowered.compile()
  t2 = time.perf_counter()
  return {"trace_lower_s": t1 - t0, "compile_s": t2 - t1,
          "matmul_flops": matmul_flops(step, state, batch), "xla_flops": xla_flops(compiled)}


def bench_fused(cases, rounds: int, num_steps: int, prec: str = "float32") -> dict:
  """Tiny models: a Python loop of `num_steps` jitted steps vs one jitted `lax.scan` over
  them (`dlcore.train.repeat_step`), both on the same batch, state donated."""
  from dlcore.train import repeat_step

  out = {}
  for case in cases:
    state, step, batch = case.build(prec)
    batch = jax.device_put(batch)
    template = jax.device_put(state)
    fresh = lambda: jax.block_until_ready(jax.tree.map(jnp.copy, template))  # noqa: E731
    jstep = jax.jit(step, donate_argnums=0)
    scan = jax.jit(repeat_step(step, num_steps), donate_argnums=0)
    jax.block_until_ready(jstep(fresh(), batch))
    jax.block_until_ready(scan(fresh(), batch))
    loop_s, scan_s = [], []
    for _ in range(rounds):
      s, t0 = fresh(), time.perf_counter()
      for _ in range(num_steps):
        s, m = jstep(s, batch)
      jax.block_until_ready(s)
      loop_s.append(time.perf_counter() - t0)
      s, t0 = fresh(), time.perf_counter()
      jax.block_until_ready(scan(s, batch))
      scan_s.append(time.perf_counter() - t0)
    out[case.id] = {"steps": num_steps, "python_loop_s": loop_s, "scan_s": scan_s,
                    "speedup": statistics.median(loop_s) / statistics.median(scan_s)}
  return out


# ---- report ------------------------------------------------------------------------------
def machine() -> dict:
  d = jax.devices()[0]
  info = {"platform": d.platform, "device_kind": d.device_kind,
          "devices": jax.local_device_count(), "cpu_count": os.cpu_count(),
          "processor": platform.processor() or platform.machine(), "jax": jax.__version__,
          "date": time.strftime("%Y-%m-%d"), "xla_flags": os.environ.get("XLA_FLAGS", "")}
  try:
    import torch
    info["torch"] = torch.__version__
    info["torch_threads"] = torch.get_num_threads()
  except ImportError:
    pass
  return info


def machine_name(info: dict) -> str:
  if info["platform"] == "cpu":
    name = f"cpu-{info['cpu_count']}core"
    return name + (f"-{info['devices']}hostdevices" if info["devices"] > 1 else "")
  kind = "".join(ch if ch.isalnum() else "-" for ch in info["device_kind"]).strip("-")
  return f"{info['platform']}-{kind}" + (f"-x{info['devices']}" if info["devices"] > 1 else "")


def _fmt(ms: float | None) -> str:
  if ms is None:
    return "-"
  return f"{ms:.3f}" if ms < 10 else f"{ms:.1f}" if ms < 1000 else f"{ms:.0f}"


def _ratio(r: float) -> str:
  return f"{r:.0f}x" if r >= 100 else f"{r:.1f}x" if r >= 10 else f"{r:.2f}x"


def summarize(cases, modes, raw, extra, peak_gflops) -> dict:
  table = {}
  for case in cases:
    row = {"spec": case.spec, "models": list(case.models), "batch": case.batch,
           "note": case.note, "modes": {}}
    for mode in modes:
      r = raw[(case.id, mode)]
      if "skipped" in r:
        row["modes"][mode] = {"skipped": r["skipped"]}
        continue
      row["modes"][mode] = {"median_ms": statistics.median(r["ms"]), "min_ms": min(r["ms"]),
                            "first_call_s": r["first_call_s"], "all_ms": r["ms"],
                            "steps_per_round": r["steps_per_round"]}
    row.update(extra.get(case.id, {}))
    jit = row["modes"].get("jit", {}).get("median_ms")
    if jit and row.get("matmul_flops"):
      row["gflops_jit"] = row["matmul_flops"] / jit / 1e6
      row["utilisation"] = row["gflops_jit"] / peak_gflops
    table[case.id] = row
  return table


def markdown(table, modes, peak_gflops, fused) -> str:
  def med(row, mode):
    return row["modes"].get(mode, {}).get("median_ms")

  cols = [m for m in modes]
  lines = ["| model (SPEC, batch) | " + " | ".join(f"{m} ms" for m in cols)
           + " | eager/jit | torch/jit | compile s | GFLOP/step | util. |",
           "|" + "---|" * (len(cols) + 6)]
  for cid, row in table.items():
    jit = med(row, "jit")
    ratio = lambda m: (_ratio(med(row, m) / jit) if med(row, m) and jit else "-")  # noqa
    flops = row.get("matmul_flops")
    util = row.get("utilisation")
    lines.append(
        f"| {cid} ({row['spec']}, {row['batch'] or '-'}) | "
        + " | ".join(_fmt(med(row, m)) for m in cols)
        + f" | {ratio('eager')} | {ratio('torch')} | {row.get('compile_s', 0):.2f} | "
        + (f"{flops / 1e9:.3g}" if flops else "-") + " | "
        + (f"{100 * util:.0f}%" if util is not None else "-") + " |")
  lines.append("")
  lines.append(f"Float32 matmul throughput measured in the same run: {peak_gflops:.1f} GFLOP/s "
               "(median over rounds); util. = matmul/conv FLOPs per jit step / jit time / that.")
  if fused:
    lines.append("")
    lines.append("| fused loop (steps) | Python loop of jitted steps s | one lax.scan s | speed-up |")
    lines.append("|---|---|---|---|")
    for cid, f in fused.items():
      lines.append(f"| {cid} ({f['steps']}) | {statistics.median(f['python_loop_s']):.3f} | "
                   f"{statistics.median(f['scan_s']):.3f} | {f['speedup']:.1f}x |")
  return "\n".join(lines)


def precision_table(cases, modes, raw, precisions) -> dict:
  """case id -> {mode: {precision: median ms}} from a run over several precisions."""
  out = {}
  for case in cases:
    out[case.id] = {mode: {p: (statistics.median(raw[(case.id, mode, p)]["ms"])
                               if "ms" in raw[(case.id, mode, p)] else None)
                           for p in precisions} for mode in modes}
  return out


def precision_markdown(ptable, modes, precisions) -> str:
  """Each mode's ms per step in every precision and the ratio to the first precision."""
  base, others = precisions[0], precisions[1:]
  head = ["model"]
  for mode in modes:
    head += [f"{mode} {p} ms" for p in precisions]
    head += [f"{mode} {p}/{base}" for p in others]
  lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
  for cid, row in ptable.items():
    cells = [cid]
    for mode in modes:
      ms = row[mode]
      cells += [_fmt(ms[p]) for p in precisions]
      cells += [_ratio(ms[p] / ms[base]) if ms[p] and ms[base] else "-" for p in others]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines)


def chart(table, modes, path, title):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  ids = list(table)
  shown = [m for m in modes if m in CHART_MODES and any("median_ms" in table[c]["modes"].get(m, {}) for c in ids)]
  fig, ax = plt.subplots(figsize=(10, 0.42 * len(ids) * max(1, len(shown)) / 3 + 2))
  height = 0.8 / len(shown)
  colors = plt.get_cmap("tab10")
  for k, mode in enumerate(shown):
    vals = [table[c]["modes"].get(mode, {}).get("median_ms", np.nan) for c in ids]
    pos = np.arange(len(ids)) + k * height
    ax.barh(pos, vals, height=height, label=mode, color=colors(k))
  ax.set_yticks(np.arange(len(ids)) + 0.4 - height / 2)
  ax.set_yticklabels([f"{c} (b{table[c]['batch']})" for c in ids], fontsize=8)
  ax.invert_yaxis()
  ax.set_xscale("log")
  ax.set_xlabel("ms per training step (median over rounds; log scale)")
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=8, loc="lower right")
  ax.grid(axis="x", which="both", alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--all", action="store_true", help="every case (every registered model)")
  p.add_argument("--cases", nargs="+", default=None, help="case ids (see --list)")
  p.add_argument("--list", action="store_true", help="list the cases and exit")
  p.add_argument("--modes", nargs="+", default=list(DEFAULT_MODES), choices=MODES)
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--min-time", type=float, default=0.2,
                 help="seconds each contestant runs per round (steps are calibrated to it)")
  p.add_argument("--devices", type=int, default=0,
                 help="force this many CPU host devices for pmap/sharded (CPU only)")
  p.add_argument("--fused-steps", type=int, default=1000)
  p.add_argument("--matmul-size", type=int, default=0, help="peak matmul size (0: by device)")
  p.add_argument("--out", default=None, help="output stem (default benchmarks/results/<machine>)")
  p.add_argument("--precision", nargs="+", default=["float32"],
                 choices=["float32", "bfloat16", "float16"],
                 help="computation dtype(s); several: timed side by side in the same rounds")
  p.add_argument("--render", metavar="JSON", default=None,
                 help="rewrite the .md and .png of an earlier run's JSON without measuring")
  args = p.parse_args(argv)
  if args.render:
    return render(args.render)
  if args.devices:
    from dlcore.train import set_host_devices
    set_host_devices(args.devices)
  from benchmarks.cases import CASES, check_coverage

  check_coverage()
  if args.list:
    for c in CASES.values():
      print(f"{c.id:28s} SPEC {c.spec:6s} batch {c.batch:5d}  models {', '.join(c.models)}")
    return None
  if args.all or not args.cases:
    ids = list(CASES)
  else:
    unknown = [c for c in args.cases if c not in CASES]
    if unknown:
      raise SystemExit(f"unknown case(s) {unknown}; --list shows them: {list(CASES)}")
    ids = args.cases
  cases = [CASES[i] for i in ids]
  try:
    import torch  # noqa: F401
    has_torch = True
  except ImportError:
    has_torch = False
    print("PyTorch not installed: the torch column is skipped (pip install -e '.[torch]')")
  info = machine()
  print(f"machine: {info}")
  precs = list(dict.fromkeys(args.precision))
  first = precs[0]
  info["precision"] = precs if len(precs) > 1 else first
  extra = {}
  for case in cases:
    if skip_reason(case, "jit", True, first) is None:
      extra[case.id] = compile_and_flops(case, first)
  size = args.matmul_size or (8192 if info["platform"] == "gpu" else 1024)
  peak_run = matmul_peak(size)
  raw = bench_steps(cases, args.modes, args.rounds, args.min_time, args.devices or None,
                    has_torch, precisions=precs)
  ptable = precision_table(cases, args.modes, raw, precs) if len(precs) > 1 else None
  raw = {k[:2]: v for k, v in raw.items() if k[2] == first}
  peaks = [peak_run() for _ in range(args.rounds)]
  peak = statistics.median(peaks)
  fused = bench_fused([c for c in cases if "tiny" in c.tags and skip_reason(c, "jit", True, first)
                       is None], args.rounds, args.fused_steps, first)
  table = summarize(cases, args.modes, raw, extra, peak)
  suffix = "" if precs == ["float32"] else "-" + "-".join(precs)
  stem = args.out or os.path.join(os.path.dirname(__file__), "results",
                                  machine_name(info) + suffix)
  os.makedirs(os.path.dirname(stem), exist_ok=True)
  out = {"machine": info, "command": "python -m benchmarks.jit_vs_eager "
         + " ".join(argv if argv is not None else __import__("sys").argv[1:]),
         "rounds": args.rounds, "min_time_s": args.min_time, "matmul_peak_gflops": peak,
         "matmul_peak_all": peaks, "matmul_size": size, "cases": table, "fused": fused}
  if ptable is not None:
    out["precision_table"] = ptable
  with open(stem + ".json", "w") as f:
    json.dump(out, f, indent=1)
  _write_reports(stem, info, table, args.modes, peak, fused, ptable)
  return out


def _write_reports(stem, info, table, modes, peak, fused, ptable=None) -> None:
  prec = info.get("precision", "float32")
  precs = prec if isinstance(prec, list) else [prec]
  title = (f"{machine_name(info)}, jax {info['jax']}"
           + (f", torch {info['torch']}" if "torch" in info else "")
           + (f", {precs[0]}" if precs != ["float32"] else ""))
  text = markdown(table, modes, peak, fused)
  if ptable:
    text += ("\n\nms per training step in each precision (median over rounds, one run):\n\n"
             + precision_markdown(ptable, modes, precs))
  print(text)
  with open(stem + ".md", "w") as f:
    f.write(f"{info['date']}, {title}\n\n{text}\n")
  chart(table, modes, stem + ".png", f"dlcore training steps, {title}, {info['date']}")
  print(f"wrote {stem}.json, .md, .png")


def render(path: str) -> dict:
  """Rewrites `<stem>.md` and `<stem>.png` from `<stem>.json` (an earlier run's results)."""
  with open(path) as f:
    out = json.load(f)
  stem, info = os.path.splitext(path)[0], out["machine"]
  modes = [m for m in MODES if any(m in row["modes"] for row in out["cases"].values())]
  _write_reports(stem, info, out["cases"], modes, out["matmul_peak_gflops"], out["fused"],
                 out.get("precision_table"))
  return out


if __name__ == "__main__":
  main()
