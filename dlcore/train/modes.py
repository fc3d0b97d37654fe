"""One switch for how a step runs: eager, python, jit, pmap or sharded.

    runner = Runner("pmap")
    step = runner.compile(make_train_step(loss_fn, axis_name=runner.axis_name))
    state = runner.put_state(state)
    state, metrics = step(state, runner.put_batch(batch))
    host_state = runner.get_state(state)

- eager:   the step under `jax.disable_jit()`: every primitive dispatched one by one.
- python:  the step called without jit (JAX still compiles each primitive); benchmarks only.
- jit:     `jax.jit`, with the incoming state donated (its buffers are reused).
- pmap:    `jax.pmap` over `devices` local devices; replicated state, the batch split along
           its first axis; the step must be built with `axis_name=runner.axis_name`.
           Each call waits for its result before returning: with several pmap calls in flight
           the CPU all-reduce can deadlock (DESIGN.md), and waiting costs little.
- sharded: `jax.jit` over a 1-D device `Mesh`: state replicated, batch sharded on its first
           axis with `NamedSharding`; XLA inserts the reductions, so the step is built with
           `axis_name=None`. On several CPU host devices each call waits, as pmap's.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import jax
import numpy as np
from flax import jax_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

MODES = ("eager", "python", "jit", "pmap", "sharded")


def set_host_devices(n: int) -> None:
  """Asks for `n` CPU devices; must run before JAX first touches a device."""
  if n and n > 1:
    try:
      jax.config.update("jax_num_cpu_devices", n)
    except RuntimeError as e:  # backend already initialised
      if len(jax.devices()) < n:
        raise RuntimeError(f"cannot create {n} host devices now: {e}. Call "
                           "set_host_devices before any JAX computation.") from None


@dataclass
class Runner:
  mode: str = "jit"
  devices: int | None = None  # pmap / sharded: how many local devices (default: all)
  donate: bool = True
  _mesh: Mesh | None = field(default=None, init=False, repr=False)

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
    if self.mode in ("pmap", "sharded"):
      available = jax.local_device_count()
      n = self.devices or available
      if n > available:
        raise ValueError(
            f"mode {self.mode!r} asked for {n} devices but only {available} exist; on CPU "
            f"pass --devices {n} (sets jax_num_cpu_devices before JAX starts)")
      self.devices = n
      if self.mode == "sharded":
        self._mesh = Mesh(np.array(jax.local_devices()[:n]), ("batch",))
    else:
      self.devices = 1

  @property
  def axis_name(self) -> str | None:
    """The name the step must reduce over (pmap only)."""
    return "batch" if self.mode == "pmap" else None

  # ---- compiling -------------------------------------------------------------------------
  def compile(self, fn, *, donate_state: bool | None = None):
    """Wraps `fn(state, batch) -> (state, out)` for this mode."""
    donate = (0,) if (self.donate if donate_state is None else donate_state) else ()
    if self.mode == "eager":
      return _eager(fn)
    if self.mode == "python":
      return fn
    if self.mode == "jit":
      return jax.jit(fn, donate_argnums=donate)
    if self.mode == "pmap":
      return _waiting(fn, jax.pmap(fn, axis_name=self.axis_name, donate_argnums=donate,
                                   devices=jax.local_devices()[:self.devices]))
    # Inputs arrive committed (put_state / put_batch), and jit follows their shardings.
    jfn = jax.jit(fn, out_shardings=self._replicated(), donate_argnums=donate)
    if jax.default_backend() != "cpu" or self._mesh.devices.size == 1:
      return jfn
    # Host devices: the sharded step's all-reduce deadlocks like pmap's with several
    # calls in flight (seen in the 4-host-device benchmark), so wait here too.
    return _waiting(fn, jfn)

  def compile_eval(self, fn):
    """Wraps `fn(state, batch[, key]) -> metrics` (no state out) for a host state (one copy,
    as `get_state` returns and `fit` passes to evaluators): it runs on one device under jit
    (eager under eager); batches of any size are accepted."""
    if self.mode == "eager":
      return _eager(fn)
    if self.mode == "python":
      return fn
    return jax.jit(fn)

  # ---- placing data ----------------------------------------------------------------------
  def put_state(self, state):
    if self.mode == "pmap":
      return jax_utils.replicate(state, jax.local_devices()[:self.devices])
    if self.mode == "sharded":
      return jax.device_put(state, self._replicated())
    return state

  def put_batch(self, batch, *, stacked: bool = False):
    """Splits a global batch over devices. `stacked`: batch has a leading steps axis
    (for fused steps), and the split happens on the axis after it."""
    if self.mode not in ("pmap", "sharded"):
      return batch
    n = self.devices
    axis = 1 if stacked else 0

    def split(x):
      x = np.asarray(x)
      if x.shape[axis] % n:
        raise ValueError(
            f"batch of {x.shape[axis]} examples does not divide over {n} devices in mode "
            f"{self.mode!r}; choose a batch size that is a multiple of {n} (or drop the "
            "remainder: dlcore.data.batches(..., drop_remainder=True))")
      if self.mode == "sharded":
        return x
      shape = x.shape[:axis] + (n, x.shape[axis] // n) + x.shape[axis + 1:]
      x = x.reshape(shape)
      return np.moveaxis(x, axis, 0) if stacked else x

    out = jax.tree.map(split, batch)
    if self.mode == "sharded":
      spec = P(None, "batch") if stacked else P("batch")
      out = jax.device_put(out, NamedSharding(self._mesh, spec))
    return out

  def get_state(self, state):
    """The state as one host-usable copy (unreplicated under pmap)."""
    if self.mode == "pmap":
      return jax_utils.unreplicate(state)
    return state

  def get_output(self, out):
    """Step outputs (metrics) without the device axis; pmean made the copies equal."""
    if self.mode == "pmap":
      return jax.tree.map(lambda x: x[0], out)
    return out

  def _replicated(self):
    return NamedSharding(self._mesh, P())


def _waiting(fn, compiled):
  """`compiled` (a compiled `fn`), returning only once its result is ready: several
  multi-device calls in flight can deadlock the CPU all-reduce (DESIGN.md)."""
  @functools.wraps(fn)
  def call(*args):
    return jax.block_until_ready(compiled(*args))

  return call


def _eager(fn):
  @functools.wraps(fn)
  def call(*args):
    with jax.disable_jit():
      return fn(*args)

  return call
