"""Image classification on top of `fit`: the loop the chapter 3 MLP, LeNet, AlexNet and the
chapter 6 CNN share (and the classifier that scores generated samples in chapter 8).

Batches are uint8 images; `pipeline` (an `ImagePipeline`) normalises, pads or resizes them
inside the compiled step. Evaluation is exact: batches are weighted by their size.
"""
from __future__ import annotations

import dataclasses
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlcore import data as dldata, losses, plots
from dlcore.checkpoint import Checkpointer
from dlcore.data.images import ImageData
from dlcore.data.transforms import ImagePipeline
from dlcore.runs import RunDir
from dlcore.train.loop import fit
from dlcore.train.modes import Runner
from dlcore.train.state import TrainState, create_train_state, variables_of
from dlcore.train.steps import make_eval_step, make_train_step


def xent_loss(logits, batch):
  """Cross entropy (PyTorch's CrossEntropyLoss) and accuracy, for `make_train_step`."""
  return losses.cross_entropy(logits, batch["y"]), {
      "accuracy": losses.accuracy(logits, batch["y"])}


def xent_metrics(logits, batch):
  """Evaluation metrics with the batch size, so `fit` averages them exactly."""
  loss, m = xent_loss(logits, batch)
  return {"loss": loss, **m, "count": jnp.asarray(batch["y"].shape[0], jnp.float32)}


@dataclasses.dataclass
class ClassifierRun:
  state: TrainState
  history: list[dict]
  test_accuracy: float
  test_loss: float
  train_accuracy: float


def train_classifier(model, data: ImageData, tx: optax.GradientTransformation, *,
                     pipeline: ImagePipeline, batch_size: int, epochs: int, runner: Runner,
                     run: RunDir | None = None, seed: int = 0, resume: bool = False,
                     progress: bool = True, desc: str = "train", eval_batch_size: int = 1000,
                     checkpoint_dir: str | None = None,
                     on_epoch_end: Callable | None = None) -> ClassifierRun:
  """Trains `model` on `data.train()` for `epochs` (shuffled each epoch, deterministic in
  (seed, epoch)), evaluating on `data.test()` after every epoch; checkpoints once per epoch
  into `checkpoint_dir` (default `<run>/checkpoints`) and resumes from there."""
  example = pipeline(jnp.asarray(data.train_x[:2]))
  state = create_train_state(model, tx, example, seed)
  step = runner.compile(make_train_step(xent_loss, axis_name=runner.axis_name,
                                        preprocess=pipeline))
  evaluate = runner.compile_eval(make_eval_step(xent_metrics, preprocess=pipeline))
  drop = runner.mode in ("pmap", "sharded")  # equal shards need full batches
  n = len(data.train_x)
  if drop and batch_size % runner.devices:
    raise ValueError(f"batch size {batch_size} does not divide over {runner.devices} devices; "
                     f"choose a multiple of {runner.devices}")
  steps_per_epoch = n // batch_size if drop else -(-n // batch_size)
  train, test = data.train(), data.test()

  def batches(epoch):
    return dldata.batches(train, batch_size, shuffle=True, seed=seed, epoch=epoch,
                          drop_remainder=drop)

  ckpt_dir = checkpoint_dir or (run.file("checkpoints") if run is not None else None)
  ckpt = (Checkpointer(ckpt_dir, max_to_keep=2, save_every_steps=steps_per_epoch)
          if ckpt_dir else None)
  try:
    state, history = fit(state, step, batches, runner=runner, num_epochs=epochs,
                         eval_step=evaluate,
                         eval_batches=lambda: dldata.batches(test, eval_batch_size),
                         run=run, checkpointer=ckpt, resume=resume, progress=progress,
                         desc=desc, log_every=max(1, steps_per_epoch // 4),
                         on_epoch_end=on_epoch_end)
  finally:
    if ckpt is not None:
      ckpt.close()
  final = evaluate_classifier(state, test, pipeline, eval_batch_size)
  train_acc = history[-1]["train"]["accuracy"] if history else float("nan")
  return ClassifierRun(state, history, final["accuracy"], final["loss"], train_acc)


def evaluate_classifier(state: TrainState, arrays: dict, pipeline: ImagePipeline,
                        batch_size: int = 1000) -> dict:
  """Exact loss and accuracy of `state` on `arrays` ({"x", "y"}) in inference mode."""
  evaluate = jax.jit(make_eval_step(xent_metrics, preprocess=pipeline))
  rows = jax.device_get([evaluate(state, b) for b in dldata.batches(arrays, batch_size)])
  w = np.array([r["count"] for r in rows])
  return {k: float(np.dot([r[k] for r in rows], w) / w.sum()) for k in ("loss", "accuracy")}


def predict_logits(state: TrainState, x: np.ndarray, pipeline: ImagePipeline,
                   batch_size: int = 1000) -> np.ndarray:
  """Logits of `state`'s model for uint8 images `x`, in inference mode."""
  apply = jax.jit(lambda s, xb: s.apply_fn(variables_of(s), pipeline(xb), train=False))
  return np.concatenate([np.asarray(apply(state, x[i:i + batch_size]))
                         for i in range(0, len(x), batch_size)])


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
  print(f"epoch: {epoch}, Train Loss: {record['train']['loss']:.4f}, Train Acc: "
        f"{record['train']['accuracy']:.4f}, Test Loss: {ev.get('loss', np.nan):.4f}, "
        f"Test Acc: {ev.get('accuracy', np.nan):.4f}", flush=True)


def classifier_experiment(cfg, run: RunDir, runner: Runner, *, spec_id: str, model_name: str,
                          model_kwargs: dict, data: ImageData, pipeline: ImagePipeline,
                          tx: optax.GradientTransformation, title: str,
                          extra: dict | None = None) -> tuple[dict, ClassifierRun]:
  """What the image experiments share: train `model_name` on `data`, write the curves, the
  confusion matrix and the model (`save_model`: reload with `load_model(<run>/model)`),
  and return the summary entry under `spec_id` (SPEC ids; with test_accuracy, dataset,
  epochs). `cfg` has the fields of `cli.Common` plus `epochs` and `batch_size`."""
  from dlcore import models
  from dlcore.checkpoint import save_model

  model = models.build(model_name, **model_kwargs)
  result = train_classifier(model, data, tx, pipeline=pipeline, batch_size=cfg.batch_size,
                            epochs=cfg.epochs, runner=runner, run=run, seed=cfg.seed,
                            resume=cfg.resume, progress=cfg.progress, desc=title,
                            on_epoch_end=print_epoch)
  plot_history(result.history, run.file(f"{model_name}_curves.png"),
               f"{title} on {data.name} ({cfg.mode})")
  pred = predict_logits(result.state, data.test_x, pipeline).argmax(-1)
  plots.confusion(data.test_y, pred, data.class_names, run.file(f"{model_name}_confusion.png"),
                  title=f"{title}: test accuracy {result.test_accuracy:.4f}")
  input_shape = pipeline(jnp.zeros((1, *data.image_shape), jnp.uint8)).shape[1:]
  kwargs = {k: v for k, v in model_kwargs.items() if k != "axis_name"}
  save_model(run.file("model"), model_name, variables_of(result.state),
             input_shape=input_shape, kwargs=kwargs)
  print(f"{title}: test accuracy {result.test_accuracy:.4f} on {data.name} after "
        f"{cfg.epochs} epochs; model saved to {run.file('model')}")
  entry = {"test_accuracy": result.test_accuracy, "test_loss": result.test_loss,
           "train_accuracy": result.train_accuracy, "dataset": data.source,
           "dataset_name": data.name, "epochs": cfg.epochs, "batch_size": cfg.batch_size,
           "mode": cfg.mode, "devices": runner.devices, "model": model_name,
           "test_accuracy_per_epoch": [h.get("eval", {}).get("accuracy")
                                       for h in result.history], **(extra or {})}
  return {spec_id: entry}, result
