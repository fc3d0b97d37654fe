"""Seed 001: the two-layer ReLU net six ways, and the scalar autograd example (SPEC 1.1-1.6).

    python -m experiments.two_layer --workdir runs/two_layer

N=64, D_in=1000, H=100, D_out=10, x and y ~ N(0, 1), loss = sum of squared errors, 500 steps.
1.1 NumPy with hand-written backward (float64, as NumPy computes), 1.2 the same code on JAX
arrays, 1.3 `jax.grad` with a manual update (all three from the same N(0, 1) weights, lr 1e-6);
1.4 the Sequential model with SGD, 1.5 with Adam, 1.6 the TwoLayerNet module with SGD
(PyTorch-default init, lr 1e-4), trained through dlcore's engine.
"""
from __future__ import annotations

import dataclasses
import time
from typing import Annotated

import jax
import jax.numpy as jnp
import numpy as np

from dlcore import losses, manual, models, optim
from dlcore.data import synthetic
from dlcore.harness import cli, plots
from dlcore.harness.rundir import start_run
from dlcore.harness.seeds import Seeds, curve
from dlcore.harness.writers import say
from dlcore.train import fit, make_train_step, per_member, repeat_step


@dataclasses.dataclass
class Config:
  common: cli.Shared = cli.shared()
  steps: cli.Positive[int] = 500
  """Training steps of every variant."""
  n: cli.Positive[int] = 64
  """Batch size (the seed's N)."""
  d_in: cli.Positive[int] = 1000
  """Input size."""
  hidden: cli.Positive[int] = 100
  """Hidden size."""
  d_out: cli.Positive[int] = 10
  """Output size."""
  lr_manual: Annotated[float, cli.Between(0.0)] = 1e-6
  """1.1-1.3: learning rate (weights ~ N(0, 1))."""
  lr_module: Annotated[float, cli.Between(0.0)] = 1e-4
  """1.4-1.6: learning rate (PyTorch-default init)."""
  fuse: cli.Positive[int] = 100
  """1.4-1.6: steps per compiled call (lax.scan); 1 is a Python loop."""

  def check(self):
    if self.steps % min(self.fuse, self.steps):
      raise cli.ConfigError(f"--steps {self.steps} must be a multiple of --fuse {self.fuse}")


def scalar_autograd() -> dict:
  """y = w * x + b at x=1, w=2, b=3: dy/dx = 2, dy/dw = 1, dy/db = 1."""
  dx, dw, db = jax.grad(lambda x, w, b: w * x + b, argnums=(0, 1, 2))(1.0, 2.0, 3.0)
  return {"dy_dx": float(dx), "dy_dw": float(dw), "dy_db": float(db)}


def manual_runs(cfg: Config, x, y, seed: int) -> tuple[dict, dict]:
  rng = np.random.RandomState(seed + 1)
  w1 = rng.randn(cfg.d_in, cfg.hidden)
  w2 = rng.randn(cfg.hidden, cfg.d_out)
  x64, y64 = x.astype(np.float64), y.astype(np.float64)
  results, curves = {}, {}

  # 1.1 NumPy, hand-written backward.
  a, b, hist, t0 = w1.copy(), w2.copy(), [], time.perf_counter()
  for _ in range(cfg.steps):
    loss, a, b = manual.two_layer_sgd_step(x64, y64, a, b, cfg.lr_manual, np)
    hist.append(float(loss))
  results["1.1"] = {"loss": hist[-1], "wall_ms_per_step": 1e3 * (time.perf_counter() - t0) / cfg.steps}
  curves["1.1 numpy"] = hist

  # 1.2 the same hand-written code on JAX arrays (float32); jitted unless --mode eager.
  step12 = jax.jit(manual.two_layer_sgd_step, static_argnums=5)
  if cfg.common.mode == "eager":
    step12 = lambda *args: manual.two_layer_sgd_step(*args)  # noqa: E731
  a, b = jnp.asarray(w1, jnp.float32), jnp.asarray(w2, jnp.float32)
  xj, yj, hist, t0 = jnp.asarray(x), jnp.asarray(y), [], time.perf_counter()
  for _ in range(cfg.steps):
    loss, a, b = step12(xj, yj, a, b, cfg.lr_manual, jnp)
    hist.append(loss)
  hist = [float(v) for v in hist]
  results["1.2"] = {"loss": hist[-1], "wall_ms_per_step": 1e3 * (time.perf_counter() - t0) / cfg.steps}
  curves["1.2 jax.numpy"] = hist

  # 1.3 automatic gradients, manual update.
  def sse(ws):
    return jnp.sum(jnp.square(jax.nn.relu(xj @ ws[0]) @ ws[1] - yj))

  @jax.jit
  def step13(ws):
    loss, g = jax.value_and_grad(sse)(ws)
    return loss, jax.tree.map(lambda w, gw: w - cfg.lr_manual * gw, ws, g)

  ws, hist, t0 = (jnp.asarray(w1, jnp.float32), jnp.asarray(w2, jnp.float32)), [], time.perf_counter()
  for _ in range(cfg.steps):
    loss, ws = step13(ws)
    hist.append(loss)
  hist = [float(v) for v in hist]
  results["1.3"] = {"loss": hist[-1], "wall_ms_per_step": 1e3 * (time.perf_counter() - t0) / cfg.steps}
  curves["1.3 jax.grad"] = hist

  # The hand-written gradients equal the automatic ones (at the initial weights, float64).
  _, g1, g2 = manual.two_layer_forward_backward(x64, y64, w1, w2, np)
  with jax.enable_x64(True):
    auto = jax.grad(lambda ws: jnp.sum(jnp.square(jax.nn.relu(x64 @ ws[0]) @ ws[1] - y64)))(
        (jnp.asarray(w1), jnp.asarray(w2)))
    rel = max(float(np.max(np.abs(g - np.asarray(ga))) / np.max(np.abs(ga)))
              for g, ga in zip((g1, g2), auto))
  return results, curves | {"_gradcheck": rel}


def module_runs(cfg: Config, run, runner, datasets: list[dict]) -> tuple[list[dict], dict]:
  """1.4-1.6 for each seed (its own data, `datasets[i]`) as one program; per-seed results."""
  seeds = Seeds.of(cfg.common)
  runner = seeds.runner(runner)
  x = datasets[0]["x"]
  data = per_member(datasets) if seeds.many else datasets[0]
  variants = {
      "1.4": ("two_layer_sequential", "sgd"),
      "1.5": ("two_layer_sequential", "adam"),
      "1.6": ("two_layer_net", "sgd"),
  }
  chunk = min(cfg.fuse, cfg.steps)
  if cfg.steps % chunk:
    raise cli.ConfigError(f"--steps {cfg.steps} must be a multiple of --fuse {chunk}")
  results, curves = [{} for _ in datasets], {}
  for sid, (name, opt) in variants.items():
    model = models.build(name, num_input=cfg.d_in, hidden=cfg.hidden, num_output=cfg.d_out,
                         dtype=cli.model_dtype(cfg.common))
    state = seeds.state(model, optim.make_optimizer(opt, cfg.lr_module), x,
                        loss_scale=cli.loss_scale(cfg.common))
    step = make_train_step(lambda out, b: (losses.mse(out, b["y"], "sum"), {}))
    if chunk > 1:
      step = repeat_step(step, chunk)
    step = seeds.step(step)
    t0 = time.perf_counter()
    state, history = fit(state, runner.compile(step), lambda e: [data], runner=runner,
                         num_epochs=cfg.steps // chunk, steps_per_call=chunk, run=run,
                         progress=cfg.common.progress, desc=f"{sid} {name} {opt}", log_every=10**9)
    seconds = time.perf_counter() - t0
    for res, (member, _), d in zip(results, seeds.each(state), datasets):
      final = float(losses.mse(model.apply({"params": member.params}, d["x"]), d["y"], "sum"))
      res[sid] = {"loss": final, "model": name, "optimizer": opt,
                  "wall_ms_per_step": 1e3 * seconds / cfg.steps}
    curves[f"{sid} {name} {opt}"] = curve(history, "train", "loss")
  return results, curves


def main(argv=None) -> dict:
  cfg = cli.parse(Config, argv, __doc__.split("\n\n")[0])
  run, runner = start_run(cfg, "two_layer", checkpoints=False)
  seeds = Seeds.of(cfg.common)  # each seed draws its own data, as its single run does
  datasets = [dict(zip("xy", synthetic.random_regression(cfg.n, cfg.d_in, cfg.d_out, seed=s)))
              for s in seeds.seeds]
  manual = [manual_runs(cfg, d["x"], d["y"], s) for d, s in zip(datasets, seeds.seeds)]
  gradcheck = max(c.pop("_gradcheck") for _, c in manual)
  manual_curves = {k: np.array([c[k] for _, c in manual]) if seeds.many else manual[0][1][k]
                   for k in manual[0][1]}
  module_res, module_curves = module_runs(cfg, run, runner, datasets)
  plots.curves(manual_curves, run.file("loss_manual.png"), logy=True,
               title="1.1-1.3: N(0,1) weights, lr 1e-6 (sum of squared errors)")
  chunk = min(cfg.fuse, cfg.steps)
  plots.curves(module_curves, run.file("loss_modules.png"), logy=True,
               xs={k: np.arange(1, np.shape(v)[-1] + 1) * chunk for k, v in module_curves.items()},
               title="1.4-1.6: modules, lr 1e-4 (mean over each fused chunk)")
  per_seed = [m | r for (m, _), r in zip(manual, module_res)]
  summary = {k: seeds.summarize([p[k] for p in per_seed]) for k in per_seed[0]}
  summary |= {
             "1.1-gradcheck": {"max_relative_error": gradcheck, "passed": gradcheck < 1e-10},
             "1.0-scalar": scalar_autograd()}
  for k, v in summary.items():
    say(f"  {k}: {v}")
  run.update_summary(summary)
  run.close()
  return summary


if __name__ == "__main__":
  cli.entry(main)
