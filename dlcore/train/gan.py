"""GAN training: two players, one step function each (discriminator, then generator).

    state = create_gan_state(G, D, g_tx, d_tx, latent_size=64, image_shape=(28, 28, 1))
    step = runner.compile(make_gan_step(latent_size=64, preprocess=ImagePipeline("pm1")))
    state, metrics = step(state, batch)   # metrics: d_loss, g_loss, d_real, d_fake

`GANState` holds both players' `TrainState`s (parameters, optimizer states, batch norm
statistics), so a checkpoint restores both players and both optimizers. The noise for a
global batch is drawn once from `fold_in(rng, step)` and each pmap device takes its slice
(`dlcore.parallel`): every mode computes the same step as single-device jit.
Conditional players (`conditional=True`) take the labels as their second argument; the
generator is asked for the labels of the real batch.
"""
from __future__ import annotations

from typing import Callable

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from dlcore import parallel, precision
from dlcore.train.state import TrainState, create_train_state, variables_of
from dlcore.train.steps import on_axis


@flax.struct.dataclass
class GANState:
  g: TrainState
  d: TrainState

  @property
  def step(self):
    return self.g.step


def create_gan_state(generator: nn.Module, discriminator: nn.Module,
                     g_tx: optax.GradientTransformation, d_tx: optax.GradientTransformation, *,
                     latent_size: int, image_shape: tuple[int, ...], seed: int = 0,
                     conditional: bool = False) -> GANState:
  """Initialises both players (G on a latent batch, D on an image batch)."""
  z = jnp.zeros((2, latent_size))
  x = jnp.zeros((2, *image_shape))
  labels = (jnp.zeros((2,), jnp.int32),) if conditional else ()
  return GANState(g=create_train_state(generator, g_tx, z, seed, labels),
                  d=create_train_state(discriminator, d_tx, x, seed + 1, labels))


def _noise(key, local_batch: int, size: int):
  """N(0, 1) noise of the global batch, sliced to this device's part under pmap."""
  return parallel.global_draw(jax.random.normal, key, (local_batch, size))


def _apply(state: TrainState, x, labels, *, train: bool):
  """Forward in train mode with batch statistics (returned, or None without BN). Outputs
  come back in float32 whatever the players' computation dtype (losses in float32)."""
  if state.dynamic_scale is not None:
    raise ValueError("the GAN steps have no float16 loss scaling; train GANs in float32 or "
                     "bfloat16")
  args = (x,) if labels is None else (x, labels)
  if state.batch_stats is None:
    return precision.to_float32(state.apply_fn(variables_of(state), *args, train=train)), None
  if not train:
    out = state.apply_fn(variables_of(state), *args, train=False)
    return precision.to_float32(out), state.batch_stats
  out, upd = state.apply_fn(variables_of(state), *args, train=True, mutable=["batch_stats"])
  return precision.to_float32(out), upd["batch_stats"]


def bce(logits, target: float):
  """BCE(sigmoid(logits), target) averaged: the seed's nn.BCELoss after Sigmoid."""
  return jnp.mean(optax.sigmoid_binary_cross_entropy(logits, jnp.full_like(logits, target)))


def make_d_step(*, latent_size: int, axis_name: str | None = None,
                preprocess: Callable | None = None, conditional: bool = False):
  """Discriminator step: BCE(D(x), 1) + BCE(D(G(z)), 0), G fixed."""

  def d_step(state: GANState, batch: dict):
    x = batch["x"] if preprocess is None else preprocess(batch["x"])
    labels = batch.get("y") if conditional else None
    key = jax.random.fold_in(jax.random.fold_in(state.d.rng, state.step), 0)
    z = _noise(key, x.shape[0], latent_size)
    fake, _ = _apply(state.g, z, labels, train=True)
    fake = jax.lax.stop_gradient(fake)

    def loss_fn(params):
      d = state.d.replace(params=params)
      real_logits, stats = _apply(d, x, labels, train=True)
      fake_logits, stats = _apply(d.replace(batch_stats=stats), fake, labels, train=True)
      loss = bce(real_logits, 1.0) + bce(fake_logits, 0.0)
      return loss, (stats, jnp.mean(nn.sigmoid(real_logits)), jnp.mean(nn.sigmoid(fake_logits)))

    (loss, (stats, d_real, d_fake)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.d.params)
    d = state.d.apply_gradients(grads=parallel.mean(grads))
    if stats is not None:
      d = d.replace(batch_stats=parallel.mean(stats))
    metrics = parallel.mean({"d_loss": loss, "d_real": d_real, "d_fake": d_fake})
    return state.replace(d=d), metrics

  return on_axis(d_step, axis_name)


def make_g_step(*, latent_size: int, axis_name: str | None = None, conditional: bool = False,
                batch_size_of: Callable = lambda batch: batch["x"].shape[0]):
  """Generator step: BCE(D(G(z)), 1) (the fake labelled real), D fixed."""

  def g_step(state: GANState, batch: dict):
    labels = batch.get("y") if conditional else None
    key = jax.random.fold_in(jax.random.fold_in(state.g.rng, state.step), 1)
    z = _noise(key, batch_size_of(batch), latent_size)

    def loss_fn(params):
      fake, stats = _apply(state.g.replace(params=params), z, labels, train=True)
      logits, _ = _apply(state.d, fake, labels, train=True)  # D's stats update is dropped
      return bce(logits, 1.0), stats

    (loss, stats), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.g.params)
    g = state.g.apply_gradients(grads=parallel.mean(grads))
    if stats is not None:
      g = g.replace(batch_stats=parallel.mean(stats))
    return state.replace(g=g), {"g_loss": parallel.mean(loss)}

  return on_axis(g_step, axis_name)


def make_gan_step(*, latent_size: int, axis_name: str | None = None,
                  preprocess: Callable | None = None, conditional: bool = False):
  """One training iteration: the discriminator's step, then the generator's."""
  d_step = make_d_step(latent_size=latent_size, axis_name=axis_name, preprocess=preprocess,
                       conditional=conditional)
  g_step = make_g_step(latent_size=latent_size, axis_name=axis_name, conditional=conditional)

  def step(state: GANState, batch: dict):
    state, d_metrics = d_step(state, batch)
    state, g_metrics = g_step(state, batch)
    return state, {**d_metrics, **g_metrics, "loss": d_metrics["d_loss"] + g_metrics["g_loss"]}

  return step


def generate(state: GANState, z, labels=None):
  """Generator samples in inference mode (running batch statistics)."""
  args = (z,) if labels is None else (z, labels)
  return precision.to_float32(state.g.apply_fn(variables_of(state.g), *args, train=False))
