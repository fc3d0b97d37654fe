"""Mixed precision: a run's precision as one name, and dynamic loss scaling for float16.

    dtype = precision.compute_dtype("bfloat16")               # jnp.bfloat16
    model = models.build("vae", dtype=dtype)                 # params stay float32
    state = create_train_state(model, tx, x, seed, loss_scale=precision.loss_scale("float16"))

Precision is the model's and the run's, never the device's (as in Flax's examples: every
module has `dtype` for computation and `param_dtype` for storage). Master weights,
optimizer state and checkpoints stay float32; the step factories cast the model's outputs
up to float32 before the loss (`to_float32`), so losses, softmax and the VAE's BCE and KL
are float32 whatever the computation dtype.

float16 has too narrow a range for gradients: its steps multiply the loss by a scale before
differentiation and divide the gradients by it afterwards (Flax's `DynamicScale`, the
algorithm of PyTorch's GradScaler). A step whose gradients overflow is skipped (parameters,
optimizer state and batch statistics unchanged; the step counter advances) and the scale is
halved; after `growth_interval` finite steps it doubles. Skipped steps show in the step's
metrics ("skipped", "loss_scale") and are counted in `LossScale.skipped`. The scale never
drops below `FLOOR` (1: no scaling at all); a step that overflows there is applied as it is,
so a run that float16 cannot represent ends in the NaN guard like any diverging run.
bfloat16 has float32's range and needs no scaling.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax.training.dynamic_scale import DynamicScale

PRECISIONS = ("float32", "bfloat16", "float16")
FLOOR = 1.0  # the smallest loss scale; below 1 scaling would only lose range
INITIAL_SCALE = 2.0 ** 15  # PyTorch GradScaler's 2**16 halves at once on most first steps
GROWTH_INTERVAL = 2000  # finite steps before the scale doubles (GradScaler's default)


def check(precision: str) -> str:
  if precision not in PRECISIONS:
    raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
  return precision


def compute_dtype(precision: str):
  """The computation dtype of `precision` (a name in PRECISIONS), for `models.build`."""
  return jnp.dtype(check(precision)).type


class LossScale(DynamicScale):
  """Flax's `DynamicScale` with a count of the steps it skipped (kept in checkpoints)."""
  skipped: jax.Array = 0


def loss_scale(precision: str) -> LossScale | None:
  """The loss scale a run of `precision` trains with: one for float16, None otherwise."""
  if check(precision) != "float16":
    return None
  return LossScale(growth_interval=GROWTH_INTERVAL, minimum_scale=FLOOR,
                   fin_steps=jnp.zeros((), jnp.int32),
                   scale=jnp.asarray(INITIAL_SCALE, jnp.float32),
                   skipped=jnp.zeros((), jnp.int32))


def to_float32(tree):
  """Floating leaves of lower precision cast up to float32 (a model's outputs before the
  loss); float32 and non-float leaves are returned as they are."""

  def up(x):
    if hasattr(x, "dtype") and jnp.issubdtype(x.dtype, jnp.floating) and \
        jnp.finfo(x.dtype).bits < 32:
      return x.astype(jnp.float32)
    return x

  return jax.tree.map(up, tree)


def scaled_value_and_grad(fn, scale: LossScale | None, axis_name: str | None):
  """`jax.value_and_grad(fn, has_aux=True)` with the gradients averaged over `axis_name`,
  under `scale` when there is one. Returns a function of params giving
  `(new_scale, apply, (loss, aux), grads)`: `apply` is False for a step to skip (None
  without a scale: every step applies)."""

  def run(params):
    if scale is None:
      (loss, aux), grads = jax.value_and_grad(fn, has_aux=True)(params)
      if axis_name is not None:
        grads = jax.lax.pmean(grads, axis_name)
      return None, None, (loss, aux), grads
    new, finite, (loss, aux), grads = scale.value_and_grad(fn, has_aux=True,
                                                           axis_name=axis_name)(params)
    skip = ~finite & (scale.scale > FLOOR)  # at the floor the step applies: the guard decides
    new = new.replace(skipped=scale.skipped + skip.astype(jnp.int32))
    return new, ~skip, (loss, aux), grads

  return run


def select(apply, new, old):
  """`new` where the step applies, `old` where it is skipped (leaf by leaf)."""
  if apply is None:
    return new
  return jax.tree.map(lambda a, b: jnp.where(apply, a, b), new, old)


def step_metrics(metrics: dict, scale: LossScale | None, apply) -> dict:
  """A step's metrics under loss scaling: those of a skipped step are zeroed and "skipped"
  (1.0 for a skipped step) and "loss_scale" are added, so that a plain mean over steps
  (fused or not) divided by 1 - mean("skipped") is the mean over the applied steps
  (`applied_means`). Without a scale, `metrics` unchanged."""
  if scale is None:
    return metrics
  keep = apply.astype(jnp.float32)
  out = {k: jnp.where(apply, v, jnp.zeros_like(v)) for k, v in metrics.items()}
  return out | {"skipped": 1.0 - keep, "loss_scale": scale.scale}


def applied_means(means: dict) -> dict:
  """Plain means of `step_metrics` rows -> means over the steps that were applied; in a
  window where every step was skipped the other metrics are NaN (no applied step measured
  them; `fit`'s guard knows such a window is not a divergence)."""
  if "skipped" not in means:
    return means
  frac = means["skipped"]
  out = {"skipped": frac, "loss_scale": means["loss_scale"]}
  return out | {k: v / (1.0 - frac) if frac < 1.0 else float("nan")
                for k, v in means.items() if k not in out}


def skipped_steps(state) -> int | None:
  """Steps skipped by float16 loss scaling so far (None when the run has no loss scale)."""
  scale = getattr(state, "dynamic_scale", None)
  if scale is None:
    return None
  return int(np.sum(jax.device_get(scale.skipped)))  # stacked members: all of them
