"""Book chapter 5 (SPEC 2.5.1-2.5.7): regularisation, initialisation, losses, optimizers and
data parallelism, each shown with numbers and a figure.

    python -m experiments.regularization --devices 4      # 4 host devices for 2.5.7

Data: scikit-learn's diabetes regression set (442 patients, 10 standardised features, a
disease-progression target; the seed used Boston housing, which scikit-learn no longer
ships), split 80/20 with seed 0, features and target standardised with the train split's
statistics, so an MSE of 1 is "predicts the mean".

2.5.1-2.5.3  a 10-256-256-1 ReLU MLP (big for 353 training rows, so it overfits), Adam 1e-3,
             batch 32, 300 epochs: without and with weight decay (coupled L2 through the
             optimizer, 0.1 here), dropout (0.5) and batch norm. Train and test MSE per
             epoch, one figure per pair (with --tensorboard, logs under <run>/variants/*/tb).
2.5.4        activation statistics per layer of a 10-layer, 256-wide tanh net and ReLU net on
             N(0, 1) inputs, for Xavier, Kaiming and PyTorch's default init.
2.5.5        MSE with reduction mean / sum / none and class-weighted cross entropy, each
             checked against the formula computed by hand in NumPy.
2.5.6        SGD, momentum, Nesterov, AdaGrad, RMSProp and Adam (lr 0.01 each, from the same
             init, on the same batches) on the diabetes MLP, one figure; plus Adam for half
             the epochs, then SGD.
2.5.7        the seed's `Net1` (Linear 10-16, 16-32, 32-1) with batch 128 split over the
             devices by the pmap step, printing the per-device and global batch shapes as the
             seed's DataParallel demo did; its final loss equals the single-device run's.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlcore import data as dldata
from dlcore import losses, models, optim
from dlcore.harness import cli, plots
from dlcore.harness.rundir import RunDir, start_run
from dlcore.harness.seeds import Seeds, curve, spread
from dlcore.harness.writers import say
from dlcore.models.init import torch_kernel_init
from dlcore.models.layers import Linear, Sequential
from dlcore.train import (Runner, batch_evaluator, fit, make_eval_step, make_train_step,
                          per_member)


@dataclasses.dataclass
class Config:
  common: cli.Shared = cli.shared()
  epochs: cli.Positive[int] = 300
  """2.5.1-2.5.3: training epochs of each variant."""
  batch_size: cli.Positive[int] = 32
  """2.5.1-2.5.3: batch size."""
  lr: Annotated[float, cli.Between(0.0)] = 1e-3
  """2.5.1-2.5.3: Adam learning rate."""
  hidden: cli.Positive[int] = 256
  """Width of the MLP's two hidden layers."""
  weight_decay: Annotated[float, cli.Between(0.0)] = 0.1
  """2.5.1: coupled L2 weight decay."""
  dropout: cli.Fraction[float] = 0.5
  """2.5.2: dropout rate."""
  optimizer_epochs: cli.Positive[int] = 100
  """2.5.6: epochs per optimizer."""
  optimizer_lr: Annotated[float, cli.Between(0.0)] = 0.01
  """2.5.6: learning rate of every optimizer."""
  parallel_epochs: cli.Positive[int] = 50
  """2.5.7: epochs of the data-parallel Net1."""
  parallel_batch_size: cli.Positive[int] = 128
  """2.5.7: global batch size split over the devices."""


def load_diabetes(seed: int = 0):
  from sklearn.datasets import load_diabetes
  from sklearn.model_selection import train_test_split
  from sklearn.preprocessing import StandardScaler

  x, y = load_diabetes(return_X_y=True)
  xtr, xte, ytr, yte = train_test_split(x, y, test_size=0.2, random_state=seed)
  xs, ys = StandardScaler().fit(xtr), StandardScaler().fit(ytr[:, None])
  f = lambda a: a.astype(np.float32)  # noqa: E731
  return ({"x": f(xs.transform(xtr)), "y": f(ys.transform(ytr[:, None]))},
          {"x": f(xs.transform(xte)), "y": f(ys.transform(yte[:, None]))})


def mse_loss(out, batch):
  return losses.mse(out, batch["y"]), {}


def mse_metrics(out, batch):
  return {"loss": losses.mse(out, batch["y"]),
          "count": jnp.asarray(batch["y"].shape[0], jnp.float32)}


def train_regressor(cfg, model, tx, splits: list[tuple[dict, dict]], *, epochs, batch_size,
                    runner=None, run=None, desc="", drop_remainder=False, state=None,
                    seeds: Seeds | None = None):
  """Trains on `splits[i]` = (train, test) of seed i (`seeds`, default --seed alone): several
  seeds train as the engine's members, each on its own split and in its own order."""
  seeds = seeds or Seeds([cfg.common.seed])
  runner = seeds.runner(runner or Runner("jit"))
  state = state or seeds.state(model, tx, splits[0][0]["x"][:2],
                               loss_scale=cli.loss_scale(cfg.common))
  step = runner.compile(seeds.step(make_train_step(mse_loss)))

  def order(i, e):
    return dldata.batches(splits[i][0], batch_size, shuffle=True, seed=seeds.seeds[i], epoch=e,
                          drop_remainder=drop_remainder)

  if not seeds.many:
    batches, evaluators = (lambda e: order(0, e)), [batch_evaluator(
        runner.compile_eval(make_eval_step(mse_metrics)),
        lambda: dldata.batches(splits[0][1], 1000))]
  else:  # each seed's batches from its own split; each seed's own test set, vmapped
    def batches(e):
      return map(per_member, zip(*(order(i, e) for i in range(seeds.n))))

    tests = per_member([test for _, test in splits]).batch
    evaluate = jax.jit(jax.vmap(make_eval_step(mse_metrics)))

    def own_tests(state, key):
      return {k: np.asarray(v).tolist() for k, v in evaluate(state, tests).items()}

    own_tests.stacked = True
    evaluators = [own_tests]
  return fit(state, step, batches, runner=runner, num_epochs=epochs, evaluators=evaluators,
             run=run, progress=cfg.common.progress, desc=desc, log_every=10**9)


def regularizers(cfg, run) -> dict:
  seeds = Seeds.of(cfg.common)
  splits = [load_diabetes(s) for s in seeds.seeds]  # each seed's single run splits by its seed
  widths = (cfg.hidden, cfg.hidden, 1)
  pairs = {
      "2.5.1": ("weight decay", {}, {"weight_decay": cfg.weight_decay}, {}, {}),
      "2.5.2": ("dropout", {}, {}, {}, {"dropout": cfg.dropout}),
      "2.5.3": ("batch norm", {}, {}, {}, {"batchnorm": True}),
  }
  out = {}
  for spec_id, (what, opt_off, opt_on, model_off, model_on) in pairs.items():
    curves, finals = {}, {}
    for label, opt_kw, model_kw in (("without", opt_off, model_off), ("with", opt_on, model_on)):
      model = models.build("mlp", widths=widths, activation="relu", **model_kw,
                           dtype=cli.model_dtype(cfg.common))
      tx = optim.make_optimizer("adam", cfg.lr, **opt_kw)
      # One run directory per variant: `tensorboard --logdir <run>/variants` shows them all.
      # Variants are recomputed on every run of the experiment, so each starts over.
      sub = RunDir(run.file("variants", f"{spec_id}_{label}"), overwrite=True,
                   tensorboard=cfg.common.tensorboard)
      state, hist = train_regressor(cfg, model, tx, splits, epochs=cfg.epochs,
                                    batch_size=cfg.batch_size, run=sub, seeds=seeds,
                                    desc=f"{spec_id} {label} {what}")
      sub.close()
      curves[f"train, {label} {what}"] = curve(hist, "train", "loss")
      curves[f"test, {label} {what}"] = curve(hist, "eval", "loss")
      finals[label] = seeds.summarize([
          {"train_mse": h[-1]["train"]["loss"], "test_mse": h[-1]["eval"]["loss"],
           "best_test_mse": min(r["eval"]["loss"] for r in h)}
          for _, h in seeds.each(state, hist)])
    plots.curves(curves, run.file(f"{spec_id}_{what.replace(' ', '_')}.png"), xlabel="epoch",
                 ylabel="MSE (standardised target)", logy=True,
                 title=f"{spec_id}: {what} on diabetes, 10-{cfg.hidden}-{cfg.hidden}-1 ReLU")
    out[spec_id] = {"final": finals, "data": "scikit-learn diabetes, 80/20 split",
                    "epochs": cfg.epochs}
    say(f"{spec_id} {what}: final test MSE without {finals['without']['test_mse']:.3f}, with "
          f"{finals['with']['test_mse']:.3f} (train {finals['without']['train_mse']:.3f} vs "
          f"{finals['with']['train_mse']:.3f})")
  return out


class DeepNet(nn.Module):
  """A `depth`-layer, `width`-wide net (no biases) that records each layer's activations."""
  depth: int = 10
  width: int = 256
  activation: str = "tanh"
  init_scheme: str = "xavier"

  @nn.compact
  def __call__(self, x):
    inits = {"xavier": nn.initializers.xavier_normal(),
             "kaiming": nn.initializers.kaiming_normal(),
             "default": torch_kernel_init}
    act = jnp.tanh if self.activation == "tanh" else nn.relu
    for i in range(self.depth):
      x = act(nn.Dense(self.width, use_bias=False, kernel_init=inits[self.init_scheme])(x))
      self.sow("intermediates", f"layer{i + 1}", x)
    return x


def init_statistics(cfg, run) -> dict:
  x = jax.random.normal(jax.random.PRNGKey(cfg.common.seed), (1024, 256))
  out, groups = {}, {}
  for act in ("tanh", "relu"):
    series = {}
    for scheme in ("xavier", "kaiming", "default"):
      net = DeepNet(activation=act, init_scheme=scheme)
      v = net.init(jax.random.PRNGKey(cfg.common.seed + 1), x)
      _, inter = net.apply(v, x, mutable=["intermediates"])
      stds = [float(jnp.std(inter["intermediates"][f"layer{i + 1}"][0])) for i in range(10)]
      series[scheme] = stds
    groups[f"{act}: activation std per layer"] = series
    out[act] = series
    say(f"2.5.4 {act}: last-layer activation std " +
          ", ".join(f"{k} {v[-1]:.3g}" for k, v in series.items()))
  plots.panels(groups, run.file("2.5.4_init_activation_std.png"), x=np.arange(1, 11),
               xlabel="layer", logy=list(groups),
               title="10 layers of 256 units on N(0, 1) inputs")
  return {"2.5.4": {"activation_std_per_layer": out}}


def loss_checks() -> dict:
  rng = np.random.default_rng(0)
  pred, target = rng.normal(size=(4, 3)), rng.normal(size=(4, 3))
  sq = (pred - target) ** 2
  mse = {r: np.asarray(losses.mse(jnp.asarray(pred), jnp.asarray(target), r))
         for r in ("mean", "sum", "none")}
  logits, labels = rng.normal(size=(6, 3)), np.array([0, 1, 2, 2, 1, 0])
  weights = np.array([1.0, 2.0, 0.5])
  logp = logits - np.log(np.exp(logits).sum(1, keepdims=True))
  nll = -logp[np.arange(6), labels]
  by_hand = float((weights[labels] * nll).sum() / weights[labels].sum())
  ours = float(losses.cross_entropy(jnp.asarray(logits), jnp.asarray(labels), weights))
  errors = {"mse_mean": float(abs(mse["mean"] - sq.mean())),
            "mse_sum": float(abs(mse["sum"] - sq.sum())),
            "mse_none": float(np.abs(mse["none"] - sq).max()),
            "weighted_cross_entropy": abs(ours - by_hand)}
  say("2.5.5 losses vs hand computation, max abs error: " +
        ", ".join(f"{k} {v:.1e}" for k, v in errors.items()))
  return {"2.5.5": {"max_abs_error": errors, "weighted_cross_entropy": ours,
                    "mse": {"mean": float(mse["mean"]), "sum": float(mse["sum"])}}}


def compare_optimizers(cfg, run) -> dict:
  seeds = Seeds.of(cfg.common)
  splits = [load_diabetes(s) for s in seeds.seeds]
  model = models.build("mlp", widths=(64, 64, 1), activation="relu", dtype=cli.model_dtype(cfg.common))
  curves, finals = {}, {}

  def final(state, hist):
    return seeds.summarize([{"train_mse": h[-1]["train"]["loss"],
                             "test_mse": h[-1]["eval"]["loss"]}
                            for _, h in seeds.each(state, hist)])

  for name in optim.NAMES:
    tx = optim.make_optimizer(name, cfg.optimizer_lr)
    state, hist = train_regressor(cfg, model, tx, splits, epochs=cfg.optimizer_epochs,
                                  batch_size=cfg.batch_size, desc=f"2.5.6 {name}", seeds=seeds)
    curves[name] = curve(hist, "train", "loss")
    finals[name] = final(state, hist)
  # Adam for the first half, then SGD from Adam's weights (a fresh SGD state).
  half = cfg.optimizer_epochs // 2
  adam = optim.make_optimizer("adam", cfg.optimizer_lr)
  state, h1 = train_regressor(cfg, model, adam, splits, epochs=half, seeds=seeds,
                              batch_size=cfg.batch_size, desc="2.5.6 adam then sgd (adam)")
  sgd = optim.make_optimizer("sgd", cfg.optimizer_lr)
  init = jax.vmap(sgd.init) if seeds.many else sgd.init
  state = state.replace(tx=sgd, opt_state=init(state.params))
  # `fit` continues from the state's step (it skips the epochs already done, as on resume),
  # so this trains epochs half..end on the same batches the other optimizers saw there.
  state, h2 = train_regressor(cfg, model, sgd, splits, epochs=cfg.optimizer_epochs,
                              batch_size=cfg.batch_size, desc="2.5.6 adam then sgd (sgd)",
                              state=state, seeds=seeds)
  curves["adam then sgd"] = curve(h1 + h2, "train", "loss")
  finals["adam then sgd"] = final(state, h2)
  plots.curves(curves, run.file("2.5.6_optimizers.png"), xlabel="epoch", logy=True,
               ylabel="train MSE (standardised target)",
               title=f"2.5.6: six optimizers, lr {cfg.optimizer_lr}, 10-64-64-1 on diabetes")
  for k, v in finals.items():
    say(f"2.5.6 {k:<14} train MSE {spread(v, 'train_mse')}, test MSE {spread(v, 'test_mse')}")
  return {"2.5.6": {"final": finals, "epochs": cfg.optimizer_epochs, "lr": cfg.optimizer_lr}}


def net1(in_features: int = 10) -> Sequential:
  """The seed's `Net1`: Linear(13, 16) - Linear(16, 32) - Linear(32, 1) (no activations,
  as in the seed); 10 inputs for diabetes."""
  return Sequential([Linear(in_features, 16), Linear(16, 32), Linear(32, 1)])


def data_parallel(cfg, run) -> dict:
  """pmap against one device, on --seed alone: a check that two modes agree, not a result
  with a spread over seeds."""
  train, test = load_diabetes(cfg.common.seed)
  devices = jax.local_device_count()
  bs = cfg.parallel_batch_size - cfg.parallel_batch_size % devices
  model = net1(train["x"].shape[1])
  tx = optim.make_optimizer("sgd", 0.01)
  pm = Runner("pmap", devices=devices)
  shard = pm.put_batch({"x": train["x"][:bs]})["x"]
  say(f"2.5.7 data parallel over {devices} device(s): global batch {(bs, train['x'].shape[1])}"
        f" -> per device {tuple(shard.shape[1:])} on each of {shard.shape[0]}")
  results = {}
  for mode, runner in (("pmap", pm), ("single", Runner("jit"))):
    state, hist = train_regressor(cfg, model, tx, [(train, test)], epochs=cfg.parallel_epochs,
                                  batch_size=bs, runner=runner, drop_remainder=True,
                                  desc=f"2.5.7 {mode}")
    full = float(losses.mse(model.apply({"params": state.params}, train["x"]), train["y"]))
    results[mode] = {"final_train_mse": full, "test_mse": hist[-1]["eval"]["loss"]}
  diff = abs(results["pmap"]["final_train_mse"] - results["single"]["final_train_mse"])
  say(f"2.5.7 final train MSE: pmap {results['pmap']['final_train_mse']:.6f}, single device "
        f"{results['single']['final_train_mse']:.6f} (difference {diff:.1e})")
  return {"2.5.7": {"final_loss": results["pmap"]["final_train_mse"],
                    "single_device_final_loss": results["single"]["final_train_mse"],
                    "devices": devices, "global_batch": [bs, int(train["x"].shape[1])],
                    "per_device_batch": list(shard.shape[1:]), "difference": diff}}


def main(argv=None) -> dict:
  cfg = cli.parse(Config, argv, __doc__.split("\n\n")[0])
  run, _ = start_run(cfg, "regularization", checkpoints=False)
  summary = {}
  summary |= regularizers(cfg, run)
  summary |= init_statistics(cfg, run)
  summary |= loss_checks()
  summary |= compare_optimizers(cfg, run)
  summary |= data_parallel(cfg, run)
  run.update_summary(summary)
  run.close()
  return summary


if __name__ == "__main__":
  cli.entry(main)
