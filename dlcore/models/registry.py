"""Model registry: a name -> constructor map, so a model can be rebuilt from (name, kwargs).

`save_model` stores the registered name and the constructor's keyword arguments as JSON;
`load_model` rebuilds the module through this registry. Nothing from the file is executed:
an unknown name is an error, never an import.
"""
from __future__ import annotations

from typing import Any, Callable

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
# Small example input shape (without batch) per model, used for init, tests and benchmarks.
_EXAMPLE_SHAPES: dict[str, tuple[int, ...]] = {}
# name -> (dtype of the example input, whether the model takes integer labels second)
_EXAMPLE_KINDS: dict[str, tuple[str, bool, bool]] = {}


def register(name: str, *, example_shape: tuple[int, ...], dtype: str = "float32",
             labels: bool = False, batched: bool = True):
  """Class/function decorator adding a constructor to the registry under `name`.

  `example_shape` (without batch) and `dtype` describe a valid input; `labels`: the model
  takes integer class labels as its second argument (conditional GANs); `batched=False`: the
  model takes one unbatched example (the seed's corr2d layer)."""

  def deco(ctor):
    if name in _REGISTRY:
      raise ValueError(f"model name {name!r} is registered twice")
    _REGISTRY[name] = ctor
    _EXAMPLE_SHAPES[name] = tuple(example_shape)
    _EXAMPLE_KINDS[name] = (dtype, labels, batched)
    return ctor

  return deco


def names() -> list[str]:
  return sorted(_REGISTRY)


def example_shape(name: str) -> tuple[int, ...]:
  _check(name)
  return _EXAMPLE_SHAPES[name]


def example_inputs(name: str, batch: int = 2) -> tuple[np.ndarray, ...]:
  """Positional inputs the model `name` accepts with its default constructor: a batch of
  zeros of `example_shape(name)`, and integer labels for conditional models."""
  _check(name)
  dtype, labels, batched = _EXAMPLE_KINDS[name]
  x = np.zeros(((batch,) if batched else ()) + _EXAMPLE_SHAPES[name], dtype)
  return (x, np.zeros((batch,), np.int32)) if labels else (x,)


def _check(name: str) -> None:
  if name not in _REGISTRY:
    raise KeyError(
        f"unknown model {name!r}; registered models are: {', '.join(names())}")


def _as_hashable(value: Any) -> Any:
  # JSON turns tuples into lists; linen modules want hashable (tuple) fields.
  if isinstance(value, list):
    return tuple(_as_hashable(v) for v in value)
  if isinstance(value, dict):
    return {k: _as_hashable(v) for k, v in value.items()}
  return value


def _as_dtype(value: Any) -> Any:
  """A dtype given by name ("bfloat16", as a command line or JSON spells it) -> jnp dtype."""
  return None if value is None else jnp.dtype(value).type


def build(name: str, **kwargs: Any) -> nn.Module:
  """Constructs the registered model `name` with constructor arguments `kwargs`.

  Every model takes `dtype` (the computation's: activations and outputs) and `param_dtype`
  (the parameters' storage), float32 both by default; either may be a name ("bfloat16").
  Batch statistics, softmax-like reductions and losses stay float32 whatever `dtype` is."""
  _check(name)
  for key in ("dtype", "param_dtype"):
    if key in kwargs:
      kwargs[key] = _as_dtype(kwargs[key])
  return _REGISTRY[name](**{k: _as_hashable(v) for k, v in kwargs.items()})
