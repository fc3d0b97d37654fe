"""Losses with PyTorch's reductions, on top of Optax's numerically stable primitives."""
from __future__ import annotations

import jax.numpy as jnp
import optax


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
  return _reduce(jnp.square(pred - target), reduction)


def bce_with_logits(logits, labels, reduction: str = "mean"):
  """PyTorch's BCEWithLogitsLoss (labels in [0, 1], same shape as logits)."""
  return _reduce(optax.sigmoid_binary_cross_entropy(logits, labels), reduction)


def cross_entropy(logits, labels, weight=None, reduction: str = "mean"):
  """PyTorch's CrossEntropyLoss on integer labels, with optional per-class `weight`.

  With weights, the mean divides by the sum of the samples' weights, as PyTorch does."""
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
