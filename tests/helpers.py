"""Small shared fixtures for the tests."""
import jax
import numpy as np
import optax

from dlcore import losses, models
from dlcore.data import synthetic
from dlcore.train import create_train_state


def bce_loss(logits, batch):
  return losses.bce_with_logits(logits, batch["y"]), {
      "accuracy": losses.accuracy(logits, batch["y"])}


def planar_batch(n=400):
  x, y = synthetic.planar_flower()
  return {"x": x[:n], "y": y[:n]}


def small_state(name="mlp", opt=None, seed=0, **kwargs):
  model = models.build(name, **kwargs)
  x = planar_batch(8)["x"]
  return create_train_state(model, opt or optax.sgd(0.5, momentum=0.9), x, seed)


def max_abs_diff(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b)
  return max((float(np.max(np.abs(np.asarray(x) - np.asarray(y))))
              for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b))), default=0.0)
