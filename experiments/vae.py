"""Chapter 8 flagship (SPEC 2.8.1): a variational autoencoder that draws clothing or digits.

    python -m experiments.vae                          # MNIST; offline: falls back, says so
    python -m experiments.vae --dataset fashion_mnist
    python -m experiments.vae --latent-dim 2           # + the 2-D latent manifold figure

The book's VAE: encoder 784-400 -> (mu, log_var) of 20, decoder 20-400-784 with a sigmoid;
loss = BCE summed over pixels + KL(q(z|x) || N(0, I)); Adam 1e-3, batch 128, 30 epochs.
z = mu + exp(log_var / 2) * eps: the seed's formula 8.1 writes exp(log_var) (the variance
where the standard deviation belongs); this is the correct form. Reported per sample, as
the negative ELBO, with z sampled on the test set too.

Each epoch writes reconstructions (originals in odd columns, reconstructions beside them, as
the book's figure 8-4) and samples decoded from N(0, I) with fixed noise (figure 8-5), so
epochs compare. At the end: loss curves, and a Frechet distance between the chapter 6 CNN's
features of 10,000 samples and of the test images (see README, "Sample quality").

With no network and no local MNIST, the run falls back to Fashion-MNIST (then scikit-learn's
digits) with a warning; `summary.json` records the dataset actually used.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Annotated, ClassVar

import jax
import jax.numpy as jnp
import numpy as np

from dlcore import data as dldata
from dlcore import losses, models, optim
from dlcore.checkpoint import Checkpointer
from dlcore.data.transforms import ImagePipeline
from dlcore.harness import cli, plots
from dlcore.harness.rundir import start_run
from dlcore.harness.seeds import Seeds, spread
from dlcore.harness.sweeps import Sweep
from dlcore.harness.scoring import load_or_train_scorer, sample_quality, to_uint8
from dlcore.harness.writers import say
from dlcore.train import batch_evaluator, fit, make_train_step, run_evaluators, scan_steps
from dlcore.train.state import variables_of

FALLBACK = ("fashion_mnist", "digits")


@dataclasses.dataclass
class Config:
  SWEEPABLE: ClassVar = ("lr",)  # --sweep: numbers in the step, one program
  common: cli.Shared = cli.shared()
  data: cli.ImageOptions = cli.image_data()
  score: cli.ScoreOptions = cli.scoring()
  epochs: cli.Positive[int] = 30
  """Training epochs (the seed's 30)."""
  batch_size: cli.Positive[int] = 128
  """Training batch size."""
  lr: Annotated[float, cli.Between(0.0)] = 1e-3
  """Adam learning rate."""
  hidden: cli.Positive[int] = 400
  """Width of the encoder's and decoder's hidden layer."""
  latent_dim: cli.Positive[int] = 20
  """Size of z; 2 also draws the 2-D latent manifold (figure 8-8)."""
  fuse: cli.Fuse = None


def elbo_metrics(pipe: ImagePipeline):
  """Evaluation step: the test set's negative ELBO with z sampled (as in training)."""

  def metrics(state, batch, key):
    x = pipe(batch["x"])
    logits, mu, log_var = state.apply_fn(variables_of(state), x, sample=True,
                                         rngs={"noise": key})
    loss, parts = losses.vae_loss(logits, x, mu, log_var)
    return {"loss": loss, **parts, "count": jnp.asarray(x.shape[0], jnp.float32)}

  return metrics


def main(argv=None) -> dict:
  cfg = cli.parse(Config, argv, __doc__.split("\n\n")[0])
  data = cli.load_image_data(cfg.data, fallback=FALLBACK)
  run, runner = start_run(cfg, "vae")
  sweep = Sweep.of(cfg)
  # --seeds N: N VAEs side by side (--sweep: every point x seed); figures from the first
  seeds = Seeds.of(cfg.common, sweep=sweep)
  runner = seeds.runner(runner)
  if sweep is not None:
    say(seeds.describe())
  shape = data.image_shape
  model = models.build("vae", image_size=math.prod(shape), h_dim=cfg.hidden,
                       z_dim=cfg.latent_dim, image_shape=shape, dtype=cli.model_dtype(cfg.common))
  pipe = ImagePipeline("unit")
  tx = seeds.optimizer(lambda lr: optim.make_optimizer("adam", lr), lr=cfg.lr)
  state = seeds.state(model, tx, pipe(jnp.asarray(data.train_x[:2])),
                      loss_scale=cli.loss_scale(cfg.common))

  def loss_fn(out, batch):
    logits, mu, log_var = out
    return losses.vae_loss(logits, pipe(batch["x"]), mu, log_var)

  train_step = seeds.step(make_train_step(loss_fn, preprocess=pipe))
  step = runner.compile(train_step)
  fused = runner.compile(scan_steps(train_step)) if cli.fused(cfg) else None
  train, test = data.train(), data.test()
  elbo = batch_evaluator(runner.compile_eval(elbo_metrics(pipe)),
                         lambda: dldata.batches(test, 1000), uses_key=True)
  decode = jax.jit(lambda s, z: s.apply_fn(variables_of(s), z, method=model.decode))
  reconstruct = jax.jit(lambda s, x: jax.nn.sigmoid(
      s.apply_fn(variables_of(s), pipe(x))[0].astype(jnp.float32)).reshape(x.shape))
  fixed_z = jax.random.normal(jax.random.PRNGKey(cfg.common.seed + 1), (64, cfg.latent_dim))
  originals = data.test_x[:32]

  def on_epoch_end(epoch, host_state, record):
    host_state = seeds.first(host_state)
    rec = np.asarray(reconstruct(host_state, originals))
    pairs = np.stack([originals / 255.0, rec], 1).reshape(-1, *shape)  # original, recon, ...
    plots.image_grid(pairs, run.file("reconstructions", f"epoch_{epoch + 1:03d}.png"), nrow=16,
                     title=f"epoch {epoch + 1}: originals (odd) and reconstructions (even)")
    plots.image_grid(np.asarray(decode(host_state, fixed_z)),
                     run.file("samples", f"epoch_{epoch + 1:03d}.png"), nrow=8,
                     title=f"epoch {epoch + 1}: decoded from N(0, I)")
    say(f"epoch {epoch + 1}: train loss {record['train']['loss']:.2f}, test loss "
        f"{record['eval']['loss']:.2f} (BCE {record['eval']['bce']:.2f} + KL "
        f"{record['eval']['kl']:.2f}) per sample")

  evaluators = [elbo]
  if cfg.score.score_samples:  # sample quality, after the last epoch
    scorer = load_or_train_scorer(data, cfg.score.classifier,
                                  epochs=cfg.score.classifier_epochs, seed=cfg.common.seed,
                                  progress=cfg.common.progress)

    def sample(state, key, labels, n):
      z = jax.random.normal(key, (n, cfg.latent_dim))
      return to_uint8(np.concatenate([np.asarray(decode(state, z[i:i + 1000]))
                                      for i in range(0, n, 1000)]))

    evaluators.append(sample_quality(scorer, sample, data, cfg.score.score_samples))

  steps_per_epoch = -(-len(data.train_x) // cfg.batch_size)  # with the partial batch
  with Checkpointer(run.file("checkpoints"), max_to_keep=2,
                    save_every_steps=steps_per_epoch, background=True) as ckpt:
    state, history = fit(
        state, step,
        lambda e: seeds.batches(train, cfg.batch_size, e),
        runner=runner, num_epochs=cfg.epochs, evaluators=evaluators,
        eval_seed=seeds.eval_seed(10_000), writer=run, checkpointer=ckpt,
        resume=cfg.common.resume, progress=cfg.common.progress, desc="VAE",
        log_every=max(1, steps_per_epoch // 4), on_epoch_end=on_epoch_end, fused_step=fused)
  # The last epoch is always evaluated; a resumed, finished run evaluates what it restored.
  entries = []
  for seed, (member, hist) in zip(seeds.seeds, seeds.each(state, history)):
    final = hist[-1]["eval"] if hist else run_evaluators(evaluators, member, 10_000 + seed)
    entries.append({"test_loss": final["loss"], "test_bce": final["bce"],
                    "test_kl": final["kl"],
                    "train_loss": hist[-1]["train"]["loss"] if hist else None,
                    **({"frechet_distance": final["frechet_distance"]}
                       if cfg.score.score_samples else {}),
                    **cli.skipped_entry(member)})
  epochs = [h["epoch"] + 1 for h in history]
  shown = seeds.shown(history)  # under a sweep: the first member's (the sweep has its own)
  plots.panels({"loss per sample": {"train": seeds.curve(shown, "train", "loss"),
                                    "test": seeds.curve(shown, "eval", "loss")}},
               run.file("loss_curves.png"), x=epochs, title=f"VAE on {data.name}")
  entry = seeds.summarize(entries, best="test_loss", higher_is_better=False)
  if sweep is not None:
    entry |= entry["best_point"] | {"figures_member": {  # the figures' member
        **seeds.hyper[0], "seed": seeds.seeds[0]}}
  entry |= {"dataset": data.source, "dataset_name": data.name, "epochs": cfg.epochs,
            "latent_dim": cfg.latent_dim, "mode": cfg.common.mode, "fused": fused is not None,
            "loss": "per sample: BCE summed over pixels + KL, z sampled"}
  state_all, state = state, seeds.first(state)
  if cfg.latent_dim == 2:
    from scipy.stats import norm

    grid = norm.ppf(np.linspace(0.05, 0.95, 20)).astype(np.float32)
    z = np.stack(np.meshgrid(grid, grid[::-1]), -1).reshape(-1, 2)
    plots.image_grid(np.asarray(decode(state, z)), run.file("latent_manifold.png"), nrow=20,
                     title="2-D latent manifold (figure 8-8)")
  if cfg.score.score_samples:
    entry |= {"frechet_distance_train_vs_test": scorer.frechet_distance(
                  data.train_x[:cfg.score.score_samples], data.test_x[:cfg.score.score_samples]),
              "classifier": scorer.describe()}
    say(f"Frechet distance (CNN features), samples vs test: "
        f"{spread(entry, 'frechet_distance', '.3f')}; "
        f"real train vs test: {entry['frechet_distance_train_vs_test']:.3f}")
  if sweep is not None:
    sweep.write(run, entry, seeds.per_point, list(entries[0]),
                curves={"test_loss": [seeds.curve(h, "eval", "loss") for _, h in
                                      seeds.each(state_all, history)]},
                title=f"VAE on {data.name}, {cfg.epochs} epochs")
  best = f" (best point {Sweep.label(entry['best_point'])})" if sweep is not None else ""
  say(f"VAE on {data.label}{best}: test loss {spread(entry, 'test_loss', '.2f')} per sample")
  summary = run.update_summary({"2.8.1": entry})
  run.close()
  return summary


if __name__ == "__main__":
  cli.entry(main)
