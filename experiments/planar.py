"""Seed 000: logistic regression and multilayer nets on the planar "flower" (SPEC 0.1-0.5).

    python -m experiments.planar --workdir runs/planar

Trains the seed's five networks full-batch with SGD and BCE-with-logits, draws each decision
boundary, and saves every trained net both ways the seed shows: parameters only (reloaded into
a model the caller declares) and "whole model" (reloaded from the registry, no class needed),
checking that the reloaded nets give identical outputs.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar, Literal

import jax
import numpy as np

from dlcore import checkpoint, losses, models, optim
from dlcore.data import synthetic
from dlcore.harness import cli, plots
from dlcore.harness.rundir import start_run
from dlcore.harness.seeds import Seeds, spread
from dlcore.harness.sweeps import Sweep
from dlcore.harness.writers import say
from dlcore.train import fit, make_eval_step, make_train_step, repeat_step

# id -> (registered model, constructor kwargs, optimizer lr, steps); the seed's settings.
NETS = {
    "0.1": ("logistic_regression", {}, 0.1, 100),
    "0.2": ("raw_two_layer", {"num_hidden": 4, "init_scale": 0.01}, 1.0, 10000),
    "0.3": ("sequential_net", {"num_hidden": 4}, 1.0, 10000),
    "0.4": ("module_net", {"num_hidden": 4}, 1.0, 10000),
    "0.5": ("mlp", {"widths": (10, 10, 10, 1), "activation": "tanh"}, 0.1, 20000),
}
TITLES = {"0.1": "logistic regression", "0.2": "2 layer network (raw parameters)",
          "0.3": "sequential", "0.4": "module_net", "0.5": "deep 2-10-10-10-1 tanh"}


@dataclasses.dataclass
class Config:
  SWEEPABLE: ClassVar = ("lr_scale",)  # --sweep: numbers in the step, one program per net
  common: cli.Shared = cli.shared()
  nets: tuple[Literal["0.1", "0.2", "0.3", "0.4", "0.5"], ...] = tuple(NETS)
  """Which of the seed's nets to train (SPEC ids)."""
  steps_scale: Annotated[float, cli.Between(1e-6)] = 1.0
  """Multiply every net's step count (e.g. 0.1 for a quick run)."""
  lr_scale: Annotated[float, cli.Between(0.0)] = 1.0
  """Multiply every net's learning rate (the seed's own at 1; `--sweep lr_scale=...`)."""
  fuse: cli.Positive[int] = 100
  """Optimizer steps per compiled call (lax.scan); 1 is a Python loop of jitted steps."""
  data_seed: int = 1
  """Seed of the planar data (the seed's np.random.seed(1))."""


def loss_fn(logits, batch):
  return losses.bce_with_logits(logits, batch["y"]), {}


def metrics_fn(logits, batch):
  return {"loss": losses.bce_with_logits(logits, batch["y"]),
          "accuracy": losses.accuracy(logits, batch["y"])}


def train_one(net_id: str, cfg: Config, run, runner, data: dict, seeds: Seeds):
  name, kwargs, lr, steps = NETS[net_id]
  steps = max(1, int(round(steps * cfg.steps_scale)))
  chunk = min(cfg.fuse, steps)
  if steps % chunk:
    raise ValueError(f"{net_id}: {steps} steps do not divide into --fuse {chunk} chunks")
  model = models.build(name, **kwargs, dtype=cli.model_dtype(cfg.common))
  # lr * 1.0 is lr: the seed's rate, bit for bit, at the default scale
  tx = seeds.optimizer(lambda lr_scale: optim.make_optimizer("sgd", lr * lr_scale),
                       lr_scale=cfg.lr_scale)
  state = seeds.state(model, tx, data["x"], loss_scale=cli.loss_scale(cfg.common))
  step = make_train_step(loss_fn)
  if chunk > 1:
    step = repeat_step(step, chunk)
  step = seeds.step(step)  # full batch: every seed trains on the same data
  with checkpoint.Checkpointer(run.file("checkpoints", net_id), max_to_keep=2,
                               save_every_steps=max(chunk, steps // 10),
                               background=True) as ckpt:
    state, history = fit(
        state, runner.compile(step), lambda epoch: [data], runner=runner,
        num_epochs=steps // chunk, steps_per_call=chunk,
        eval_step=runner.compile_eval(make_eval_step(metrics_fn)),
        eval_batches=lambda: [data], writer=run.scoped(net_id), checkpointer=ckpt,
        resume=cfg.common.resume,
        progress=cfg.common.progress, desc=f"{net_id} {name}", log_every=10**9)
  finals = [h[-1]["eval"] if h else metrics_fn(model.apply({"params": s.params}, data["x"]),
                                                 data)
            for s, h in seeds.each(state, history)]
  variables = {"params": seeds.first(state).params}  # figures and saved models: first seed
  predict = jax.jit(lambda x: (model.apply(variables, x) > 0).astype(np.int32)[:, 0])
  plots.decision_boundary(predict, data["x"], data["y"], run.file(f"boundary_{net_id}.png"),
                          title=f"{net_id} {TITLES[net_id]}")
  return model, variables, finals, history


def reload_checks(net_id: str, run, variables, x) -> dict:
  """Both ways of saving (seed 000): identical outputs after reloading?"""
  name, kwargs, _, _ = NETS[net_id]
  # Saved models are float32 whatever the run's precision: compare with the float32 net.
  out = np.asarray(models.build(name, **kwargs).apply(variables, x))
  # 1) parameters only: the caller declares the model again and restores into it.
  p = checkpoint.save_params(run.file("models", f"{net_id}_params"), variables)
  fresh = models.build(name, **kwargs)
  target = fresh.init(jax.random.PRNGKey(123), x[:1])
  out_params = np.asarray(fresh.apply(checkpoint.load_params(p, target), x))
  # 2) whole model: name + constructor arguments + parameters; no class declared here.
  p = checkpoint.save_model(run.file("models", f"{net_id}_model"), name, variables,
                            input_shape=x.shape[1:], kwargs=kwargs)
  loaded_model, loaded_vars = checkpoint.load_model(p)
  out_model = np.asarray(loaded_model.apply(loaded_vars, x))
  return {"params_only": bool(np.array_equal(out, out_params)),
          "whole_model": bool(np.array_equal(out, out_model))}


def show_layers(net_id: str, model, variables) -> None:
  """The seed's layer access: `seq_net[0].weight`, `mo_net.layer1.weight`."""
  params = variables["params"]
  if net_id == "0.3":
    say(f"  model.layers[0] = {model.layers[0]!r}".replace("\n", " "))
    say(f"  params['layers_0']['kernel'] (PyTorch weight.T):\n{params['layers_0']['kernel']}")
  elif net_id == "0.4":
    say(f"  params['layer1']['kernel'] (PyTorch layer1.weight.T):\n{params['layer1']['kernel']}")


def main(argv=None) -> dict:
  cfg = cli.parse(Config, argv, __doc__.split("\n\n")[0])
  unknown = set(cfg.nets) - set(NETS)
  if unknown:
    raise cli.ConfigError(f"unknown net id(s) {sorted(unknown)}; choose from {list(NETS)}")
  run, runner = start_run(cfg, "planar")
  sweep = Sweep.of(cfg)
  seeds = Seeds.of(cfg.common, sweep=sweep)
  runner = seeds.runner(runner)
  if sweep is not None:
    say(seeds.describe() + " per net")
  x, y = synthetic.planar_flower(seed=cfg.data_seed)
  data = {"x": x, "y": y}
  summary, curves, xs = {}, {}, {}
  for net_id in cfg.nets:
    model, variables, finals, history = train_one(net_id, cfg, run, runner, data, seeds)
    show_layers(net_id, model, variables)
    reload = reload_checks(net_id, run, variables, x)
    entry = seeds.summarize([{"loss": f["loss"], "accuracy": f["accuracy"]} for f in finals],
                            best="loss", higher_is_better=False)
    if sweep is not None:
      entry |= entry["best_point"] | {"figures_member": {**seeds.hyper[0],
                                                         "seed": seeds.seeds[0]}}
      sweep.write(run, entry, seeds.per_point, ["loss", "accuracy"],
                  curves={"loss": [seeds.curve(h, "eval", "loss")
                                   for h in seeds.histories(history)]},
                  title=f"{net_id} {TITLES[net_id]}", name=f"sweep_{net_id}")
    summary[net_id] = entry | {"steps": history[-1]["step"] if history else 0,
                               "reload_identical": reload,
                               "dataset": "planar_flower(m=400, seed=1)"}
    curves[net_id] = seeds.curve(seeds.shown(history), "eval", "loss")
    xs[net_id] = [h["step"] for h in history]
    say(f"  {net_id} {TITLES[net_id]}: loss {spread(entry, 'loss')} accuracy "
          f"{spread(entry, 'accuracy', '.3f')} reload identical {reload}")
  plots.curves(curves, run.file("loss_curves.png"), xs=xs, title="planar: BCE loss",
               logy=False)
  run.update_summary(summary)
  run.close()
  return summary


if __name__ == "__main__":
  cli.entry(main)
