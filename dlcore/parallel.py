"""The data-parallel axis as seen from inside a traced step, so models need no axis names.

dlcore runs a data-parallel step in one of two ways (`dlcore.train.Runner`):

- sharded (one or several processes): one global program under `jax.jit` over a device
  mesh. The program is written for the whole batch, the batch axis is sharded, and XLA
  inserts the reductions: a mean over the batch *is* the global mean. Nothing here applies.
- pmap: one program per device, each seeing its slice of the batch. The Runner traces the
  step inside `data_axis_context(name)`; the few places that need the whole batch (batch
  statistics in `dlcore.models.layers.BatchNorm`, the gradient and metric means of the step
  factories, random draws whose shape includes the batch) read `data_axis()` and reduce
  over it, so a pmap step computes what one device computes on the whole batch.

Outside a Runner's pmap (eager, jit, sharded, or a plain call) `data_axis()` is None and
every helper is the identity of its single-device meaning.
"""
from __future__ import annotations

import contextlib
import contextvars
from typing import Callable, Sequence

import jax
import jax.numpy as jnp

_AXIS: contextvars.ContextVar[str | None] = contextvars.ContextVar("dlcore_data_axis",
                                                                   default=None)


def data_axis() -> str | None:
  """The name of the data-parallel axis the current trace is mapped over, or None."""
  return _AXIS.get()


@contextlib.contextmanager
def data_axis_context(name: str | None):
  """Traces the enclosed code as one device's share of a step mapped over axis `name`."""
  token = _AXIS.set(name)
  try:
    yield
  finally:
    _AXIS.reset(token)


def mean(tree):
  """The mean of `tree` over the data-parallel devices (identity without an axis)."""
  axis = data_axis()
  return tree if axis is None else jax.lax.pmean(tree, axis)


def total(tree):
  """The sum of `tree` over the data-parallel devices (identity without an axis)."""
  axis = data_axis()
  return tree if axis is None else jax.lax.psum(tree, axis)


def batch_mean(x, axes: Sequence[int]):
  """`jnp.mean(x, axes)` over the whole batch: local means averaged over the devices (their
  slices are equal in size), and the number of examples that went into it."""
  n = 1
  for a in axes:
    n *= x.shape[a]
  return mean(jnp.mean(x, tuple(axes))), total(n)


def global_draw(sample: Callable, key, shape: Sequence[int], *args, **kwargs):
  """`sample(key, shape, ...)` for this device's slice of a batch-shaped draw (leading axis
  = batch): under pmap the whole batch's draw is made and sliced, so each example gets the
  numbers it gets on one device. E.g. `global_draw(jax.random.normal, key, mu.shape)`."""
  axis = data_axis()
  shape = tuple(shape)
  if axis is None or not shape:
    return sample(key, shape, *args, **kwargs)
  n = jax.lax.psum(1, axis)
  full = sample(key, (n * shape[0],) + shape[1:], *args, **kwargs)
  return jax.lax.dynamic_slice_in_dim(full, jax.lax.axis_index(axis) * shape[0], shape[0])
