"""Book chapter 2 (SPEC 2.2.1-2.2.2): gradient descent three ways, and a Jacobian.

    python -m experiments.basics

2.2.1  y = 3 x^2 + 2 + noise (x = linspace(-1, 1, 100), noise 0.2 * U(0, 1), the book's
       data), model y = w x^2 + b, loss 1/2 sum (y_hat - y)^2, plain gradient descent,
       lr 1e-3, 800 steps, w and b from U(0, 1):
       numpy  hand-written gradients (the book's section 2.6; float64);
       eager  `jax.grad`, every operation dispatched as it runs (PyTorch's autograd,
              the book's "dynamic graph"; section 2.7);
       jit    the whole 800-step loop traced once and compiled (`jax.jit` of a
              `lax.fori_loop`): the book's TensorFlow "static graph" (section 2.8).
       All three start from the same w, b on the same data; the time per step of each is
       measured in the same run (the jit time excludes compilation, reported apart).
2.2.2  non-scalar backward: y1 = x1^2 + 3 x2, y2 = x2^2 + 2 x1 at x = [2, 3]; the Jacobian
       [[4, 3], [2, 6]] by reverse mode (`jax.jacrev`), forward mode (`jax.jacfwd`) and row by
       row with vector-Jacobian products (PyTorch's `y.backward(v)`).
"""
from __future__ import annotations

import dataclasses
import time
from typing import Annotated

import jax
import jax.numpy as jnp
import numpy as np
from tqdm.auto import tqdm

from dlcore import distributed
from dlcore.harness import cli, plots
from dlcore.harness.rundir import RunDir
from dlcore.harness.seeds import spread, summarize
from dlcore.harness.writers import say

SEED_PRINTED = {"numpy": {"w": 2.9586, "b": 2.1018}, "autograd": {"w": 2.9645, "b": 2.1146},
                "tensorflow_2000_steps": {"w": 2.92, "b": 2.12, "loss": 0.0038}}


@dataclasses.dataclass
class Config:
  """basics shows the three ways side by side in one run (NumPy, eager, one jitted loop), so
  it takes no --mode, --resume or --devices: there is no training state worth resuming."""
  workdir: str = "runs/basics"
  """Run directory for config, summary and the fitted-curve figure."""
  seed: int = 100
  """The book's np.random.seed(100): data noise and initial w, b."""
  seeds: cli.Positive[int] = 1
  """Repeat 2.2.1 for seeds seed..seed+N-1 (each its own data noise and initial w, b); the
  summary gives means, <key>_std and per_seed. The three ways run seed after seed: they are
  the lesson, and each seed takes well under a second."""
  steps: cli.Positive[int] = 800
  """Gradient-descent steps."""
  lr: Annotated[float, cli.Between(0.0)] = 1e-3
  """Learning rate."""
  progress: bool = True
  """Show progress bars."""
  overwrite: bool = False
  """Start over in a --workdir that holds a run: its contents are deleted first."""


def make_data(seed: int):
  """The book's data: x = linspace(-1, 1, 100), y = 3 x^2 + 2 + 0.2 U(0, 1); w, b ~ U(0, 1)."""
  rng = np.random.RandomState(seed)
  x = np.linspace(-1, 1, 100).reshape(100, 1)
  y = 3 * x ** 2 + 2 + 0.2 * rng.rand(x.size).reshape(100, 1)
  w, b = rng.rand(1, 1), rng.rand(1, 1)
  return x, y, float(w[0, 0]), float(b[0, 0])


def loss_fn(params, x, y):
  w, b = params
  return 0.5 * jnp.sum((w * x ** 2 + b - y) ** 2)


def train_numpy(x, y, w, b, lr, steps):
  """The book's section 2.6, gradients by hand: dL/dw = sum((y_hat - y) x^2),
  dL/db = sum(y_hat - y)."""
  for _ in range(steps):
    err = w * x ** 2 + b - y
    w, b = w - lr * float(np.sum(err * x ** 2)), b - lr * float(np.sum(err))
  return w, b


def train_eager(x, y, w, b, lr, steps):
  """`jax.grad` with jit disabled: each operation runs as Python reaches it."""
  params = (jnp.float32(w), jnp.float32(b))
  grad = jax.grad(loss_fn)
  with jax.disable_jit():
    for _ in range(steps):
      g = grad(params, x, y)
      params = tuple(p - lr * gi for p, gi in zip(params, g))
  return tuple(float(p) for p in params)


def make_jit_trainer(lr, steps):
  """The whole loop as one compiled program."""

  @jax.jit
  def train(params, x, y):
    def body(_, p):
      g = jax.grad(loss_fn)(p, x, y)
      return tuple(pi - lr * gi for pi, gi in zip(p, g))

    return jax.lax.fori_loop(0, steps, body, params)

  return train


def timed(fn, *args):
  start = time.perf_counter()
  out = fn(*args)
  jax.block_until_ready(out)
  return out, time.perf_counter() - start


def gradient_descent_three_ways(cfg: Config, run: RunDir, seed: int, *,
                                report: bool = True) -> dict:
  """2.2.1 with `seed`'s data and initial w, b; `report`: print and draw the figure."""
  x, y, w0, b0 = make_data(seed)
  xf, yf = jnp.asarray(x, jnp.float32), jnp.asarray(y, jnp.float32)
  results = {}
  (w, b), t = timed(train_numpy, x, y, w0, b0, cfg.lr, cfg.steps)
  results["numpy"] = {"w": w, "b": b, "ms_per_step": 1e3 * t / cfg.steps}
  (w, b), t = timed(train_eager, xf, yf, w0, b0, cfg.lr, cfg.steps)
  results["eager"] = {"w": w, "b": b, "ms_per_step": 1e3 * t / cfg.steps}
  trainer = make_jit_trainer(cfg.lr, cfg.steps)
  params0 = (jnp.float32(w0), jnp.float32(b0))
  _, compile_and_run = timed(trainer, params0, xf, yf)
  (w, b), t = timed(trainer, params0, xf, yf)
  results["jit"] = {"w": float(w), "b": float(b), "ms_per_step": 1e3 * t / cfg.steps,
                    "compile_s": compile_and_run - t}
  for name, r in results.items():
    r["loss"] = float(loss_fn((r["w"], r["b"]), x, y))
    r["mse"] = float(np.mean((r["w"] * x ** 2 + r["b"] - y) ** 2))
  entry = {**results, "init": {"w": w0, "b": b0}}
  if not report:
    return entry
  for name, r in results.items():
    say(f"  {name:<6} w={r['w']:.4f} b={r['b']:.4f} loss={r['loss']:.4f} "
          f"(MSE {r['mse']:.4f})  {r['ms_per_step']:.4f} ms/step")
  say("  seed printed: numpy w=2.9586 b=2.1018; autograd w=2.9645 b=2.1146; TF (2000 "
        "steps) w=2.92 b=2.12")
  say(f"  eager / jit time per step: {results['eager']['ms_per_step'] / results['jit']['ms_per_step']:.0f}x"
        f" (jit compile {results['jit']['compile_s']:.2f} s, once)")
  grid = np.linspace(-1, 1, 200)
  plots.scatter_fit(x[:, 0], y[:, 0], {k: (grid, r["w"] * grid ** 2 + r["b"])
                                       for k, r in results.items()},
                    run.file("regression.png"), title="y = w x^2 + b by gradient descent")
  return entry


def jacobian_demo() -> dict:
  def f(x):
    return jnp.stack([x[0] ** 2 + 3 * x[1], x[1] ** 2 + 2 * x[0]])

  x = jnp.array([2.0, 3.0])
  rev, fwd = jax.jacrev(f)(x), jax.jacfwd(f)(x)
  _, vjp = jax.vjp(f, x)
  rows = jnp.stack([vjp(v)[0] for v in jnp.eye(2)])  # y.backward(v) for v = e1, e2
  say(f"2.2.2 Jacobian at x = [2, 3]: jacrev {rev.tolist()}, jacfwd {fwd.tolist()}, "
        f"VJP rows {rows.tolist()} (book: [[4, 3], [2, 6]])")
  return {"2.2.2": {"jacobian": rev.tolist(), "jacfwd": fwd.tolist(), "vjp_rows": rows.tolist(),
                    "seed": [[4, 3], [2, 6]]}}


def main(argv=None) -> dict:
  cfg = cli.parse(Config, argv, __doc__.split("\n\n")[0])
  if distributed.settings() is not None:  # e.g. started by dlcore.launch
    raise cli.ConfigError("basics runs in one process (it compares NumPy, eager and jit "
                          "side by side); start it without dlcore.launch")
  run = RunDir(cfg.workdir, config=cfg, overwrite=cfg.overwrite)
  say(f"[basics] run directory: {run.path}\n2.2.1 gradient descent three ways "
        f"({cfg.steps} steps, lr {cfg.lr}):")
  seeds = range(cfg.seed, cfg.seed + cfg.seeds)
  entry = summarize([gradient_descent_three_ways(cfg, run, s, report=s == cfg.seed)
                     for s in tqdm(seeds, desc="2.2.1 seeds", disable=cfg.seeds == 1 or
                                   not cfg.progress)], list(seeds))
  if cfg.seeds > 1:
    say(f"  over {cfg.seeds} seeds: " + "; ".join(
        f"{k} w={spread(entry[k], 'w')} b={spread(entry[k], 'b')}"
        for k in ("numpy", "eager", "jit")))
  entry |= {"seed_printed": SEED_PRINTED, "steps": cfg.steps, "lr": cfg.lr}
  summary = {"2.2.1": entry} | jacobian_demo()
  run.update_summary(summary)
  run.close()
  return summary


if __name__ == "__main__":
  cli.entry(main)
