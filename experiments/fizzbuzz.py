"""Seed 001's homework: FizzBuzz learned by a 10-100-4 ReLU net (SPEC 1.7).

    python -m experiments.fizzbuzz --workdir runs/fizzbuzz

Inputs are 10-bit binary encodings of i, trained on 101..1023 in order (no shuffling, as the
seed), batch 128, cross entropy, SGD lr 0.05, 10000 epochs; then plays 1..100 and counts the
correct answers.

How many of 1..100 one trained net gets right depends on its random init (the seed's own
PyTorch code gets 88-99), so one run says little. By default `--seeds 10` nets with different
inits train as one program (the engine's members, `dlcore.train.members`: the step vmapped
over their stacked states) and the report gives the mean, standard deviation, median, min,
max and every seed's count; `--seeds 1` trains one net.
Each compiled call runs `--fuse` whole epochs (`lax.scan`), which computes what a Python loop
over the same batches computes (`--fuse 0`).
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar

import jax
import numpy as np

from dlcore import data as dldata
from dlcore import losses, models, optim
from dlcore.checkpoint import Checkpointer
from dlcore.data import synthetic
from dlcore.harness import cli, plots
from dlcore.harness.rundir import start_run
from dlcore.harness.seeds import Seeds, spread
from dlcore.harness.sweeps import Sweep
from dlcore.harness.writers import say
from dlcore.train import fit, fused_epoch, make_train_step, repeat_step


@dataclasses.dataclass
class Config:
  SWEEPABLE: ClassVar = ("lr",)  # --sweep: numbers in the step, one program
  common: cli.Shared = cli.shared()
  epochs: cli.Positive[int] = 10000
  """Training epochs (the seed's 10000)."""
  batch_size: cli.Positive[int] = 128
  """Training batch size."""
  lr: Annotated[float, cli.Between(0.0)] = 0.05
  """SGD learning rate."""
  hidden: cli.Positive[int] = 100
  """Width of the hidden layer."""
  num_digits: cli.Positive[int] = 10
  """Bits of the binary input encoding."""
  fuse: cli.Positive[int] | None = 100
  """Epochs per compiled call (lax.scan); None: a Python loop of jitted steps."""
  drop_remainder: bool = False
  """Drop the last partial batch (needed for pmap/sharded)."""

  def check(self):
    if self.fuse and self.epochs % self.fuse:
      raise cli.ConfigError(f"--epochs {self.epochs} must be a multiple of --fuse {self.fuse}")


def loss_fn(logits, batch):
  return losses.cross_entropy(logits, batch["y"]), {
      "accuracy": losses.accuracy(logits, batch["y"])}


def main(argv=None) -> dict:
  cfg = cli.parse(Config, argv, __doc__.split("\n\n")[0])
  run, runner = start_run(cfg, "fizzbuzz")
  sweep = Sweep.of(cfg)
  seeds = Seeds.of(cfg.common, default=10, sweep=sweep)
  runner = seeds.runner(runner)
  if sweep is not None:
    say(seeds.describe())
  x, y = synthetic.fizzbuzz(101, 2 ** cfg.num_digits, cfg.num_digits)
  train = {"x": x, "y": y}
  if cfg.drop_remainder:
    keep = len(x) - len(x) % cfg.batch_size
    train = {k: v[:keep] for k, v in train.items()}
  model = models.build("mlp", widths=(cfg.hidden, 4), activation="relu",
                       dtype=cli.model_dtype(cfg.common))
  tx = seeds.optimizer(lambda lr: optim.make_optimizer("sgd", lr), lr=cfg.lr)
  state = seeds.state(model, tx, x[:2], loss_scale=cli.loss_scale(cfg.common))

  # In order, as the seed: the same batches go to every member; each has its own init.
  step = make_train_step(loss_fn)
  n_batches = -(-len(train["x"]) // cfg.batch_size)
  if cfg.fuse:
    if cfg.common.mode in ("pmap", "sharded"):
      raise cli.ConfigError("--fuse with pmap/sharded is not supported: pass --fuse None "
                       "--drop-remainder")
    epoch_data = dldata.stacked_epoch(train, cfg.batch_size)
    call, batches = seeds.step(repeat_step(fused_epoch(step), cfg.fuse)), (lambda e: [epoch_data])
    num_calls, steps_per_call = cfg.epochs // cfg.fuse, n_batches * cfg.fuse
  else:
    call = seeds.step(step)
    batches = lambda e: dldata.batches(train, cfg.batch_size)  # noqa: E731
    num_calls, steps_per_call = cfg.epochs, 1
  with Checkpointer(run.file("checkpoints"), max_to_keep=2,
                    save_every_steps=max(steps_per_call, n_batches * cfg.epochs // 10),
                    background=True) as ckpt:
    state, history = fit(state, runner.compile(call), batches, runner=runner,
                         num_epochs=num_calls, steps_per_call=steps_per_call, run=run,
                         checkpointer=ckpt, resume=cfg.common.resume, progress=cfg.common.progress,
                         desc=f"fizzbuzz x{seeds.n} {'members' if sweep else 'seeds'}",
                         log_every=10**9 if cfg.fuse else 500)

  test_x, test_y = synthetic.fizzbuzz(1, 101, cfg.num_digits)
  apply = jax.jit(model.apply)
  members = list(seeds.each(state, history))
  preds = np.stack([np.asarray(apply({"params": m.params}, test_x).argmax(-1))
                    for m, _ in members])                # (seeds, 100)
  per_seed = (preds == test_y).sum(1).astype(int)
  if sweep is not None:
    return _sweep_summary(cfg, run, seeds, per_seed, members)
  vote = np.array([np.bincount(col, minlength=4).argmax() for col in preds.T])
  best = int(np.argmax(per_seed == int(np.median(per_seed))))  # a member at the median
  words = [synthetic.fizz_buzz_decode(i, int(p)) for i, p in zip(range(1, 101), preds[best])]
  say(" ".join(words))
  for s, c in zip(seeds.seeds, per_seed):
    say(f"  seed {s}: {c} / 100 correct")
  median = float(np.median(per_seed))
  entry = seeds.summarize([
      {"correct_of_100": int(c), "final_train_loss": h[-1]["train"]["loss"] if h else None}
      for c, (_, h) in zip(per_seed, members)])
  say(f"  correct of 100: {spread(entry, 'correct_of_100', '.1f')}; median {median} (min "
      f"{per_seed.min()}, max {per_seed.max()}); majority vote of the {seeds.n} nets: "
      f"{int((vote == test_y).sum())} / 100")
  epochs_per_point = cfg.fuse if cfg.fuse else 1
  plots.curves({"train loss": seeds.curve(history, "train", "loss")},
               run.file("loss_curve.png"), logy=True, xlabel="epoch", title="FizzBuzz",
               xs={"train loss": np.arange(1, len(history) + 1) * epochs_per_point})
  summary = {"1.7": entry | {
      "statistic": f"mean over {seeds.n} seeds" if seeds.many else "one seed",
      "median_correct_of_100": median,
      "correct_per_seed": dict(zip(map(str, seeds.seeds), per_seed.tolist())),
      "min": int(per_seed.min()), "max": int(per_seed.max()),
      "vote_correct_of_100": int((vote == test_y).sum()),
      "predictions_median_seed": words,
      "epochs": cfg.epochs, "dataset": "fizzbuzz 101..1023 (10-bit)"}}
  run.update_summary(summary)
  run.close()
  return summary


def _sweep_summary(cfg, run, seeds, correct, members) -> dict:
  """A sweep's table, figures and summary: each point's correct answers of 100 over its
  seeds (the single run's majority vote and median are about seeds, not points)."""
  entry = seeds.summarize([
      {"correct_of_100": int(c), "final_train_loss": h[-1]["train"]["loss"] if h else None}
      for c, (_, h) in zip(correct, members)], best="correct_of_100")
  entry |= entry["best_point"]
  seeds.sweep.write(run, entry, seeds.per_point, ["correct_of_100", "final_train_loss"],
                    curves={"train_loss": [seeds.curve(h, "train", "loss") for _, h in members]},
                    title=f"FizzBuzz, {cfg.epochs} epochs")
  summary = {"1.7": entry | {"epochs": cfg.epochs, "dataset": "fizzbuzz 101..1023 (10-bit)"}}
  run.update_summary(summary)
  run.close()
  return summary


if __name__ == "__main__":
  cli.entry(main)
