"""Seed 003 (SPEC 3.1-3.4): an MLP on the 3-class spiral (Made With ML), its initialisation,
dropout, and an overfitting demonstration.

    python -m experiments.spiral                                  # generated spiral
    python -m experiments.spiral --csv ../shared/data/spiral.csv  # the notebook's own data

3.1  MLP(2, 100, 3): fc1 - ReLU - fc2; 70/15/15 stratified split; standardised with the
     train split's statistics; cross entropy weighted by 1 / class count (train split);
     Adam 1e-2; 100 full-batch epochs. Accuracy, per-class precision / recall / F1
     (scikit-learn), decision boundaries on train and test.
3.2  the same with fc1 initialised Xavier-normal with the ReLU gain.
3.3  the same with Dropout(0.1) after the ReLU (training only).
3.4  overfitting: 50 uniform random points per class (labels carry no signal), hidden size
     2 * N * C + D = 302, Adam 0.1, 500 epochs: train accuracy far above test accuracy.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar

import jax
import numpy as np
from sklearn.metrics import accuracy_score, precision_recall_fscore_support
from sklearn.model_selection import train_test_split
from sklearn.preprocessing import StandardScaler

from dlcore import data as dldata
from dlcore import losses, models, optim
from dlcore.data import synthetic
from dlcore.harness import cli, plots
from dlcore.harness.rundir import start_run
from dlcore.harness.seeds import Seeds, is_number, curve, spread
from dlcore.harness.sweeps import Sweep, shapes
from dlcore.harness.writers import say
from dlcore.train import fit, make_train_step
from dlcore.train.state import variables_of


@dataclasses.dataclass
class Config:
  SWEEPABLE: ClassVar = ("lr",)  # --sweep: 3.1-3.3's learning rate, one program
  SWEEP_SHAPES: ClassVar = ("hidden",)  # --sweep: one program per value
  common: cli.Shared = cli.shared()
  csv: str | None = None
  """Made With ML's spiral.csv (X1, X2, color columns); default: generate the spiral."""
  num_per_class: cli.Positive[int] = 500
  """Points per class when the spiral is generated."""
  hidden: cli.Positive[int] = 100
  """Width of the hidden layer."""
  lr: Annotated[float, cli.Between(0.0)] = 1e-2
  """Adam learning rate."""
  epochs: cli.Positive[int] = 100
  """Full-batch training epochs (3.2)."""
  dropout: cli.Fraction[float] = 0.1
  """Dropout rate."""
  split_seed: int = 1234
  """Seed of the 70/15/15 split (the notebook's SEED)."""
  overfit_epochs: cli.Positive[int] = 500
  """3.4: epochs of the overfitting demo."""
  overfit_lr: Annotated[float, cli.Between(0.0)] = 0.1
  """3.4: learning rate of the overfitting demo."""


def split(x, y, seed):
  """70/15/15 stratified train/val/test, as the notebook's train_val_test_split."""
  x_train, x_rest, y_train, y_rest = train_test_split(x, y, train_size=0.7, stratify=y,
                                                      random_state=seed)
  x_val, x_test, y_val, y_test = train_test_split(x_rest, y_rest, train_size=0.5,
                                                  stratify=y_rest, random_state=seed)
  scaler = StandardScaler().fit(x_train)
  f = lambda a: scaler.transform(a).astype(np.float32)  # noqa: E731
  return {"train": (f(x_train), y_train), "val": (f(x_val), y_val), "test": (f(x_test), y_test)}


def train_mlp(cfg, run, runner, data, *, name, num_classes, hidden, lr, epochs, dropout=0.0,
              init_scheme="default", weighted=True, sweep=None):
  """(each member's (state, history, predictions), history, predict, seeds); `sweep`
  (`Sweep.of(cfg)`): its points x the seeds as members, `lr` swept."""
  x_train, y_train = data["train"]
  counts = np.bincount(y_train, minlength=num_classes)
  weights = (1.0 / counts).astype(np.float32) if weighted else None
  model = models.build("spiral_mlp", input_dim=x_train.shape[1], hidden_dim=hidden,
                       num_classes=num_classes, dropout_p=dropout,
                       init_scheme=init_scheme, dtype=cli.model_dtype(cfg.common))
  seeds = Seeds.of(cfg.common, sweep=sweep)
  runner = seeds.runner(runner)
  tx = seeds.optimizer(lambda lr: optim.make_optimizer("adam", lr), lr=lr)
  state = seeds.state(model, tx, x_train[:2], loss_scale=cli.loss_scale(cfg.common))

  def loss_fn(logits, batch):
    return losses.cross_entropy(logits, batch["y"], weight=weights), {
        "accuracy": losses.accuracy(logits, batch["y"])}

  step = runner.compile(seeds.step(make_train_step(loss_fn)))  # full batch, shared
  full = {"x": x_train, "y": y_train}
  state, history = fit(state, step, lambda e: [full], runner=runner, num_epochs=epochs,
                       run=run, progress=cfg.common.progress, desc=name, log_every=10)
  predict = jax.jit(lambda s, x: s.apply_fn(variables_of(s), x).argmax(-1))
  runs = [(s, h, {k: np.asarray(predict(s, x)) for k, (x, _) in data.items()})
          for s, h in seeds.each(state, history)]
  return runs, history, predict, seeds


def metrics_of(y_true, y_pred, class_names):
  p, r, f1, support = precision_recall_fscore_support(y_true, y_pred, zero_division=0)
  return {"accuracy": float(accuracy_score(y_true, y_pred)),
          "per_class": {c: {"precision": float(p[i]), "recall": float(r[i]), "f1": float(f1[i]),
                            "support": int(support[i])} for i, c in enumerate(class_names)}}


def main(argv=None) -> dict:
  cfg = cli.parse(Config, argv, __doc__.split("\n\n")[0])
  if cfg.csv:
    x, y, class_names = synthetic.read_spiral_csv(cfg.csv)
    source = f"{cfg.csv} ({len(x)} points)"
    dldata.check_finite(x, source)
  else:
    x, y = synthetic.spiral(cfg.num_per_class, 3, seed=cfg.split_seed)
    class_names = ["c1", "c2", "c3"]
    source = f"generated spiral, {cfg.num_per_class} per class, seed {cfg.split_seed}"
  run, runner = start_run(cfg, "spiral", checkpoints=False)
  data = split(x, y, cfg.split_seed)
  say(f"data: {source}; train/val/test {[len(v[1]) for v in data.values()]}")
  summary, sweep = {}, Sweep.of(cfg)
  programs = [({}, None)] if sweep is None else sweep.programs(shapes(Config))
  if sweep is not None:
    sweep = sweep.ordered(shapes(Config))  # its points in the programs' order
    say(Seeds.of(cfg.common, sweep=programs[0][1]).describe(len(programs))
        + " for each of 3.1-3.3")
  for spec_id, name, kw in (("3.1", "default init", {}),
                            ("3.2", "xavier relu init", {"init_scheme": "xavier_relu"}),
                            ("3.3", f"dropout {cfg.dropout}", {"dropout": cfg.dropout})):
    runs, first = [], None
    for static, inner in programs:  # one program per value of a shape option (hidden)
      c = dataclasses.replace(cfg, **static)
      part, _, predict, seeds = train_mlp(c, run, runner, data, name=name,
                                          num_classes=len(class_names), hidden=c.hidden,
                                          lr=c.lr, epochs=c.epochs, sweep=inner, **kw)
      runs += part
      first = first or (predict, seeds, static)
    predict, seeds, static = first  # the figures: the first member's net
    entries = []
    for _, history, pred in runs:
      test = metrics_of(data["test"][1], pred["test"], class_names)
      entries.append({"test_accuracy": test["accuracy"], "per_class": test["per_class"],
                      "train_accuracy": float(np.mean(pred["train"] == data["train"][1])),
                      "val_accuracy": float(np.mean(pred["val"] == data["val"][1])),
                      "final_train_loss": history[-1]["train"]["loss"]})
    entry = (seeds.summarize(entries) if sweep is None else
             sweep.summarize(entries, seeds.per_point, best="val_accuracy"))
    entry |= {"data": source, "epochs": cfg.epochs}
    summary[spec_id] = entry
    if sweep is not None:  # picked by validation accuracy: the test split stays unseen
      entry |= entry["best_point"] | {"figures_member": {  # the figures' member
          **static, **seeds.hyper[0], "seed": seeds.seeds[0]}}
      sweep.write(run, entry, seeds.per_point, ["val_accuracy", "test_accuracy",
                                                "train_accuracy", "final_train_loss"],
                  curves={"train_loss": [curve(h, "train", "loss") for _, h, _ in runs]},
                  title=f"{spec_id} {name}", name=f"sweep_{spec_id}")
    best = f" (best point {Sweep.label(entry['best_point'])})" if sweep is not None else ""
    say(f"{spec_id} {name}{best}: test accuracy {spread(entry, 'test_accuracy', '.3f')} "
        f"(train {entry['train_accuracy']:.3f}, val {entry['val_accuracy']:.3f})")
    state = runs[0][0]  # the figures: the first seed's net
    for split_name in ("train", "test"):
      xs, ys = data[split_name]
      plots.decision_boundary(lambda p: predict(state, p), xs, ys,
                              run.file(f"boundary_{spec_id}_{split_name}.png"),
                              title=f"{spec_id} {name}: {split_name}")
  say("3.1 per class (test):", {c: {k: round(v, 3) for k, v in m.items() if is_number(v)}
                                   for c, m in summary["3.1"]["per_class"].items()})
  summary["3.4"] = overfit(cfg, run, runner)
  run.update_summary(summary)
  run.close()
  return summary


def overfit(cfg, run, runner) -> dict:
  """Random inputs, labels without signal, a net with 2*N*C + D hidden units."""
  n, c, d = 50, 3, 2
  rng = np.random.RandomState(cfg.split_seed)
  x = rng.rand(n * c, d).astype(np.float32)
  y = np.repeat(np.arange(c), n).astype(np.int32)
  data = split(x, y, cfg.split_seed)
  runs, history, predict, _ = train_mlp(
      cfg, run, runner, data, name="overfit", num_classes=c, hidden=2 * n * c + d,
      lr=cfg.overfit_lr, epochs=cfg.overfit_epochs, dropout=cfg.dropout)
  entry = Seeds.of(cfg.common).summarize([
      {"train_accuracy": float(np.mean(pred["train"] == data["train"][1])),
       "test_accuracy": float(np.mean(pred["test"] == data["test"][1]))} for _, _, pred in runs])
  train_acc, test_acc = entry["train_accuracy"], entry["test_accuracy"]
  state = runs[0][0]
  plots.curves({"train accuracy (batch, dropout on)": curve(history, "train", "accuracy")},
               run.file("overfit_train_accuracy.png"), xlabel="epoch", ylabel="accuracy",
               title=f"3.4 random labels: final train {train_acc:.2f} vs test {test_acc:.2f} "
                     f"(chance 0.33)")
  for split_name in ("train", "test"):
    xs, ys = data[split_name]
    plots.decision_boundary(lambda p: predict(state, p), xs, ys,
                            run.file(f"boundary_3.4_{split_name}.png"),
                            title=f"3.4 overfitting: {split_name}")
  say(f"3.4 overfitting: train accuracy {train_acc:.3f}, test accuracy {test_acc:.3f} "
        f"(chance 0.333)")
  return entry | {"hidden": 2 * n * c + d, "epochs": cfg.overfit_epochs}


if __name__ == "__main__":
  cli.entry(main)
