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
      series[f"{split} {metric}"] = [h.get(key, {}).get(metric, np.nan) for h in history]
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
                          extra: dict | None = None) -> tuple[dict, ClassifierRun]:
  """What the image experiments share: train `model_name` on `data`, write the curves, the
  confusion matrix and the model (`save_model`: reload with `load_model(<run>/model)`),
  and return the summary entry under `spec_id` (SPEC ids; with test_accuracy, dataset,
  epochs). `cfg.common` is a `cli.Common` (its --precision is the model's dtype; the saved
  model is float32 and its kwargs leave the dtype out), `cfg` has `epochs`, `batch_size`."""
  model = models.build(model_name, **model_kwargs, dtype=cli.model_dtype(cfg.common))
  result = train_classifier(model, data, tx, pipeline=pipeline, batch_size=cfg.batch_size,
                            epochs=cfg.epochs, runner=runner, writer=run, seed=cfg.common.seed,
                            resume=cfg.common.resume, progress=cfg.common.progress, desc=title,
                            checkpoint_dir=run.file("checkpoints"), on_epoch_end=print_epoch,
                            loss_scale=cli.loss_scale(cfg.common))
  plot_history(result.history, run.file(f"{model_name}_curves.png"),
               f"{title} on {data.name} ({cfg.common.mode})")
  pred = predict_logits(result.state, data.test_x, pipeline).argmax(-1)
  plots.confusion(data.test_y, pred, data.class_names, run.file(f"{model_name}_confusion.png"),
                  title=f"{title}: test accuracy {result.test_accuracy:.4f}")
  input_shape = pipeline(jnp.zeros((1, *data.image_shape), jnp.uint8)).shape[1:]
  save_model(run.file("model"), model_name, variables_of(result.state),
             input_shape=input_shape, kwargs=model_kwargs)
  say(f"{title}: test accuracy {result.test_accuracy:.4f} on {data.name} after "
        f"{cfg.epochs} epochs; model saved to {run.file('model')}")
  entry = {"test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
           "train_accuracy": result.train_accuracy, "dataset": data.source,
           "dataset_name": data.name, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
           "mode": cfg.common.mode, "devices": runner.devices, "model": model_name,
           "test_accuracy_per_epoch": [h.get("eval", {}).get("accuracy")
                                       for h in result.history],
           **cli.skipped_entry(result.state), **(extra or {})}
  return {spec_id: entry}, result
