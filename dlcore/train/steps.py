"""Pure step factories: `step(state, batch) -> (state, metrics)`.

Nothing here is jitted or pmapped: `dlcore.train.modes.Runner` applies that where the step is
used, so eager, jit, pmap and sharded runs execute the same function. No axis name is
needed: under the Runner's pmap, gradients and metrics are averaged over the devices (counts
summed) through `dlcore.parallel`; `axis_name` is only for your own `jax.pmap` code.
Batches are dicts; the model's input is `batch["x"]`, passed through `preprocess` when given
(e.g. `dlcore.data.transforms.ImagePipeline`: uint8 images normalised on the device).
"""
from __future__ import annotations

import re
from typing import Callable, Sequence

import flax
import jax
import jax.numpy as jnp

from dlcore import parallel, precision
from dlcore.train.state import TrainState, variables_of

# loss_fn(outputs, batch) -> (scalar loss, dict of scalar metrics)
LossFn = Callable[[jax.Array, dict], tuple[jax.Array, dict]]


def step_rngs(state: TrainState, streams: Sequence[str]) -> dict:
  """Per-step keys, fold_in(rng, step), one per stream; the same on every device (dlcore's
  random layers slice the whole batch's draw under pmap)."""
  if not streams:
    return {}
  key = jax.random.fold_in(state.rng, state.step)
  return dict(zip(streams, jax.random.split(key, len(streams))))


def reduce_metrics(metrics: dict) -> dict:
  """Metrics of the whole batch from each device's: means averaged, a "count" summed."""
  return {k: parallel.total(v) if k == "count" else parallel.mean(v)
          for k, v in metrics.items()}


def on_axis(fn, axis_name: str | None):
  """`fn` traced as one device's share of a step over `axis_name` (None: the Runner's)."""
  if axis_name is None:
    return fn

  def traced(*args):
    with parallel.data_axis_context(axis_name):
      return fn(*args)

  return traced


def _inputs(batch: dict, preprocess):
  return batch["x"] if preprocess is None else preprocess(batch["x"])


def _missing_stream(error: Exception) -> str | None:
  m = re.search(r'needs PRNG for "([^"]+)"', str(error))
  return m.group(1) if m else None


def learning_streams(step_fn, streams: Sequence[str] | None):
  """`step_fn(state, batch, streams)` with the random streams found on first use when
  `streams` is None: the model asks for a stream it lacks (flax's InvalidRngError names it),
  the stream is added and the step traced again. Streams are kept sorted, so the keys a step
  draws do not depend on the order they were found in."""
  found = None if streams is None else tuple(streams)

  def step(state, batch):
    nonlocal found
    current = found or ()
    while True:
      try:
        out = step_fn(state, batch, current)
      except flax.errors.InvalidRngError as e:
        name = _missing_stream(e)
        if found is not None or name is None or name in current:
          raise
        current = tuple(sorted((*current, name)))
        continue
      found = current
      return out

  return step


def make_train_step(loss_fn: LossFn, *, axis_name: str | None = None,
                    rng_streams: Sequence[str] | None = None, preprocess=None):
  """One optimizer step on `batch`: forward in train mode, grads, update, batch stats.

  `rng_streams`: the random streams the model draws from in training ("dropout", a VAE's
  "noise"); by default they are found on the first call (see `learning_streams`).

  The model's outputs reach `loss_fn` in float32 whatever its computation dtype
  (`dlcore.precision.to_float32`). A state with a `dynamic_scale` (float16) trains with
  dynamic loss scaling: a step whose gradients overflow is skipped and reported in the
  metrics ("skipped", "loss_scale"; see `dlcore.precision`)."""

  def step(state: TrainState, batch: dict, streams: Sequence[str]):
    rngs = step_rngs(state, streams)
    has_bn = state.batch_stats is not None
    x = _inputs(batch, preprocess)

    def compute_loss(params):
      variables = variables_of(state.replace(params=params))
      if has_bn:
        out, updates = state.apply_fn(variables, x, train=True, rngs=rngs,
                                      mutable=["batch_stats"])
      else:
        out, updates = state.apply_fn(variables, x, train=True, rngs=rngs), {}
      loss, metrics = loss_fn(precision.to_float32(out), batch)
      return loss, (metrics, updates.get("batch_stats"))

    scale, apply, (loss, (metrics, batch_stats)), grads = precision.scaled_value_and_grad(
        compute_loss, state.dynamic_scale, parallel.data_axis())(state.params)
    if has_bn:  # dlcore's BatchNorm already agrees across devices; a foreign layer may not
      batch_stats = parallel.mean(batch_stats)
    metrics = reduce_metrics({"loss": loss, **metrics})
    new_state = state.apply_gradients(grads=grads)
    if has_bn:
      new_state = new_state.replace(batch_stats=batch_stats)
    if scale is not None:  # a skipped step keeps the old values; the step counter advances
      kept = precision.select(apply, (new_state.params, new_state.opt_state,
                                      new_state.batch_stats),
                              (state.params, state.opt_state, state.batch_stats))
      new_state = new_state.replace(params=kept[0], opt_state=kept[1], batch_stats=kept[2],
                                    dynamic_scale=scale)
      metrics = precision.step_metrics(metrics, state.dynamic_scale, apply)
    return new_state, metrics

  return learning_streams(on_axis(step, axis_name), rng_streams)


def chunked(fn, x: jax.Array, chunk: int | None):
  """`fn(x)` computed `chunk` rows at a time (`lax.map` over the whole chunks, then the rest)
  and joined along the batch axis; None: in one call. For a per-example function (inference)
  only the layout changes; whether the numbers stay bit for bit depends on the kernels XLA
  picks for the smaller batch, so a caller tests its model at its chunk (LeNet's patch
  convolution at batch 1000: the chunk of 100 gives the same bits, 4x faster because a chunk's
  patches stay in cache; a chunk of 50 changes the last bit of the loss)."""
  if chunk is not None and chunk < 1:
    raise ValueError(f"chunked: chunk must be a positive number of examples, got {chunk}")
  b = x.shape[0]
  if chunk is None or chunk >= b:
    return fn(x)
  n = b // chunk
  parts = [jax.tree.map(lambda o: o.reshape(n * chunk, *o.shape[2:]),
                        jax.lax.map(fn, x[:n * chunk].reshape(n, chunk, *x.shape[1:])))]
  if b > n * chunk:
    parts.append(fn(x[n * chunk:]))
  return parts[0] if len(parts) == 1 else jax.tree.map(lambda *o: jnp.concatenate(o), *parts)


def make_eval_step(metrics_fn: Callable[[jax.Array, dict], dict], *,
                   axis_name: str | None = None, preprocess=None, chunk: int | None = None):
  """`eval(state, batch) -> metrics`: forward in inference mode (running BN statistics).

  A metric named "count" (examples in the batch) makes `fit` weight the batches by it, so
  a smaller last batch does not skew the epoch's mean. `chunk`: the forward runs that many
  examples at a time (`chunked`), the metrics over the whole batch as before."""

  def evaluate(state: TrainState, batch: dict):
    out = chunked(lambda x: state.apply_fn(variables_of(state), x, train=False),
                  _inputs(batch, preprocess), chunk)
    return reduce_metrics(metrics_fn(precision.to_float32(out), batch))

  return on_axis(evaluate, axis_name)


def repeat_step(step, num_steps: int):
  """Fuses `num_steps` steps on the same batch into one call (`lax.scan`).

  For full-batch training (the planar and two-layer seeds) this removes the per-step Python
  and dispatch cost; metrics come back stacked along a leading axis of `num_steps`."""

  def fused(state, batch):
    return jax.lax.scan(lambda s, _: step(s, batch), state, None, length=num_steps)

  return fused


@flax.struct.dataclass
class Gathered:
  """Batches to gather inside a compiled loop: step i's batch is `arrays` at the examples
  `idx[i]` (`idx`: (steps, batch) integer indices; `arrays`: a dict of arrays on the device).
  The gathered batch holds the same values as the host's `{k: v[idx[i]]}`. (`members.Indexed`
  is the same idea along a members axis.)"""
  idx: jax.Array
  arrays: dict

  def batch(self, i) -> dict:
    return jax.tree.map(lambda a: a[i], self.arrays)


def scan_steps(step):
  """Fuses one step per slice of a stacked batch (leading axis = steps) into one call; or,
  given a `Gathered`, one step per row of its indices, each batch gathered inside the loop."""

  def fused(state, batches):
    if isinstance(batches, Gathered):
      return jax.lax.scan(lambda s, i: step(s, batches.batch(i)), state, batches.idx)
    return jax.lax.scan(step, state, batches)

  return fused


def mean_metrics(metrics: dict) -> dict:
  """Averages stacked metrics (from a fused call) to scalars."""
  return jax.tree.map(lambda m: jnp.mean(m), metrics)


def fused_epoch(step):
  """One in-order epoch in one call: `scan` over the full batches, then the partial one.

  Takes the batch layout of `dlcore.data.stacked_epoch`: {"full": stacked (k, B, ...),
  "rest": (r, ...) or None}. Metrics are averaged over the epoch's steps."""

  def fused(state, epoch_batches):
    state, metrics = jax.lax.scan(step, state, epoch_batches["full"])
    k = jax.tree.leaves(epoch_batches["full"])[0].shape[0]
    metrics = mean_metrics(metrics)
    if epoch_batches.get("rest") is not None:
      state, last = step(state, epoch_batches["rest"])
      metrics = jax.tree.map(lambda m, l: (m * k + l) / (k + 1), metrics, last)
    return state, metrics

  return fused
