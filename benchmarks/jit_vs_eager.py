"""What compilation buys: ms per training step in eager, un-jitted Python, jit (and pmap /
sharded over several devices), and a fused `lax.scan` training loop vs a Python loop.

    python -m benchmarks.jit_vs_eager                # seed 000/001 models, JSON + table
    python -m benchmarks.jit_vs_eager --devices 4    # adds pmap/sharded on 4 host devices

Contestants are interleaved in rounds on the same (shared, noisy) machine; each cell is the
median (and min) over rounds of the mean step time within a round. Compile time is measured
separately (first call). Host devices share the CPU's cores: pmap there shows correctness
and overhead, not a speed-up.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time

import jax
import numpy as np

from dlcore import losses, models, optim
from dlcore.data import synthetic
from dlcore.train import Runner, create_train_state, make_train_step, repeat_step, set_host_devices


def _planar():
  x, y = synthetic.planar_flower()
  return {"x": x, "y": y}


def _bce(out, b):
  return losses.bce_with_logits(out, b["y"]), {}


def _sse(out, b):
  return losses.mse(out, b["y"], "sum"), {}


def _ce(out, b):
  return losses.cross_entropy(out, b["y"]), {}


def _regression():
  x, y = synthetic.random_regression()
  return {"x": x, "y": y}


def _fizzbuzz():
  x, y = synthetic.fizzbuzz(101, 229)  # one batch of 128
  return {"x": x, "y": y}


# id -> (model, kwargs, optimizer, lr, batch maker, loss). Batch sizes are the seeds'.
CASES = {
    "0.1 logistic b400": ("logistic_regression", {}, "sgd", 0.1, _planar, _bce),
    "0.2 raw 2-4-1 b400": ("raw_two_layer", {}, "sgd", 1.0, _planar, _bce),
    "0.3 sequential 2-4-1 b400": ("sequential_net", {}, "sgd", 1.0, _planar, _bce),
    "0.4 module_net 2-4-1 b400": ("module_net", {}, "sgd", 1.0, _planar, _bce),
    "0.5 mlp 2-10-10-10-1 b400": ("mlp", {}, "sgd", 0.1, _planar, _bce),
    "1.4 two_layer_sequential b64": ("two_layer_sequential", {}, "sgd", 1e-4, _regression, _sse),
    "1.5 two_layer_sequential adam b64": ("two_layer_sequential", {}, "adam", 1e-4, _regression,
                                          _sse),
    "1.6 two_layer_net b64": ("two_layer_net", {}, "sgd", 1e-4, _regression, _sse),
    "1.7 fizzbuzz 10-100-4 b128": ("mlp", {"widths": (100, 4), "activation": "relu"}, "sgd",
                                   0.05, _fizzbuzz, _ce),
}
STEPS_PER_ROUND = {"eager": 2, "python": 5}  # the slow modes; compiled modes use --steps


def _contestant(case, mode, devices):
  name, kwargs, opt, lr, make_batch, loss = CASES[case]
  runner = Runner(mode, devices=devices if mode in ("pmap", "sharded") else None)
  model = models.build(name, **kwargs)
  batch = make_batch()
  state = create_train_state(model, optim.make_optimizer(opt, lr), batch["x"][:2])
  step = runner.compile(make_train_step(loss, axis_name=runner.axis_name))
  holder = {"state": runner.put_state(state), "batch": runner.put_batch(batch)}

  def run(n):
    s = holder["state"]
    for _ in range(n):
      s, m = step(s, holder["batch"])
    jax.block_until_ready(m)
    holder["state"] = s

  t0 = time.perf_counter()
  run(1)
  return run, time.perf_counter() - t0


def bench_steps(cases, modes, rounds, steps, devices):
  results = {}
  contestants = {}
  for case in cases:
    for mode in modes:
      run, first = _contestant(case, mode, devices)
      contestants[(case, mode)] = run
      results[(case, mode)] = {"first_call_s": first, "ms": []}
  for _ in range(rounds):
    for key, run in contestants.items():
      n = STEPS_PER_ROUND.get(key[1], steps)
      t0 = time.perf_counter()
      run(n)
      results[key]["ms"].append(1e3 * (time.perf_counter() - t0) / n)
  return results


def bench_scan(rounds, num_steps=10000):
  """The planar 2-4-1 training (SPEC 0.3): Python loop of jitted steps vs one lax.scan."""
  batch = _planar()
  model = models.build("sequential_net")
  template = create_train_state(model, optim.make_optimizer("sgd", 1.0), batch["x"])
  # Copies keep the template's static fields (tx, apply_fn): a state built anew would carry
  # a new optax object, miss jit's cache and recompile inside the timed region.
  fresh = lambda: jax.block_until_ready(jax.tree.map(jax.numpy.copy, template))  # noqa: E731
  step = make_train_step(_bce)
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
    s, m = jax.block_until_ready(scan(s, batch))
    scan_s.append(time.perf_counter() - t0)
  return {"steps": num_steps, "python_loop_s": loop_s, "scan_s": scan_s}


def machine() -> dict:
  d = jax.devices()[0]
  return {"platform": d.platform, "device_kind": d.device_kind, "devices": jax.device_count(),
          "cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
          "jax": jax.__version__, "date": time.strftime("%Y-%m-%d")}


def main(argv=None):
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                              formatter_class=argparse.ArgumentDefaultsHelpFormatter)
  p.add_argument("--cases", nargs="+", default=list(CASES), help="which models (ids)")
  p.add_argument("--rounds", type=int, default=5)
  p.add_argument("--steps", type=int, default=50, help="steps per round for compiled modes")
  p.add_argument("--devices", type=int, default=0, help="host devices for pmap/sharded")
  p.add_argument("--scan-steps", type=int, default=10000)
  p.add_argument("--out", default=None, help="JSON path (default benchmarks/results/<machine>.json)")
  args = p.parse_args(argv)
  unknown = set(args.cases) - set(CASES)
  if unknown:
    raise SystemExit(f"unknown case(s) {sorted(unknown)}; choose from {list(CASES)}")
  if args.devices:
    set_host_devices(args.devices)
  modes = ["eager", "python", "jit"] + (["pmap", "sharded"] if jax.device_count() > 1 else [])
  info = machine()
  print(f"machine: {info}")
  raw = bench_steps(args.cases, modes, args.rounds, args.steps, args.devices or None)
  scan = bench_scan(args.rounds, args.scan_steps)
  table = {}
  for (case, mode), r in raw.items():
    table.setdefault(case, {})[mode] = {"median_ms": statistics.median(r["ms"]),
                                        "min_ms": min(r["ms"]), "first_call_s": r["first_call_s"]}
  out = {"machine": info, "modes": modes, "rounds": args.rounds, "steps": table,
         "scan": scan | {"python_loop_median_s": statistics.median(scan["python_loop_s"]),
                         "scan_median_s": statistics.median(scan["scan_s"])}}
  header = "| model (batch) | " + " | ".join(f"{m} ms" for m in modes) + " | eager/jit | python/jit |"
  lines = [header, "|" + "---|" * (len(modes) + 3)]
  for case, row in table.items():
    cells = " | ".join(f"{row[m]['median_ms']:.3f}" for m in modes)
    lines.append(f"| {case} | {cells} | {row['eager']['median_ms'] / row['jit']['median_ms']:.0f}x"
                 f" | {row['python']['median_ms'] / row['jit']['median_ms']:.0f}x |")
  ls, ss = out["scan"]["python_loop_median_s"], out["scan"]["scan_median_s"]
  lines.append("")
  lines.append(f"planar 2-4-1, {args.scan_steps} steps: Python loop of jitted steps {ls:.3f} s "
               f"({1e3 * ls / args.scan_steps:.4f} ms/step), one jitted lax.scan {ss:.3f} s "
               f"({1e3 * ss / args.scan_steps:.4f} ms/step): {ls / ss:.1f}x")
  text = "\n".join(lines)
  print(text)
  path = args.out or os.path.join(os.path.dirname(__file__), "results",
                                  f"{info['platform']}-{info['cpu_count']}core.json")
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    json.dump(out | {"table_markdown": text}, f, indent=2)
  print(f"wrote {path}")
  return out


if __name__ == "__main__":
  main()
