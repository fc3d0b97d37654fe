"""Optimizers by name, built from Optax, with the material's conventions made explicit.

Mapping from the book's pseudocode (seed 002, section 5.6) and PyTorch to Optax, pinned by
tests/test_optim.py against NumPy transcriptions of the pseudocode:

- sgd:       theta -= lr * g.
- momentum:  book `v = a v - lr g; theta += v`  ==  optax `t = g + a t; theta -= lr t`
             (v = -lr t while lr is constant). PyTorch's SGD(momentum=a) is the optax form.
- nesterov:  optax tracks the look-ahead point: its parameters equal the book's theta + a v.
- adagrad:   book `r += g^2; theta -= lr g / (delta + sqrt(r))`, delta 1e-7, r starts at 0.
             Optax puts eps inside the square root and starts r at 0.1 by default; dlcore
             starts r at 0 (as the book and PyTorch) and uses eps = delta^2 inside, which
             matches the book to ~delta/sqrt(r) relative.
- rmsprop:   book `r = rho r + (1 - rho) g^2; theta -= lr g / sqrt(delta + r)` (eps inside
             the root, optax's default). PyTorch's RMSprop(alpha=rho, eps) puts eps outside:
             pass `eps_in_sqrt=False` for PyTorch parity. PyTorch's `alpha` is optax's `decay`.
- adam:      identical to the book and PyTorch (bias-corrected, eps outside the root).
- weight_decay adds `wd * theta` to the gradient before the optimizer (PyTorch's coupled L2,
  the book's section 5.1), not AdamW's decoupled decay.
"""
from __future__ import annotations

from typing import Callable

import jax
import jax.numpy as jnp
import optax

NAMES = ("sgd", "momentum", "nesterov", "adagrad", "rmsprop", "adam")


def step_decay(lr: float, every_steps: int, factor: float = 0.1) -> optax.Schedule:
  """lr * factor ** (step // every_steps): the book's "multiply down every k epochs".

  With `every_steps = 5 * steps_per_epoch` epochs 0-4 run at lr, 5-9 at lr*factor, ...
  (the book's `if epoch % 5 == 0` also fires at epoch 0; see SPEC 2.3.1)."""
  if every_steps <= 0:
    raise ValueError(f"every_steps must be positive, got {every_steps}")
  return optax.exponential_decay(lr, transition_steps=every_steps, decay_rate=factor,
                                 staircase=True)


def make_optimizer(name: str, lr: float | Callable[[int], float], *, momentum: float = 0.9,
                   weight_decay: float = 0.0, b1: float = 0.9, b2: float = 0.999,
                   eps: float | None = None, decay: float = 0.9, eps_in_sqrt: bool = True,
                   initial_accumulator_value: float = 0.0) -> optax.GradientTransformation:
  """Returns the Optax transformation `name` with learning rate (or schedule) `lr`.

  `momentum` is used by momentum/nesterov, `decay` (PyTorch's `alpha`) by rmsprop, `b1`/`b2`
  by adam; `eps` defaults to the book's delta for each optimizer.
  """
  if name == "sgd":
    tx = optax.sgd(lr)
  elif name == "momentum":
    tx = optax.sgd(lr, momentum=momentum)
  elif name == "nesterov":
    tx = optax.sgd(lr, momentum=momentum, nesterov=True)
  elif name == "adagrad":
    delta = 1e-7 if eps is None else eps
    tx = optax.adagrad(lr, initial_accumulator_value=initial_accumulator_value, eps=delta**2)
  elif name == "rmsprop":
    tx = optax.rmsprop(lr, decay=decay, eps=1e-6 if eps is None else eps,
                       eps_in_sqrt=eps_in_sqrt)
  elif name == "adam":
    tx = optax.adam(lr, b1=b1, b2=b2, eps=1e-8 if eps is None else eps)
  else:
    raise ValueError(f"unknown optimizer {name!r}; choose one of {', '.join(NAMES)}")
  if weight_decay:
    tx = optax.chain(optax.add_decayed_weights(weight_decay), tx)
  return tx


def injected(factory: Callable[..., optax.GradientTransformation], **values: float
             ) -> optax.GradientTransformation:
  """`factory(**values)` with `values` (numbers: a learning rate, the base rate of a
  schedule `factory` builds, momentum, weight decay, ...) kept in the optimizer state as
  arrays (`optax.inject_hyperparams`), so members of one program can each carry their own
  (`set_hyperparams`, `dlcore.train.members.create_members(hyperparams=...)`). Computes what
  `factory(**values)` computes, to float rounding; the state's tree differs."""
  return optax.inject_hyperparams(factory)(**values)


def _is_injected(node) -> bool:
  return hasattr(node, "hyperparams") and hasattr(node, "inner_state")


def set_hyperparams(opt_state, values: dict[str, float]):
  """`opt_state` (of an `injected` optimizer, wherever it sits in the tree) with the
  hyperparameters in `values` replaced, each in the dtype it had."""
  found = set()

  def put(node):
    if not _is_injected(node):
      return node
    found.update(node.hyperparams)
    return node._replace(hyperparams={
        k: (jnp.asarray(values[k], dtype=jnp.result_type(v)) if k in values else v)
        for k, v in node.hyperparams.items()})

  if not values:
    return opt_state
  opt_state = jax.tree.map(put, opt_state, is_leaf=_is_injected)
  if missing := sorted(set(values) - found):
    raise ValueError(f"the optimizer state has no injected hyperparameter {', '.join(missing)}"
                     f" (it has: {', '.join(sorted(found)) or 'none'}); build it with "
                     "optim.injected")
  return opt_state


def hyperparams_of(opt_state) -> dict:
  """The injected hyperparameters of `opt_state` (`injected`), as arrays."""
  out = {}
  for node in jax.tree.leaves(opt_state, is_leaf=_is_injected):
    if _is_injected(node):
      out |= node.hyperparams
  return out
