"""Losses with PyTorch's reductions, on top of Optax's numerically stable primitives.

One convention: a loss made of several terms returns `(scalar mean, {part: scalar mean})`,
the shape `make_train_step`'s `loss_fn` returns; single-term losses return the scalar.
Every loss is computed in float32: bfloat16/float16 model outputs are cast up first."""
from __future__ import annotations

import jax.numpy as jnp
import optax

from dlcore.precision import to_float32


def _reduce(x, reduction: str):
  if reduction == "mean":
    return jnp.mean(x)
  if reduction == "sum":
    return jnp.sum(x)
  if reduction == "none":
    return x
  raise ValueError(f"unknown reduction {reduction!r}; use 'mean', 'sum' or 'none'")


def mse(pred, target, reduction: str = "mean"):
  """PyTorch's MSELoss: squared error reduced over every element."""
  pred, target = to_float32((pred, target))
  return _reduce(jnp.square(pred - target), reduction)


def bce_with_logits(logits, labels, reduction: str = "mean"):
  """PyTorch's BCEWithLogitsLoss (labels in [0, 1], same shape as logits)."""
  logits, labels = to_float32((logits, labels))
  return _reduce(optax.sigmoid_binary_cross_entropy(logits, labels), reduction)


def cross_entropy(logits, labels, weight=None, reduction: str = "mean"):
  """PyTorch's CrossEntropyLoss on integer labels, with optional per-class `weight`.

  With weights, the mean divides by the sum of the samples' weights, as PyTorch does."""
  logits = to_float32(logits)
  per_sample = optax.softmax_cross_entropy_with_integer_labels(logits, labels)
  if weight is None:
    return _reduce(per_sample, reduction)
  w = jnp.asarray(weight)[labels]
  if reduction == "mean":
    return jnp.sum(w * per_sample) / jnp.sum(w)
  return _reduce(w * per_sample, reduction)


def accuracy(logits, labels):
  """Fraction of correct predictions: argmax for multi-class, logit > 0 for one output."""
  if logits.shape[-1] == 1:
    pred = (logits[..., 0] > 0).astype(labels.dtype)
    return jnp.mean(pred == labels.reshape(pred.shape))
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def vae_loss(logits, x, mu, log_var):
  """The VAE's negative ELBO per example, averaged over the batch: BCE summed over pixels
  plus KL(q(z|x) || N(0, I)) = -1/2 sum(1 + log_var - mu^2 - exp(log_var)).

  Returns (mean total, {"bce": mean BCE, "kl": mean KL}); logits (N, D) from the decoder,
  x the targets in [0, 1] (any shape with N first)."""
  logits, x, mu, log_var = to_float32((logits, x, mu, log_var))
  target = x.reshape((x.shape[0], -1))
  bce = optax.sigmoid_binary_cross_entropy(logits, target).sum(-1)
  kl = -0.5 * jnp.sum(1 + log_var - mu ** 2 - jnp.exp(log_var), axis=-1)
  return jnp.mean(bce + kl), {"bce": jnp.mean(bce), "kl": jnp.mean(kl)}
