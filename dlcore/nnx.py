"""Every dlcore model from Flax NNX, through `flax.nnx.bridge` (the models stay linen).

    from dlcore import nnx as dlnnx
    net = dlnnx.to_nnx("lenet")                  # initialised on the registry's example input
    logits = net(x, train=False)                 # an nnx.Module: nnx.grad, nnx.Optimizer, ...
    net = dlnnx.to_nnx(model, x, variables=v)    # holding given (trained, converted) variables

Batch statistics live in the wrapper as `nnx.BatchStat`; pass `mutable=["batch_stats"]`
with `train=True` to update them, as with linen's `apply`.
"""
from __future__ import annotations

import flax.linen as nn
import jax
from flax import nnx
from flax.nnx import bridge
from flax.nnx.bridge import variables as bridge_variables

from dlcore import models


def to_nnx(model: nn.Module | str, *example_inputs, variables: dict | None = None,
           seed: int = 0) -> bridge.ToNNX:
  """`model` (a linen module or a registered name) as an NNX module.

  Its variables are initialised on `example_inputs` (default, for a registered name:
  `models.example_inputs(name)`) with `nnx.Rngs(seed)`, then replaced by `variables` when
  given; their structure and shapes must match the model's."""
  if isinstance(model, str):
    example_inputs = example_inputs or models.example_inputs(model)
    model = models.build(model)
  if not example_inputs:
    raise ValueError("to_nnx needs example inputs for a module that is not a registered name")
  wrapped = bridge.ToNNX(model, rngs=nnx.Rngs(seed, dropout=seed + 1, noise=seed + 2))
  if variables is None:
    bridge.lazy_init(wrapped, *example_inputs, train=False)
  else:  # no real init (AlexNet's would take seconds): check the shapes, then take them
    _load(wrapped, model, example_inputs, variables)
  return wrapped


def _load(wrapped: bridge.ToNNX, model: nn.Module, example_inputs, variables: dict) -> None:
  expected = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), *example_inputs,
                                               train=False))
  shapes = lambda tree: jax.tree.map(lambda a: (tuple(a.shape), str(a.dtype)), tree)  # noqa: E731
  if shapes(dict(expected)) != shapes(dict(variables)):
    raise ValueError(f"variables do not match {type(model).__name__}'s structure or shapes")
  for name, value in bridge_variables.linen_vars_to_nnx_attrs(dict(variables)).items():
    setattr(wrapped, name, nnx.data(value))
