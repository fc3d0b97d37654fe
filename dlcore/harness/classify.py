"""What the image-classification experiments share on top of `dlcore.train.classify`: train,
then write the curves, the confusion matrix and the saved model into the run directory."""
from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import optax

from dlcore import models
from dlcore.checkpoint import save_model
from dlcore.data.images import ImageData
from dlcore.data.transforms import ImagePipeline
from dlcore.harness import cli, plots
from dlcore.harness.rundir import RunDir
from dlcore.harness.errors import ConfigError
from dlcore.harness.seeds import Seeds, curve, spread
from dlcore.harness.sweeps import Sweep, sweepable
from dlcore.harness.writers import say
from dlcore.train.classify import ClassifierRun, predict_logits, train_classifier
from dlcore.train.modes import Runner
from dlcore.train.state import variables_of


def plot_history(history: list[dict], path: str, title: str = "") -> str:
  """Train and test loss and accuracy per epoch, two panels in one PNG."""
  epochs = [h["epoch"] + 1 for h in history]
  series = {}
  for split, key in (("train", "train"), ("test", "eval")):
    for metric in ("loss", "accuracy"):
      series[f"{split} {metric}"] = curve(history, key, metric)
  return plots.panels(
      {"loss": {k: v for k, v in series.items() if k.endswith("loss")},
       "accuracy": {k: v for k, v in series.items() if k.endswith("accuracy")}},
      path, x=epochs, xlabel="epoch", title=title)


def print_epoch(epoch: int, state, record: dict) -> None:
  """The book's per-epoch line: epoch, train loss/acc, test loss/acc."""
  ev = record.get("eval", {})
  say(f"epoch: {epoch}, Train Loss: {record['train']['loss']:.4f}, Train Acc: "
        f"{record['train']['accuracy']:.4f}, Test Loss: {ev.get('loss', np.nan):.4f}, "
        f"Test Acc: {ev.get('accuracy', np.nan):.4f}")


def classifier_experiment(cfg, run: RunDir, runner: Runner, *, spec_id: str, model_name: str,
                          model_kwargs: dict, data: ImageData, pipeline: ImagePipeline,
                          tx: optax.GradientTransformation, title: str,
                          extra: dict | None = None,
                          eval_chunk: int | None = None,
                          tx_factory=None) -> tuple[dict, ClassifierRun]:
  """What the image experiments share: train `model_name` on `data`, write the curves, the
  confusion matrix and the model (`save_model`: reload with `load_model(<run>/model)`),
  and return the summary entry under `spec_id` (SPEC ids; with test_accuracy, dataset,
  epochs). `cfg.common` is a `cli.Common` (its --precision is the model's dtype; the saved
  model is float32 and its kwargs leave the dtype out), `cfg` has `epochs`, `batch_size`.
  `eval_chunk`: the test forward that many examples at a time (`train_classifier`).
  `tx_factory(**numbers)`: `tx` from the config's sweepable numbers (its `SWEEPABLE`), for
  `--sweep` (then every point x seed is a member; `tx` itself is not used)."""
  sweep = Sweep.of(cfg)
  seeds = Seeds.of(cfg.common, sweep=sweep)
  if sweep is not None:
    if tx_factory is None:
      raise ConfigError("--sweep: this experiment has no sweepable optimizer settings")
    tx = seeds.optimizer(tx_factory, **{n: getattr(cfg, n) for n in sweepable(type(cfg))})
    say(seeds.describe())
  model = models.build(model_name, **model_kwargs, dtype=cli.model_dtype(cfg.common))
  result = train_classifier(model, data, tx, pipeline=pipeline, batch_size=cfg.batch_size,
                            epochs=cfg.epochs, runner=runner, writer=run, seed=cfg.common.seed,
                            resume=cfg.common.resume, progress=cfg.common.progress, desc=title,
                            checkpoint_dir=run.file("checkpoints"), on_epoch_end=print_epoch,
                            loss_scale=cli.loss_scale(cfg.common), seeds=seeds.seeds,
                            eval_chunk=eval_chunk, hyperparams=seeds.hyper)
  runs = result.members or [result]  # each seed's run; the figures and the model: the first
  plot_history(result.history, run.file(f"{model_name}_curves.png"),
               f"{title} on {data.name} ({cfg.common.mode})")
  pred = predict_logits(runs[0].state, data.test_x, pipeline, chunk=eval_chunk).argmax(-1)
  which = (f" ({Sweep.label(seeds.hyper[0])}, seed {seeds.seeds[0]})" if sweep is not None
           else f" (seed {seeds.seeds[0]})" if seeds.many else "")
  plots.confusion(data.test_y, pred, data.class_names, run.file(f"{model_name}_confusion.png"),
                  title=f"{title}{which}: test accuracy {runs[0].test_accuracy:.4f}")
  input_shape = pipeline(jnp.zeros((1, *data.image_shape), jnp.uint8)).shape[1:]
  save_model(run.file("model"), model_name, variables_of(runs[0].state),
             input_shape=input_shape, kwargs=model_kwargs)
  entries = [
      {"test_accuracy": r.test_accuracy, "test_loss": r.test_loss,
       "train_accuracy": r.train_accuracy,
       "test_accuracy_per_epoch": [h.get("eval", {}).get("accuracy") for h in r.history],
       **cli.skipped_entry(r.state)} for r in runs]
  entry = seeds.summarize(entries, best="test_accuracy")
  entry |= {"dataset": data.source, "dataset_name": data.name, "epochs": cfg.epochs,
            "batch_size": cfg.batch_size, "mode": cfg.common.mode, "devices": runner.devices,
            "model": model_name, **(extra or {})}
  if sweep is not None:  # the top level holds the best point's numbers: its settings too
    entry |= entry["best_point"]
  if sweep is None:
    say(f"{title}: test accuracy {spread(entry, 'test_accuracy')} on {data.name} after "
        f"{cfg.epochs} epochs; model{which} saved to {run.file('model')}")
  else:  # the table, the figures, and last the best point
    say(f"{title} on {data.name}, {cfg.epochs} epochs; model{which} saved to "
        f"{run.file('model')}")
    sweep.write(run, entry, seeds.per_point, ["test_accuracy", "test_loss", "train_accuracy"],
                curves={f"test_{k}": np.array([curve(r.history, "eval", k) for r in runs])
                        for k in ("accuracy", "loss")},
                title=f"{title} on {data.name}")
  return {spec_id: entry}, result
