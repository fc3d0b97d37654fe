"""What the image-classification experiments share on top of `dlcore.train.classify`: train,
then write the curves, the confusion matrix and the saved model into the run directory."""
from __future__ import annotations

import dataclasses

import numpy as np
import optax

from dlcore import models, timing
from dlcore.checkpoint import save_model
from dlcore.data.images import ImageData
from dlcore.data.transforms import ImagePipeline
from dlcore.harness import cli, plots
from dlcore.harness.rundir import RunDir
from dlcore.harness.errors import ConfigError
from dlcore.harness.seeds import Seeds, curve, spread
from dlcore.harness.sweeps import Sweep, numeric, shapes
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
                          tx_factory=None, setup=None, fuse: bool = False
                          ) -> tuple[dict, ClassifierRun]:
  """What the image experiments share: train `model_name` on `data`, write the curves, the
  confusion matrix and the model (`save_model`: reload with `load_model(<run>/model)`),
  and return the summary entry under `spec_id` (SPEC ids; with test_accuracy, dataset,
  epochs). `cfg.common` is a `cli.Common` (its --precision is the model's dtype; the saved
  model is float32 and its kwargs leave the dtype out), `cfg` has `epochs`, `batch_size`.
  `eval_chunk`: the test forward that many examples at a time (`train_classifier`).
  `--sweep`: `tx_factory(**numbers)` builds `tx` from the config's SWEEPABLE numbers (every
  point x seed is then a member; `tx` itself is not used); `setup(cfg)` returns
  (model_kwargs, tx_factory) for a config with a SWEEP_SHAPES value changed (one program per
  such value, each with its own checkpoints and rows). `fuse`: see `train_classifier`."""
  sweep = Sweep.of(cfg)
  if sweep is None:
    programs = [({}, None)]
  else:
    if tx_factory is None:
      raise ConfigError("--sweep: this experiment has no sweepable optimizer settings")
    programs = sweep.programs(shapes(type(cfg)))
    sweep = sweep.ordered(shapes(type(cfg)))  # its points in the programs' order
  runs, members, first = [], [], None
  compiled = timing.compiles()
  for k, (static, inner) in enumerate(programs):
    c = dataclasses.replace(cfg, **static)
    kwargs, factory = setup(c) if static else (model_kwargs, tx_factory)
    seeds = Seeds.of(c.common, sweep=inner)
    if sweep is not None:
      tx = seeds.optimizer(factory, **{n: getattr(c, n) for n in numeric(type(c))})
      say(seeds.describe() if len(programs) == 1 else
          f"sweep program {k + 1}/{len(programs)} ({Sweep.label(static)}): "
          + seeds.describe().removeprefix("sweep: ").removesuffix(", one program"))
    tag = Sweep.label(static).replace(" ", ",")  # a program's own checkpoints and rows
    model = models.build(model_name, **kwargs, dtype=cli.model_dtype(c.common))
    result = train_classifier(
        model, data, tx, pipeline=pipeline, batch_size=c.batch_size, epochs=c.epochs,
        runner=runner, writer=run.scoped(f"sweep {tag}") if static else run,
        seed=c.common.seed, resume=c.common.resume, progress=c.common.progress, desc=title,
        checkpoint_dir=run.file("checkpoints", tag) if static else run.file("checkpoints"),
        on_epoch_end=print_epoch, loss_scale=cli.loss_scale(c.common), seeds=seeds.seeds,
        eval_chunk=eval_chunk, hyperparams=seeds.hyper, fuse=fuse)
    first = first or (result, seeds, kwargs, static)
    runs += result.members or [result]  # each member's run
    members += [{**static, **h} for h in seeds.hyper] if seeds.hyper else [{}]
  result, seeds, model_kwargs, static = first  # the figures and the model: the first member
  plot_history(seeds.shown(result.history), run.file(f"{model_name}_curves.png"),
               f"{title}{' (' + Sweep.label(members[0]) + ')' if sweep else ''} on {data.name} "
               f"({cfg.common.mode})")
  pred = predict_logits(runs[0].state, data.test_x, pipeline, chunk=eval_chunk).argmax(-1)
  which = (f" ({Sweep.label(members[0])}, seed {seeds.seeds[0]})" if sweep is not None
           else f" (seed {seeds.seeds[0]})" if seeds.many else "")
  plots.confusion(data.test_y, pred, data.class_names, run.file(f"{model_name}_confusion.png"),
                  title=f"{title}{which}: test accuracy {runs[0].test_accuracy:.4f}")
  input_shape = pipeline.output(data.image_shape).shape[1:]
  save_model(run.file("model"), model_name, variables_of(runs[0].state),
             input_shape=input_shape, kwargs=model_kwargs)
  entries = [
      {"test_accuracy": r.test_accuracy, "test_loss": r.test_loss,
       "train_accuracy": r.train_accuracy,
       "test_accuracy_per_epoch": [h.get("eval", {}).get("accuracy") for h in r.history],
       **cli.skipped_entry(r.state)} for r in runs]
  if sweep is None:
    entry = seeds.summarize(entries)
  else:
    entry = sweep.summarize(entries, seeds.per_point, best="test_accuracy")
  entry |= {"dataset": data.source, "dataset_name": data.name, "epochs": cfg.epochs,
            "batch_size": cfg.batch_size, "mode": cfg.common.mode, "fused": fuse,
            "devices": runner.devices,
            "model": model_name, **(extra or {})}
  if sweep is None:
    say(f"{title}: test accuracy {spread(entry, 'test_accuracy')} on {data.name} after "
        f"{cfg.epochs} epochs; model{which} saved to {run.file('model')}")
    return {spec_id: entry}, result
  # The top level holds the best point's numbers: its settings too.
  entry |= entry["best_point"] | {"model_member": {**members[0], "seed": seeds.seeds[0]},
                                  "programs": len(programs)}
  say(f"{title} on {data.name}; model{which} saved to {run.file('model')}; "
      f"{len(programs)} program{'s' * (len(programs) > 1)} for {len(sweep.points)} points, "
      f"XLA compiled {timing.compiles() - compiled} programs while training and evaluating "
      "(those read from the persistent cache not counted)")
  sweep.write(run, entry, seeds.per_point, ["test_accuracy", "test_loss", "train_accuracy"],
              curves={f"test_{k}": [curve(r.history, "eval", k) for r in runs]
                      for k in ("accuracy", "loss")},
              title=f"{title} on {data.name}")
  return {spec_id: entry}, result
