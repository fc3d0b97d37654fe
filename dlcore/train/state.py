"""Training state: parameters, optimizer state, batch statistics and the run's PRNG key."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax
from flax.training import train_state


class TrainState(train_state.TrainState):
  """Flax's TrainState plus `batch_stats` (None for models without BatchNorm), `rng` and
  `dynamic_scale` (float16's loss scale, `dlcore.precision.LossScale`; None otherwise).

  `rng` is a raw uint32 key that never changes: each step draws from
  `fold_in(rng, step)`, so a resumed run sees the same random numbers as an uninterrupted one.
  """
  batch_stats: Any = None
  rng: jax.Array | None = None
  dynamic_scale: Any = None


# Compiler options for a program that runs once (an init): LLVM's level 1 compiles it in
# about half the time of the default, to the same values (checked on every registered model
# but AlexNet on 2026-12-02, four of them in tests/test_models.py; level 0 changes the last
# bits of some).
RUN_ONCE = {"xla_backend_optimization_level": 1}


def create_train_state(model: nn.Module, tx: optax.GradientTransformation, example_x,
                       seed: int = 0, init_args: tuple = (), loss_scale=None) -> TrainState:
  """Initialises `model` on `example_x` (a batch; `init_args` are further positional inputs,
  e.g. a conditional GAN's labels) and wraps it with optimizer `tx`. `loss_scale`
  (`dlcore.precision.loss_scale("float16")`) makes the step factories scale the loss."""
  init_key, run_key = _keys(seed)
  # jit keeps the init of large models (AlexNet) from running op by op.
  variables = jax.jit(lambda k, x, args: model.init({"params": k, "dropout": k}, x, *args,
                                                    train=False), compiler_options=RUN_ONCE)(
      init_key, jnp.asarray(example_x), tuple(jnp.asarray(a) for a in init_args))
  # The optimizer's init as one program: op by op it compiles one per parameter shape (its
  # zeros), ~20-40 ms each; the same values (zeros and constants).
  once = optax.GradientTransformation(_init_once(tx), tx.update)
  state = TrainState.create(apply_fn=model.apply, params=variables["params"], tx=once,
                            batch_stats=variables.get("batch_stats"), rng=run_key,
                            dynamic_scale=loss_scale)
  # An array step (not Python's 0) keeps jit from tracing twice and Orbax from special cases.
  return state.replace(tx=tx, step=jnp.zeros((), jnp.int32))


def _init_once(tx: optax.GradientTransformation):
  """`tx.init` jitted; op by op where it cannot be traced (e.g. an injected factory that
  branches in Python on a hyperparameter: its error stays that of the first step)."""
  jitted = jax.jit(tx.init, compiler_options=RUN_ONCE)

  def init(params):
    try:
      return jitted(params)
    except jax.errors.ConcretizationTypeError:
      return tx.init(params)
  return init


def _split_key(seed) -> tuple:
  return tuple(jax.random.split(jax.random.PRNGKey(seed)))


_split_key_once = jax.jit(_split_key)


def _keys(seed) -> tuple:
  """`_split_key` as one program (three op by op); seeds outside int32 (which a jitted
  argument cannot hold) op by op, as before."""
  if isinstance(seed, int) and not -2**31 <= seed < 2**31:
    return _split_key(seed)
  return _split_key_once(seed)


def variables_of(state: TrainState) -> dict:
  """The `variables` dict that `model.apply` takes."""
  v = {"params": state.params}
  if state.batch_stats is not None:
    v["batch_stats"] = state.batch_stats
  return v


def stack_states(states: list[TrainState]) -> TrainState:
  """Stacks same-shaped states along a new leading axis, for `jax.vmap`-ed steps that train
  an ensemble (e.g. several seeds) in lockstep."""
  return jax.tree.map(lambda *xs: jnp.stack(xs), *states)


def unstack_state(state: TrainState, i: int) -> TrainState:
  """Member `i` of a stacked state."""
  return jax.tree.map(lambda x: x[i], state)
