"""`scatter_grad_conv`'s col2im, tap-major (dlcore's) against position-major (before
2026-12-03), in LeNet's jitted training step: both compiled in one process, timed in
alternating rounds.

    python -m benchmarks.col2im_taps                  # 9 rounds of 40 steps each
    python -m benchmarks.col2im_taps --rounds 3 --steps 10

The position-major version is kept here as the reference: the product dy @ kernel^T laid out
(N, Ho, Wo, kh, kw, C), whose tap slices are strided. The two round the 16-term sums
differently (another dot), so the states after the timed steps differ in the last bits;
the table says whether they are equal. Writes `benchmarks/results/col2im-taps-<label>.{json,md}`.
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from dlcore.harness.scoring import weights_hash
from dlcore.models import layers

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def position_major_bwd(padding, residuals, g):
  """`layers._scatter_grad_conv_bwd` as it was: the product position-major."""
  lhs, rhs = residuals
  kh, kw, c, o = rhs.shape
  (pt, pb), (pl, pr) = padding
  n, ho, wo, _ = g.shape
  cols = jnp.matmul(g.reshape(-1, o), rhs.reshape(kh * kw * c, o).T,
                    preferred_element_type=jnp.float32).reshape(n, ho, wo, kh, kw, c)
  d_lhs = jnp.zeros((n, lhs.shape[1] + pt + pb, lhs.shape[2] + pl + pr, c), jnp.float32)
  for i in range(kh):
    for j in range(kw):
      d_lhs = d_lhs.at[:, i:i + ho, j:j + wo].add(cols[:, :, :, i, j])
  d_lhs = d_lhs[:, pt:pt + lhs.shape[1], pl:pl + lhs.shape[2]].astype(lhs.dtype)
  return d_lhs, jax.vjp(lambda r: layers._xla_conv(lhs, r, padding), rhs)[1](g)[0]


def _compiled(bwd):
  """LeNet's step compiled with `bwd` as the kernel's backward pass."""
  from benchmarks.cases import CASES
  layers._scatter_grad_conv.defvjp(layers._scatter_grad_conv_fwd, bwd)
  try:
    state, step, batch = CASES["lenet"].build()
    return jax.jit(step).lower(state, batch).compile(), state, batch
  finally:
    layers._scatter_grad_conv.defvjp(layers._scatter_grad_conv_fwd,
                                     layers._scatter_grad_conv_bwd)


def measure(rounds: int, steps: int) -> dict:
  variants = {"tap-major (dlcore)": layers._scatter_grad_conv_bwd,
              "position-major (before)": position_major_bwd}
  built = {name: _compiled(bwd) for name, bwd in variants.items()}
  times: dict = {name: [] for name in built}
  digests = {}
  for name, (f, state, batch) in built.items():  # warm-up, and the state after `steps`
    s = state
    for _ in range(steps):
      s, _ = f(s, batch)
    digests[name] = weights_hash(s)[:16]
  for _ in range(rounds):
    for name, (f, state, batch) in built.items():
      s = state
      start = time.perf_counter()
      for _ in range(steps):
        s, _ = f(s, batch)
      jax.block_until_ready(s)
      times[name].append((time.perf_counter() - start) / steps * 1e3)
  return {name: {"ms": [round(t, 3) for t in ts], "median_ms": round(float(np.median(ts)), 3),
                 "state_sha256": digests[name]} for name, ts in times.items()}


def table(result: dict) -> str:
  ours, before = result["tap-major (dlcore)"], result["position-major (before)"]
  faster = sum(a < b for a, b in zip(ours["ms"], before["ms"]))
  lines = ["| col2im | LeNet jit step, median ms | per round ms | state after the steps |",
           "|---|---|---|---|"]
  for name, r in result.items():
    lines.append(f"| {name} | {r['median_ms']:.2f} | "
                 + ", ".join(f"{t:.2f}" for t in r["ms"]) + f" | {r['state_sha256']} |")
  lines += ["", f"tap-major faster in {faster} of {len(ours['ms'])} paired rounds; median "
            f"ratio {before['median_ms'] / ours['median_ms']:.2f}x; states "
            + ("equal" if ours["state_sha256"] == before["state_sha256"]
               else "differ (another dot's rounding)")]
  return "\n".join(lines)


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  p.add_argument("--rounds", type=int, default=9)
  p.add_argument("--steps", type=int, default=40, help="steps per round and per variant")
  p.add_argument("--label", default=f"cpu-{os.cpu_count()}core")
  args = p.parse_args(argv)
  result = measure(args.rounds, args.steps)
  md = table(result)
  print(md)
  base = os.path.join(ROOT, "benchmarks", "results", f"col2im-taps-{args.label}")
  meta = {"date": datetime.date.today().isoformat(), "rounds": args.rounds,
          "steps": args.steps, "command": "python -m benchmarks.col2im_taps "
          + " ".join(argv if argv is not None else sys.argv[1:])}
  with open(base + ".json", "w") as f:
    json.dump({"meta": meta, "result": result}, f, indent=1)
  with open(base + ".md", "w") as f:
    f.write(f"{meta['command']} ({meta['date']})\n\n{md}\n")


if __name__ == "__main__":
  main()
