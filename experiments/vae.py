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

import jax
import jax.numpy as jnp
import numpy as np

from dlcore import cli, data as dldata, models, optim, plots
from dlcore.checkpoint import Checkpointer
from dlcore.data.transforms import ImagePipeline
from dlcore.models.generative import vae_loss
from dlcore.runs import start_run
from dlcore.scoring import load_or_train_scorer, to_uint8
from dlcore.train import create_train_state, fit, make_train_step
from dlcore.train.state import variables_of

FALLBACK = ("fashion_mnist", "digits")


@dataclasses.dataclass
class Config(cli.Common, cli.ImageDataArgs):
  epochs: int = 30
  batch_size: int = 128
  lr: float = 1e-3
  hidden: int = 400
  latent_dim: int = 20
  classifier: str = ""          # scoring CNN (save_model dir); "": runs/classifier_<dataset>
  classifier_epochs: int = 3    # when the scoring CNN has to be trained first
  score_samples: int = 10000    # generated images for the Frechet distance (0: skip)


def main(argv=None) -> dict:
  cfg = cli.parse(Config, argv, __doc__.split("\n\n")[0])
  data = cli.load_image_data(cfg, fallback=FALLBACK)
  run, runner = start_run(cfg, "vae")
  shape = data.image_shape
  model = models.build("vae", image_size=math.prod(shape), h_dim=cfg.hidden,
                       z_dim=cfg.latent_dim, image_shape=shape)
  pipe = ImagePipeline("unit")
  state = create_train_state(model, optim.make_optimizer("adam", cfg.lr),
                             pipe(jnp.asarray(data.train_x[:2])), cfg.seed)

  def loss_fn(out, batch):
    logits, mu, log_var = out
    total, bce, kl = vae_loss(logits, pipe(batch["x"]), mu, log_var)
    return jnp.mean(total), {"bce": jnp.mean(bce), "kl": jnp.mean(kl)}

  step = runner.compile(make_train_step(loss_fn, axis_name=runner.axis_name,
                                        rng_streams=("noise",), preprocess=pipe))

  @jax.jit
  def test_sums(state, x, key):  # negative ELBO with sampled z, summed over the batch
    logits, mu, log_var = state.apply_fn(variables_of(state), pipe(x), sample=True,
                                         rngs={"noise": key})
    total, bce, kl = vae_loss(logits, pipe(x), mu, log_var)
    return jnp.sum(total), jnp.sum(bce), jnp.sum(kl)

  decode = jax.jit(lambda s, z: s.apply_fn(variables_of(s), z, method=model.decode))
  reconstruct = jax.jit(lambda s, x: jax.nn.sigmoid(
      s.apply_fn(variables_of(s), pipe(x))[0]).reshape(x.shape))
  fixed_z = jax.random.normal(jax.random.PRNGKey(cfg.seed + 1), (64, cfg.latent_dim))
  originals = data.test_x[:32]
  test = data.test()

  def evaluate(state) -> dict:
    key = jax.random.PRNGKey(10_000 + cfg.seed)
    sums = np.zeros(3)
    for i, b in enumerate(dldata.batches(test, 1000)):
      sums += np.asarray(jax.device_get(test_sums(state, b["x"], jax.random.fold_in(key, i))))
    return dict(zip(("loss", "bce", "kl"), (sums / len(test["x"])).tolist()))

  def on_epoch_end(epoch, host_state, record):
    record["eval"] = evaluate(host_state)
    run.log("eval", record["step"], record["eval"], epoch=epoch)
    rec = np.asarray(reconstruct(host_state, originals))
    pairs = np.stack([originals / 255.0, rec], 1).reshape(-1, *shape)  # original, recon, ...
    plots.image_grid(pairs, run.file("reconstructions", f"epoch_{epoch + 1:03d}.png"), nrow=16,
                     title=f"epoch {epoch + 1}: originals (odd) and reconstructions (even)")
    plots.image_grid(np.asarray(decode(host_state, fixed_z)),
                     run.file("samples", f"epoch_{epoch + 1:03d}.png"), nrow=8,
                     title=f"epoch {epoch + 1}: decoded from N(0, I)")
    print(f"epoch {epoch + 1}: train loss {record['train']['loss']:.2f}, test loss "
          f"{record['eval']['loss']:.2f} (BCE {record['eval']['bce']:.2f} + KL "
          f"{record['eval']['kl']:.2f}) per sample", flush=True)

  drop = runner.mode in ("pmap", "sharded")
  n = len(data.train_x)
  steps_per_epoch = n // cfg.batch_size if drop else -(-n // cfg.batch_size)
  with Checkpointer(run.file("checkpoints"), max_to_keep=2,
                    save_every_steps=steps_per_epoch) as ckpt:
    state, history = fit(
        state, step,
        lambda e: dldata.batches(data.train(), cfg.batch_size, shuffle=True, seed=cfg.seed,
                                 epoch=e, drop_remainder=drop),
        runner=runner, num_epochs=cfg.epochs, run=run, checkpointer=ckpt, resume=cfg.resume,
        progress=cfg.progress, desc="VAE", log_every=max(1, steps_per_epoch // 4),
        on_epoch_end=on_epoch_end)
  final = evaluate(state)
  epochs = [h["epoch"] + 1 for h in history]
  plots.panels({"loss per sample": {"train": [h["train"]["loss"] for h in history],
                                    "test": [h["eval"]["loss"] for h in history]}},
               run.file("loss_curves.png"), x=epochs, title=f"VAE on {data.name}")
  entry = {"test_loss": final["loss"], "test_bce": final["bce"], "test_kl": final["kl"],
           "train_loss": history[-1]["train"]["loss"] if history else None,
           "dataset": data.source, "dataset_name": data.name, "epochs": cfg.epochs,
           "latent_dim": cfg.latent_dim, "mode": cfg.mode,
           "loss": "per sample: BCE summed over pixels + KL, z sampled"}
  if cfg.latent_dim == 2:
    from scipy.stats import norm

    grid = norm.ppf(np.linspace(0.05, 0.95, 20)).astype(np.float32)
    z = np.stack(np.meshgrid(grid, grid[::-1]), -1).reshape(-1, 2)
    plots.image_grid(np.asarray(decode(state, z)), run.file("latent_manifold.png"), nrow=20,
                     title="2-D latent manifold (figure 8-8)")
  if cfg.score_samples:
    scorer = load_or_train_scorer(data, cfg.classifier or f"runs/classifier_{data.name}",
                                  epochs=cfg.classifier_epochs, seed=cfg.seed,
                                  progress=cfg.progress)
    z = jax.random.normal(jax.random.PRNGKey(cfg.seed + 2), (cfg.score_samples, cfg.latent_dim))
    samples = np.concatenate([np.asarray(decode(state, z[i:i + 1000]))
                              for i in range(0, len(z), 1000)])
    fd = scorer.frechet_distance(to_uint8(samples), data.test_x[:cfg.score_samples])
    fd_train = scorer.frechet_distance(data.train_x[:cfg.score_samples],
                                       data.test_x[:cfg.score_samples])
    entry |= {"frechet_distance": fd, "frechet_distance_train_vs_test": fd_train,
              "classifier_test_accuracy": scorer.test_accuracy, "classifier": scorer.source}
    print(f"Frechet distance (CNN features), samples vs test: {fd:.3f}; real train vs test: "
          f"{fd_train:.3f}")
  print(f"VAE on {data.name}: test loss {final['loss']:.2f} per sample")
  summary = run.update_summary({"2.8.1": entry})
  run.close()
  return summary


if __name__ == "__main__":
  main()
