"""Image classification on top of `fit`: the loop the chapter 3 MLP, LeNet, AlexNet and the
chapter 6 CNN share (and the classifier that scores generated samples in chapter 8).
`dlcore.harness.classify` adds the experiments' curves, confusion matrix and saved model.

Batches are uint8 images; `pipeline` (an `ImagePipeline`) normalises, pads or resizes them
inside the compiled step. Evaluation is exact: batches are weighted by their size.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from dlcore import data as dldata
from dlcore import losses
from dlcore.checkpoint import Checkpointer
from dlcore.data.images import ImageData
from dlcore.data.transforms import ImagePipeline
from dlcore.train import members as mb
from dlcore.train.loop import MetricWriter, fit, host_mean
from dlcore.train.modes import Runner
from dlcore.train.state import TrainState, create_train_state, variables_of
from dlcore.train.steps import chunked, make_eval_step, make_train_step, scan_steps


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
  # With several seeds: `state` is stacked, the numbers above are means over the seeds and
  # each seed's own run is here (its state, its history, its numbers).
  members: list["ClassifierRun"] = dataclasses.field(default_factory=list)


def train_classifier(model, data: ImageData, tx: optax.GradientTransformation, *,
                     pipeline: ImagePipeline, batch_size: int, epochs: int, runner: Runner,
                     writer: MetricWriter | None = None, seed: int = 0, resume: bool = False,
                     progress: bool = True, desc: str = "train", eval_batch_size: int = 1000,
                     eval_chunk: int | None = None,
                     checkpoint_dir: str | None = None,
                     on_epoch_end: Callable | None = None, loss_scale=None,
                     seeds: Sequence[int] | None = None,
                     hyperparams: Sequence[dict] | None = None,
                     fuse: bool = False) -> ClassifierRun:
  """Trains `model` on `data.train()` for `epochs` (shuffled each epoch, deterministic in
  (seed, epoch)), evaluating on `data.test()` after every epoch; checkpoints once per epoch
  into `checkpoint_dir` (none: no checkpoints) and resumes from there. `loss_scale`: see
  `create_train_state` (float16). `seeds` (more than one): those runs side by side as
  members (`dlcore.train.members`), each as the single run with its seed (then `seed` is
  unused; the returned numbers are means and `members` holds each seed's run). `eval_chunk`:
  the test forward runs that many examples at a time (`dlcore.train.steps.chunked`).
  `hyperparams` (a sweep; `tx` from `optim.injected`): one dict per seed of `seeds`, member
  i trains with `hyperparams[i]` (see `members.create_members`); always run as members.
  `fuse`: the steps between checkpoints as one compiled loop (`fit`'s `fused_step`; one
  member only). The model is initialised on zeros of the pipeline's output shape: an init
  must not depend on its input's values (every registered model's does not; tested)."""
  seeds = [seed] if seeds is None else list(seeds)
  many = len(seeds) > 1 or hyperparams is not None
  for split, y in (("train", data.train_y), ("test", data.test_y)):
    dldata.check_labels(y, data.num_classes, f"{data.name} {split} labels")
  # The init reads the input's shape only: zeros of the pipeline's output, no eager op to
  # compile (four programs, ~0.2 s cold).
  out = pipeline.output(data.train_x.shape[1:], batch=2)
  example = np.zeros(out.shape, out.dtype)
  train_step = make_train_step(xent_loss, preprocess=pipeline)
  if many:
    runner = mb.MemberRunner(runner, len(seeds))
    state = mb.create_members(model, tx, example, seeds, loss_scale=loss_scale,
                              hyperparams=hyperparams)
    train_step = mb.over_members(train_step)
  else:
    state = create_train_state(model, tx, example, seeds[0], loss_scale=loss_scale)
    if batch_size % runner.devices:
      raise ValueError(f"batch size {batch_size} does not divide over {runner.devices} "
                       f"devices; choose a multiple of {runner.devices}")
  step = runner.compile(train_step)
  if fuse and many:
    raise ValueError("train_classifier: fuse trains one member (one seed, no sweep)")
  fused = runner.compile(scan_steps(train_step)) if fuse else None
  evaluate = runner.compile_eval(make_eval_step(xent_metrics, preprocess=pipeline,
                                                chunk=eval_chunk))
  steps_per_epoch = -(-len(data.train_x) // batch_size)  # the partial batch too, every mode
  train, test = data.train(), data.test()
  if many:  # the data goes to the device once; each member's indices are gathered there
    on_device = jax.device_put(train)
    batches = lambda e: mb.member_batches(on_device, batch_size, seeds, e)  # noqa: E731
    desc = f"{desc} x{len(seeds)} {'seeds' if hyperparams is None else 'members'}"
  else:
    batches = lambda e: dldata.batches(train, batch_size, shuffle=True,  # noqa: E731
                                       seed=seeds[0], epoch=e)

  with (Checkpointer(checkpoint_dir, max_to_keep=2, save_every_steps=steps_per_epoch,
                     background=True)
        if checkpoint_dir else contextlib.nullcontext()) as ckpt:
    state, history = fit(state, step, batches, runner=runner, num_epochs=epochs,
                         eval_step=evaluate,
                         eval_batches=lambda: dldata.batches(test, eval_batch_size),
                         writer=writer, checkpointer=ckpt, resume=resume, progress=progress,
                         desc=desc, log_every=max(1, steps_per_epoch // 4),
                         on_epoch_end=on_epoch_end, fused_step=fused)
  runs = []
  for s, h in (((mb.member(state, i), mb.member_view(history, i)) for i in range(len(seeds)))
               if many else [(state, history)]):
    # One model's last epoch was evaluated by the compiled program `evaluate_classifier`
    # compiles, on the same batches: its numbers are the final ones (not a second pass).
    # Eager modes evaluate op by op and members vmapped, and a resumed run's last record may
    # come from the earlier process (another mode, another precision): evaluated again.
    same = not many and not resume and runner.mode not in ("eager", "python") and h \
        and h[-1]["epoch"] == epochs - 1 and "eval" in h[-1]
    final = h[-1]["eval"] if same else evaluate_classifier(s, test, pipeline, eval_batch_size,
                                                               chunk=eval_chunk)
    runs.append(ClassifierRun(s, h, final["accuracy"], final["loss"],
                              h[-1]["train"]["accuracy"] if h else float("nan")))
  if not many:
    return runs[0]
  mean = lambda f: float(np.mean([getattr(r, f) for r in runs]))  # noqa: E731
  return ClassifierRun(state, history, mean("test_accuracy"), mean("test_loss"),
                       mean("train_accuracy"), runs)


def evaluate_classifier(state: TrainState, arrays: dict, pipeline: ImagePipeline,
                        batch_size: int = 1000, *, chunk: int | None = None) -> dict:
  """Exact loss and accuracy of `state` on `arrays` ({"x", "y"}) in inference mode; `chunk`:
  the forward that many examples at a time (`dlcore.train.steps.chunked`)."""
  evaluate = jax.jit(make_eval_step(xent_metrics, preprocess=pipeline, chunk=chunk))
  means = host_mean([evaluate(state, b) for b in dldata.batches(arrays, batch_size)])
  return {k: means[k] for k in ("loss", "accuracy")}


def predict_logits(state: TrainState, x: np.ndarray, pipeline: ImagePipeline,
                   batch_size: int = 1000, *, chunk: int | None = None) -> np.ndarray:
  """Logits of `state`'s model for uint8 images `x`, in inference mode (`chunk`: as in
  `evaluate_classifier`)."""
  apply = jax.jit(lambda s, xb: chunked(
      lambda c: s.apply_fn(variables_of(s), c, train=False), pipeline(xb), chunk).astype(
          jnp.float32))
  return np.concatenate([np.asarray(apply(state, x[i:i + batch_size]))
                         for i in range(0, len(x), batch_size)])
