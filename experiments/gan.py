"""Chapter 8 GANs (SPEC 2.8.2-2.8.4): fully connected GAN, conditional GAN, DCGAN.

    python -m experiments.gan --variant gan --dataset fashion_mnist
    python -m experiments.gan --variant cgan --dataset fashion_mnist
    python -m experiments.gan --variant dcgan --dataset fashion_mnist

gan:   the seed's players (D 784-256-256-1 LeakyReLU 0.2, G 64-256-256-784 tanh), BCE, Adam
       2e-4, batch 100; D is trained on real = 1 and fake = 0, then G with its fakes
       labelled real. 50 epochs by default (the seed does not say how many).
cgan:  the same players conditioned on the label: an embedding concatenated to each
       player's input, and a projection term in D (see `ConditionalDiscriminator`). 50 epochs.
dcgan: transposed-conv generator and strided-conv discriminator with batch norm (Radford et
       al.), latent 100, 10 epochs.

Adam's beta1 is 0.5 for all three (Radford et al.'s setting). With the seed's PyTorch
default 0.9 (`--beta1 0.9`) the discriminator won on Fashion-MNIST: D(G(z)) fell to 0.015 by
epoch 3 and the cgan's samples collapsed to a few noise patterns.

Images are scaled to [-1, 1] (tanh range). Each epoch saves a grid from the same fixed
noise (cgan: one row per class), and D(x) / D(G(z)) are logged. Checkpoints hold both
players and both optimizers; `--resume` continues. At the end the chapter 6 CNN scores the
generator: a Frechet distance of its features of 10,000 samples vs the test images, and for
the cgan, the classifier's accuracy on samples against the labels asked for.
"""
from __future__ import annotations

import dataclasses
from typing import Annotated, ClassVar, Literal

import jax
import jax.numpy as jnp
import numpy as np

from dlcore import models, optim
from dlcore.checkpoint import Checkpointer
from dlcore.data.transforms import ImagePipeline
from dlcore.harness import cli, plots
from dlcore.harness.rundir import start_run
from dlcore.harness.seeds import Seeds, curve, spread
from dlcore.harness.sweeps import Sweep
from dlcore.harness.scoring import load_or_train_scorer, sample_quality, to_uint8
from dlcore.harness.writers import say
from dlcore.train import fit, scan_steps, stack_states
from dlcore.train.gan import create_gan_state, generate, make_gan_step

VARIANTS = {  # variant -> (generator, discriminator, latent, epochs, SPEC id)
    "gan": ("gan_generator", "gan_discriminator", 64, 50, "2.8.2"),
    "cgan": ("cgan_generator", "cgan_discriminator", 64, 50, "2.8.3"),
    "dcgan": ("dcgan_generator", "dcgan_discriminator", 100, 10, "2.8.4"),
}


@dataclasses.dataclass
class Config:
  SWEEPABLE: ClassVar = ("lr", "beta1")  # --sweep: numbers in the step (both players)
  common: cli.Shared = cli.shared()
  data: cli.ImageOptions = cli.image_data()
  score: cli.ScoreOptions = cli.scoring()
  variant: Literal["gan", "cgan", "dcgan"] = "gan"
  """Which GAN: fully connected, conditional, or convolutional (DCGAN)."""
  epochs: cli.Positive[int] | None = None
  """Training epochs; None: the variant's (gan/cgan 50, dcgan 10)."""
  batch_size: cli.Positive[int] = 100
  """Training batch size (the seed's 100)."""
  lr: Annotated[float, cli.Between(0.0)] = 2e-4
  """Adam learning rate of both players."""
  beta1: cli.Fraction[float] = 0.5
  """Adam's b1 (the seed's PyTorch default is 0.9; see the module docstring)."""
  base: cli.Positive[int] = 32
  """DCGAN width: channels of the last hidden conv."""
  score_every: cli.Positive[int] | None = None
  """Also score every N epochs; None: after the last epoch only."""
  fuse: cli.Fuse = None

  def check(self):
    if self.common.sweep and not self.score.score_samples:
      raise cli.ConfigError("--sweep picks its best point by the samples' Frechet distance: "
                            "keep --score-samples above 0")
    if self.common.precision == "float16":
      raise cli.ConfigError("--precision float16: the GAN steps have no loss scaling; use "
                            "--precision bfloat16 (or float32)")


def build_players(cfg: Config, data):
  g_name, d_name, latent, _, _ = VARIANTS[cfg.variant]
  shape, size = data.image_shape, int(np.prod(data.image_shape))
  dtype = cli.model_dtype(cfg.common)
  if cfg.variant == "dcgan":
    if shape[:2] != (28, 28):
      raise cli.ConfigError(f"dcgan is built for 28x28 images; {data.name} has {shape[:2]}")
    return (models.build(g_name, base=cfg.base, channels=shape[2], dtype=dtype),
            models.build(d_name, base=cfg.base, dtype=dtype), latent)
  kw = {"num_classes": data.num_classes} if cfg.variant == "cgan" else {}
  return (models.build(g_name, image_shape=shape, **kw, dtype=dtype),
          models.build(d_name, image_size=size, **kw, dtype=dtype), latent)


def fuses(cfg: Config) -> bool:
  """Whether the run fuses its steps (`cli.fused`). DCGAN's convolutions are not fused by
  default: a scanned convolution step ran 4x slower than the loop of calls on this CPU
  (LeNet, 2026-12-03), and the DCGAN's bits were not checked."""
  return cli.fused(cfg, checked=cfg.variant != "dcgan")


def main(argv=None) -> dict:
  cfg = cli.parse(Config, argv, __doc__.split("\n\n")[0])
  data = cli.load_image_data(cfg.data)
  run, runner = start_run(cfg, f"gan_{cfg.variant}")
  sweep = Sweep.of(cfg)
  # --seeds N: N GANs side by side (--sweep: every point x seed); figures from the first
  seeds = Seeds.of(cfg.common, sweep=sweep)
  runner = seeds.runner(runner)
  if sweep is not None:
    say(seeds.describe())
  *_, default_epochs, spec_id = VARIANTS[cfg.variant]
  epochs = cfg.epochs or default_epochs
  conditional = cfg.variant == "cgan"
  generator, discriminator, latent = build_players(cfg, data)
  tx = seeds.optimizer(lambda lr, beta1: optim.make_optimizer("adam", lr, b1=beta1),
                       lr=cfg.lr, beta1=cfg.beta1)  # both players
  states = [create_gan_state(generator, discriminator, tx, tx, latent_size=latent,
                             image_shape=data.image_shape, seed=s, conditional=conditional)
            for s in seeds.seeds]
  if seeds.hyper:  # each member's point, in both players' optimizer states
    states = [optim.set_hyperparams(st, h) for st, h in zip(states, seeds.hyper)]
  state = stack_states(states) if seeds.many else states[0]
  gan_step = seeds.step(make_gan_step(latent_size=latent, preprocess=ImagePipeline("pm1"),
                                      conditional=conditional))
  step = runner.compile(gan_step)
  fused = runner.compile(scan_steps(gan_step)) if fuses(cfg) else None
  # Fixed noise so epochs compare; the cgan grid has one row per class.
  n_show = 10 * data.num_classes if conditional else 64
  fixed_z = jax.random.normal(jax.random.PRNGKey(cfg.common.seed + 1), (n_show, latent))
  fixed_y = (jnp.repeat(jnp.arange(data.num_classes), 10) if conditional else None)
  sample = jax.jit(generate)

  def on_epoch_end(epoch, host_state, record):
    host_state = seeds.first(host_state)
    imgs = np.asarray(sample(host_state, fixed_z, fixed_y))
    plots.image_grid(imgs, run.file("samples", f"epoch_{epoch + 1:03d}.png"),
                     nrow=10 if conditional else 8, value_range=(-1, 1),
                     title=f"{cfg.variant} epoch {epoch + 1}" + (" (row = class)" if conditional
                                                                  else ""))
    t = record["train"]
    say(f"epoch {epoch + 1}: d_loss {t['d_loss']:.3f} g_loss {t['g_loss']:.3f} D(x) "
          f"{t['d_real']:.3f} D(G(z)) {t['d_fake']:.3f}")

  evaluators = []
  if cfg.score.score_samples:
    scorer = load_or_train_scorer(data, cfg.score.classifier,
                                  epochs=cfg.score.classifier_epochs, seed=cfg.common.seed,
                                  progress=cfg.common.progress)

    def samples(state, key, labels, n):
      z = jax.random.normal(key, (n, latent))
      return to_uint8(np.concatenate([
          np.asarray(sample(state, z[i:i + 1000], None if labels is None else labels[i:i + 1000]))
          for i in range(0, n, 1000)]), (-1, 1))

    evaluators.append(sample_quality(scorer, samples, data, cfg.score.score_samples,
                                     num_classes=data.num_classes if conditional else None,
                                     every=cfg.score_every))

  steps_per_epoch = len(data.train_x) // cfg.batch_size
  if runner.mode in ("pmap", "sharded") and cfg.batch_size % runner.devices:
    raise cli.ConfigError(f"--batch-size {cfg.batch_size} must divide over {runner.devices} devices")
  train = data.train()
  with Checkpointer(run.file("checkpoints"), max_to_keep=2,
                    save_every_steps=steps_per_epoch, background=True) as ckpt:
    state, history = fit(
        state, step, lambda e: seeds.batches(train, cfg.batch_size, e, drop_remainder=True),
        runner=runner, num_epochs=epochs, evaluators=evaluators, eval_seed=seeds.eval_seed(2),
        writer=run, checkpointer=ckpt, resume=cfg.common.resume,
        progress=cfg.common.progress, desc=cfg.variant, log_every=max(1, steps_per_epoch // 4),
        on_epoch_end=on_epoch_end, fused_step=fused)
  if history:
    x = [h["epoch"] + 1 for h in history]
    shown = seeds.shown(history)  # under a sweep: the first member's (the sweep has its own)
    plots.panels({"loss": {k: curve(shown, "train", k) for k in ("d_loss", "g_loss")},
                  "discriminator output": {
                      "D(x)": curve(shown, "train", "d_real"),
                      "D(G(z))": curve(shown, "train", "d_fake")}},
                 run.file("curves.png"), x=x, title=f"{cfg.variant} on {data.name}")
  runs = [h for _, h in seeds.each(state, history)]
  entries = [{"final": h[-1]["train"] if h else None,
              **(h[-1]["eval"] if cfg.score.score_samples and h else {})} for h in runs]
  entry = seeds.summarize(entries, best="frechet_distance", higher_is_better=False)
  if sweep is not None:
    entry |= entry["best_point"] | {"figures_member": {**seeds.hyper[0],
                                                       "seed": seeds.seeds[0]}}
  entry |= {"dataset": data.source, "dataset_name": data.name, "epochs": epochs,
            "mode": cfg.common.mode, "devices": runner.devices, "fused": fused is not None}
  if cfg.score.score_samples and history:
    n = cfg.score.score_samples
    entry |= {
        "frechet_distance_train_vs_test": scorer.frechet_distance(data.train_x[:n],
                                                                  data.test_x[:n]),
        "classifier": scorer.describe(), "scored_samples": n}
    say(f"Frechet distance (CNN features), samples vs test: "
        f"{spread(entry, 'frechet_distance', '.3f')}; "
        f"real train vs test: {entry['frechet_distance_train_vs_test']:.3f}")
    if conditional:
      say(f"classifier agrees with the requested label on "
          f"{spread(entry, 'label_accuracy', '.3f')} of "
          f"the samples (its accuracy on real test images: {scorer.test_accuracy:.3f})")
  if sweep is not None:
    sweep.write(run, entry, seeds.per_point, [k for k in entries[0] if k != "final"],
                curves={"g_loss": [curve(h, "train", "g_loss") for h in runs]},
                title=f"{cfg.variant} on {data.name}, {epochs} epochs")
  summary = run.update_summary({spec_id: entry})
  run.close()
  return summary


if __name__ == "__main__":
  cli.entry(main)
