"""Members: N independent runs of one model (seeds seed..seed+N-1) trained as one program.

    seeds = member_seeds(0, 4)
    state = create_members(model, tx, x[:2], seeds)            # stacked: leading axis 4
    runner = MemberRunner(Runner("jit"), len(seeds))           # or Runner("sharded")
    step = runner.compile(over_members(make_train_step(loss_fn)))
    state, history = fit(state, step, lambda e: member_batches(data, 64, seeds, e),
                         runner=runner, ...)

Member i computes what a single run with seed `seeds[i]` computes: its own initial state
(`create_train_state(..., seed=seeds[i])`), its own dropout and sampling keys (they come from
its state), and its own data order (`member_batches` draws each member's permutation as
`dlcore.data.batches` does for that seed). Only the indices travel per step: the data is put
on the device once and each member's batch is gathered there (`Indexed`).

`over_members` vmaps any step over the members axis, so fused steps (`repeat_step`,
`fused_epoch`) and float16's loss scaling work unchanged; a batch is one of
- `Indexed(data, idx)`: member m trains on `data[idx[m]]` (shuffled batches);
- `PerMember(batch)`: member m trains on `batch[m]` (batches made on the host per member);
- anything else: the same batch for every member (full-batch or in-order training).

`MemberRunner` wraps a `Runner`: under `sharded` the members axis is split over the devices
(and processes) when their number divides it, otherwise every device runs every member;
eager, python and jit run them on one device. `pmap` is refused (use `sharded`).
`fit` sees the member runner and reports per-member metrics (see `fit`).
"""
from __future__ import annotations

import functools
from typing import Any, Iterator, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from dlcore import data as dldata
from dlcore.train.modes import Runner, _waiting
from dlcore.train.state import TrainState, create_train_state, stack_states, unstack_state


class Indexed(NamedTuple):
  """Member m's batch is `data[idx[m]]` (gathered on the device); `data`: dict of arrays
  with the examples on the leading axis, `idx`: (members, batch) integer indices."""
  data: Any
  idx: Any


class PerMember(NamedTuple):
  """Member m's batch is `batch[m]`: every leaf has a leading members axis."""
  batch: Any


def per_member(batches) -> PerMember:
  """Each member's own host batch (trees of equal shapes), stacked as one `PerMember`."""
  return PerMember(jax.tree.map(lambda *b: np.stack(b), *batches))


def member_seeds(seed: int, n: int) -> list[int]:
  """The seeds of `n` members starting at `seed`: member i is the run `--seed seed+i`."""
  return list(range(seed, seed + n))


def create_members(model, tx, example_x, seeds: Sequence[int], init_args: tuple = (),
                   loss_scale=None, hyperparams: Sequence[dict] | None = None) -> TrainState:
  """One `create_train_state` per seed, stacked along a leading members axis.
  `hyperparams` (one dict per member, `tx` from `optim.injected`): member i's optimizer runs
  with `hyperparams[i]` (a sweep's point), the other hyperparameters as `tx` has them."""
  if hyperparams is not None and len(hyperparams) != len(seeds):
    raise ValueError(f"{len(hyperparams)} hyperparameter sets for {len(seeds)} members")
  states = [create_train_state(model, tx, example_x, s, init_args, loss_scale) for s in seeds]
  if hyperparams is not None:
    from dlcore import optim
    states = [s.replace(opt_state=optim.set_hyperparams(s.opt_state, h))
              for s, h in zip(states, hyperparams)]
  return stack_states(states)


def num_members(state) -> int:
  """The size of a stacked state's members axis."""
  return int(np.shape(state.step)[0])


def member(state, i: int):
  """Member `i` of a stacked state (or of any tree with a leading members axis)."""
  return unstack_state(state, i)


def over_members(step):
  """`step(state, batch) -> (state, out)` for one member, as a step over stacked states
  (`jax.vmap`); see the module doc for the batch forms. Outputs gain a leading members axis."""

  def gathered(state, idx, data):
    return step(state, jax.tree.map(lambda a: jnp.take(a, idx, axis=0), data))

  @functools.wraps(step)
  def stepped(state, batch):
    if isinstance(batch, Indexed):
      return jax.vmap(gathered, in_axes=(0, 0, None))(state, batch.idx, batch.data)
    if isinstance(batch, PerMember):
      return jax.vmap(step)(state, batch.batch)
    return jax.vmap(step, in_axes=(0, None))(state, batch)

  stepped.single = step  # for `MemberRunner.compile` (member after member, `unrolled`)
  return stepped


def _member_batch(batch, i: int):
  """Member `i`'s batch (`i` an int: a static slice)."""
  if isinstance(batch, Indexed):
    return jax.tree.map(lambda a: jnp.take(a, batch.idx[i], axis=0), batch.data)
  if isinstance(batch, PerMember):
    return jax.tree.map(lambda a: a[i], batch.batch)
  return batch


def unrolled(step, n: int):
  """`over_members(step)` as `n` copies of the single-member step in one program, member
  after member, instead of one vmapped step: for convolutions on the CPU, where a vmapped
  convolution with a kernel per member becomes a grouped convolution that XLA's CPU backend
  runs about twice as slowly as the members one by one (CNN, 8 members: 450 vs 229 ms per
  step); it compiles n copies (7.7 s instead of 2.1 s there). Each member computes its single
  step's own operations."""

  @functools.wraps(step)
  def stepped(state, batch):
    outs = [step(jax.tree.map(lambda a: a[i], state), _member_batch(batch, i))
            for i in range(n)]
    return jax.tree.map(lambda *a: jnp.stack(a), *outs)

  return stepped


UNROLL_MAX = 16  # members unrolled at most: compilation grows with each copy


def _has_convolution(step, state, batch) -> bool:
  """Whether one member's step convolves (traced abstractly, nothing runs)."""
  spec = lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype)  # noqa: E731
  one = jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[1:], a.dtype), state)
  b = jax.eval_shape(lambda bb: _member_batch(bb, 0), jax.tree.map(spec, batch))
  return "conv_general_dilated" in str(jax.make_jaxpr(step)(one, b))


def _members_loop_for_convolutions(stepped, n: int):
  """`stepped` (from `over_members`), unrolled when its member step convolves (decided when
  the program is traced)."""

  @functools.wraps(stepped)
  def chosen(state, batch):
    if _has_convolution(stepped.single, state, batch):
      return unrolled(stepped.single, n)(state, batch)
    return stepped(state, batch)

  return chosen


def member_batches(data, batch_size: int, seeds: Sequence[int], epoch: int, *,
                   shuffle: bool = True, drop_remainder: bool = False) -> Iterator[Indexed]:
  """Epoch `epoch` of every member as `Indexed` batches: member m's indices are those
  `dlcore.data.batches(..., seed=seeds[m], epoch=epoch)` takes. `data` (a dict of arrays)
  should already be on the device (`jax.device_put`), so only indices are sent per step."""
  n = len(next(iter(data.values())))
  orders = [list(dldata.batch_indices(n, batch_size, shuffle=shuffle, seed=s, epoch=epoch,
                                      drop_remainder=drop_remainder)) for s in seeds]
  for parts in zip(*orders):
    yield Indexed(data, np.stack(parts).astype(np.int32))


class MemberRunner:
  """A `Runner` for stacked member states (see the module doc). Has the Runner's interface
  (`compile`, `compile_eval`, `put_state`, `put_batch`, `get_state`, `get_output`)."""

  def __init__(self, runner: Runner, members: int):
    if runner.mode == "pmap":
      raise ValueError(f"{members} members (--seeds {members}) cannot run under --mode pmap; "
                       "use --mode sharded, which splits the members over the devices")
    self.runner, self.members = runner, members
    self.mode, self.devices = runner.mode, runner.devices
    mesh = runner._mesh
    # Split the members over the devices when they divide; otherwise replicate them.
    self.split = mesh is not None and members % mesh.devices.size == 0
    self._placed: dict = {}
    self._sharding = (None if mesh is None
                      else NamedSharding(mesh, P("batch") if self.split else P()))

  def __repr__(self):
    return f"MemberRunner({self.runner!r}, members={self.members})"

  @property
  def multiprocess(self) -> bool:
    return self.runner.multiprocess

  def compile(self, fn, *, donate_state: bool | None = None):
    if self.mode != "sharded":
      if (self.mode == "jit" and hasattr(fn, "single") and self.members <= UNROLL_MAX
          and jax.default_backend() == "cpu"):  # convolutions: member after member
        fn = _members_loop_for_convolutions(fn, self.members)
      return self.runner.compile(fn, donate_state=donate_state)
    donate = (0,) if (self.runner.donate if donate_state is None else donate_state) else ()
    # Every output (state and metrics) has the members axis first.
    jfn = jax.jit(fn, out_shardings=self._sharding, donate_argnums=donate)
    if jax.default_backend() != "cpu" or self.runner._mesh.devices.size == 1:
      return jfn
    return _waiting(fn, jfn)  # host devices: one multi-device call in flight (see modes)

  def compile_eval(self, fn):
    """For one member's host state (`member(state, i)`), as `Runner.compile_eval`."""
    return self.runner.compile_eval(fn)

  def put_state(self, state):
    if self._sharding is None:
      return state
    return jax.tree.map(lambda x: self._place(x, self._sharding.spec), state)

  def put_batch(self, batch, *, stacked: bool = False):
    if self._sharding is None:
      return batch
    spec = self._sharding.spec
    if isinstance(batch, Indexed):
      key = id(batch.data)  # the data set is placed once, not at every step
      if key not in self._placed:
        self._placed = {key: (batch.data, jax.tree.map(lambda x: self._place(x, P()),
                                                       batch.data))}
      return Indexed(self._placed[key][1], self._place(batch.idx, spec))
    if isinstance(batch, PerMember):
      return PerMember(jax.tree.map(lambda x: self._place(x, spec), batch.batch))
    return jax.tree.map(lambda x: self._place(x, P()), batch)

  def get_state(self, state):
    """The stacked state, usable by this process alone (gathered from every process)."""
    return self._gather(state)

  def get_output(self, out):
    return self._gather(out)

  def _gather(self, tree):
    if not self.multiprocess:
      return tree
    if self.split:
      from jax.experimental import multihost_utils
      return multihost_utils.process_allgather(tree, tiled=True)
    return jax.device_get(tree)

  def _place(self, x, spec):
    return self.runner._place(x, spec)


def member_view(history: list[dict], i: int) -> list[dict]:
  """`fit`'s history of a member run as the single run of member `i` would have written it:
  "train" and "eval" hold member i's values (from the record's "per_seed")."""
  out = []
  for rec in history:
    per = rec.get("per_seed")
    if per is None:
      out.append(rec)
      continue
    view = {k: v for k, v in rec.items() if k != "per_seed"}
    for split, values in per.items():
      view[split] = {k: v[i] for k, v in values.items()}
    out.append(view)
  return out


def split_means(rows: list[dict], n: int) -> list[list[dict]]:
  """Rows of member step outputs (leading members axis) as one list of rows per member."""
  from dlcore.train.loop import fetch
  rows = fetch(rows)
  return [[jax.tree.map(lambda x: np.asarray(x)[i], r) for r in rows] for i in range(n)]


def combine(per_member: list[dict]) -> tuple[dict, dict]:
  """Member metric dicts -> (mean over members, {metric: [member values]})."""
  keys = [k for k in per_member[0] if np.ndim(per_member[0][k]) == 0]
  per = {k: [float(m[k]) for m in per_member] for k in keys}
  return {k: float(np.mean(v)) for k, v in per.items()}, per
