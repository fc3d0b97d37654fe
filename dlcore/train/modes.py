"""One switch for how a step runs: eager, python, jit, pmap or sharded.

    runner = Runner("sharded")
    step = runner.compile(make_train_step(loss_fn))
    state = runner.put_state(state)
    state, metrics = step(state, runner.put_batch(batch))
    host_state = runner.get_state(state)

Every mode computes the same step on the same examples: a model built with
`models.build(name)` needs no axis name (see `dlcore.parallel`).

- eager:   the step under `jax.disable_jit()`: every primitive dispatched one by one.
- python:  the step called without jit (JAX still compiles each primitive); benchmarks only.
- jit:     `jax.jit`, with the incoming state donated (its buffers are reused).
- pmap:    `jax.pmap` over `devices` local devices; replicated state, the batch split along
           its first axis; the step is traced inside `parallel.data_axis_context`, so batch
           statistics, gradients and batch-shaped random draws are the whole batch's.
           Each call waits for its result before returning: with several pmap calls in flight
           the CPU all-reduce can deadlock (DESIGN.md), and waiting costs little.
- sharded: one global program, `jax.jit` over a 1-D device `Mesh`: state replicated, batch
           sharded on its first axis with `NamedSharding`; XLA inserts the reductions. With
           several processes (`dlcore.distributed`) the mesh spans every process's devices and
           each process places only its own slice of each global batch. On several CPU host
           devices each call waits, as pmap's.

A batch that does not divide over the devices (an epoch's last, partial batch) is not
dropped and not padded: it runs whole, with the replicated state, as jit runs it (sharded:
replicated on every device; pmap: one device), so every mode trains on the same examples.
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field

import jax
import numpy as np
from flax import jax_utils
from jax.sharding import Mesh, NamedSharding
from jax.sharding import PartitionSpec as P

from dlcore.train.steps import on_axis

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


class _Whole:
  """A batch that does not divide over the devices: it runs whole (see the module doc)."""

  def __init__(self, batch):
    self.batch = batch


@dataclass
class Runner:
  mode: str = "jit"
  # pmap / sharded: how many devices of each process (default: all). After construction,
  # the number of devices a step runs on (over all processes).
  devices: int | None = None
  donate: bool = True
  _mesh: Mesh | None = field(default=None, init=False, repr=False)

  def __post_init__(self):
    if self.mode not in MODES:
      raise ValueError(f"unknown mode {self.mode!r}; choose one of {', '.join(MODES)}")
    # With several processes only `sharded` spans them; the other modes run on this
    # process's devices alone (e.g. a scorer each process evaluates by itself).
    procs = jax.process_count() if self.mode == "sharded" else 1
    if self.mode in ("pmap", "sharded"):
      available = jax.local_device_count()
      n = self.devices or available
      if n > available:
        raise ValueError(
            f"mode {self.mode!r} asked for {n} devices but only {available} exist; on CPU "
            f"pass --devices {n} (sets jax_num_cpu_devices before JAX starts)")
      self.devices = n * procs
      if self.mode == "sharded":  # process by process, so each one's slice is contiguous
        devs = sorted(jax.devices(), key=lambda d: (d.process_index, d.id))
        mine = [[d for d in devs if d.process_index == p][:n] for p in range(procs)]
        self._mesh = Mesh(np.array(sum(mine, [])), ("batch",))
    else:
      self.devices = 1

  @property
  def axis_name(self) -> str | None:
    """The pmap axis; steps no longer need it (kept for code that passes it on)."""
    return "batch" if self.mode == "pmap" else None

  @property
  def multiprocess(self) -> bool:
    """Whether the mesh spans several processes."""
    return self._mesh is not None and jax.process_count() > 1

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
      mapped = jax.pmap(on_axis(fn, "batch"), axis_name="batch", donate_argnums=donate,
                        devices=jax.local_devices()[:self.devices])
      if jax.default_backend() == "cpu":  # host devices' all-reduce: one call in flight
        mapped = _waiting(fn, mapped)
      whole = jax.jit(fn)

      @functools.wraps(fn)
      def call(state, batch):
        if not isinstance(batch, _Whole):
          return mapped(state, batch)
        state, out = whole(self.get_state(state), batch.batch)
        return self.put_state(state), jax.tree.map(lambda x: x[None], out)

      return call
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
    return jax.jit(fn)  # on this process's default device; every process evaluates alike

  # ---- placing data ----------------------------------------------------------------------
  def put_state(self, state):
    if self.mode == "pmap":
      return jax_utils.replicate(state, jax.local_devices()[:self.devices])
    if self.mode == "sharded":
      return jax.tree.map(lambda x: self._place(x, P()), state)
    return state

  def put_batch(self, batch, *, stacked: bool = False):
    """Splits a global batch (the same on every process) over the devices. `stacked`: the
    batch has a leading steps axis (fused steps), and the split is on the axis after it. A
    batch that does not divide runs whole (see the module doc)."""
    if self.mode not in ("pmap", "sharded"):
      return batch
    n = self.devices
    axis = 1 if stacked else 0
    sizes = {np.shape(x)[axis] for x in jax.tree.leaves(batch)}
    if any(size % n for size in sizes):
      if self.mode == "pmap":
        return _Whole(batch)
      return jax.tree.map(lambda x: self._place(x, P()), batch)
    if self.mode == "sharded":
      spec = P(None, "batch") if stacked else P("batch")
      return jax.tree.map(lambda x: self._place(x, spec), batch)

    def split(x):
      x = np.asarray(x)
      shape = x.shape[:axis] + (n, x.shape[axis] // n) + x.shape[axis + 1:]
      x = x.reshape(shape)
      return np.moveaxis(x, axis, 0) if stacked else x

    return jax.tree.map(split, batch)

  def get_state(self, state):
    """The state as one host-usable copy (unreplicated under pmap; host arrays when the
    mesh spans several processes, so each process can evaluate it on its own)."""
    if self.mode == "pmap":
      return jax_utils.unreplicate(state)
    if self.mode == "sharded" and self.multiprocess:
      return jax.device_get(state)
    return state

  def get_output(self, out):
    """Step outputs (metrics) without the device axis; the reductions made the copies
    equal."""
    if self.mode == "pmap":
      return jax.tree.map(lambda x: x[0], out)
    if self.multiprocess:
      return jax.device_get(out)
    return out

  def _replicated(self):
    return NamedSharding(self._mesh, P())

  def _place(self, x, spec):
    """Host or device array `x` (the global value, the same on every process) as a global
    array laid out by `spec`; each process copies only the slices its devices hold."""
    sharding = NamedSharding(self._mesh, spec)
    if isinstance(x, jax.Array) and not self.multiprocess:
      return jax.device_put(x, sharding)
    x = np.asarray(x)
    return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


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
