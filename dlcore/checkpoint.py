"""Orbax checkpoints behind a few functions. Arrays only: nothing is pickled, and loading
never executes code from the files.

- `Checkpointer`: training state (params, opt_state, batch_stats, step, rng) every N steps,
  keeping K, restored into the structure of a freshly built state.
- `save_model` / `load_model`: the seed's "save the whole model" without pickle: parameters
  plus `model.json` (registered model name, constructor arguments, input shape), so
  `load_model(path)` rebuilds the module through the registry.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dlcore.models import registry

FORMAT_VERSION = 1


class CheckpointError(ValueError):
  """A checkpoint that cannot be restored into the requested structure."""


def _abstract(tree):
  def leaf(x):
    x = x if hasattr(x, "dtype") else np.asarray(x)
    return jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None))

  return jax.tree.map(leaf, tree)


def _leaves_by_path(tree) -> dict[str, tuple]:
  flat, _ = jax.tree_util.tree_flatten_with_path(tree)
  out = {}
  for path, leaf in flat:
    key = "/".join(str(getattr(k, "key", getattr(k, "idx", getattr(k, "name", k))))
                   for k in path)
    out[key] = tuple(getattr(leaf, "shape", ()))
  return out


def _check_compatible(saved_meta, target, where: str) -> None:
  """Names the keys and shapes that differ between a checkpoint and the target."""
  saved, want = _leaves_by_path(saved_meta), _leaves_by_path(target)
  problems = [f"missing in checkpoint: {k}" for k in want if k not in saved]
  problems += [f"unexpected in checkpoint: {k}" for k in saved if k not in want]
  problems += [f"shape of {k}: checkpoint {saved[k]} vs model {want[k]}"
               for k in want if k in saved and saved[k] != want[k]]
  if problems:
    shown = "\n  ".join(problems[:8]) + ("\n  ..." if len(problems) > 8 else "")
    raise CheckpointError(
        f"checkpoint at {where} does not match this model/optimizer:\n  {shown}\n"
        "Use the same model and optimizer settings as the saved run, or a fresh --workdir.")


class Checkpointer:
  """Saves and restores a training-state pytree with an Orbax `CheckpointManager`.

  Saving is asynchronous; `close()` (or the context manager) waits until the last save is
  finalised, which must happen before the process exits.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, save_every_steps: int = 1):
    self.directory = os.path.abspath(directory)  # Orbax needs absolute paths
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             save_interval_steps=max(1, save_every_steps),
                                             create=True),
        # Declared up front so a fresh manager can read metadata before any save.
        item_handlers=ocp.StandardCheckpointHandler())

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    return self.manager.should_save(step)

  def save(self, step: int, state, *, force: bool = False) -> bool:
    """Saves the (unreplicated) state at `step` if the interval says so, or if `force`."""
    return self.manager.save(int(step), args=ocp.args.StandardSave(state), force=force)

  def restore(self, target, step: int | None = None):
    """Restores into the structure, shapes and dtypes of `target` (a fresh state)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    _check_compatible(self.manager.item_metadata(step).tree, target,
                      f"{self.directory}/{step}")
    return self.manager.restore(step, args=ocp.args.StandardRestore(_abstract(target)))

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def save_model(path: str, name: str, variables: dict, *, input_shape: tuple[int, ...],
               kwargs: dict[str, Any] | None = None) -> str:
  """Saves a registered model's variables plus what rebuilds it (name, kwargs, input shape)."""
  path = os.path.abspath(path)
  kwargs = dict(kwargs or {})
  registry.build(name, **kwargs)  # fail now, not at load time, if it cannot be rebuilt
  os.makedirs(path, exist_ok=True)
  meta = {"format": FORMAT_VERSION, "name": name, "kwargs": kwargs,
          "input_shape": list(input_shape)}
  with open(os.path.join(path, "model.json"), "w") as f:
    json.dump(meta, f, indent=2)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(path, "variables"), variables, force=True)
  return path


def load_model(path: str):
  """Returns `(model, variables)` saved by `save_model`; the caller declares no class."""
  path = os.path.abspath(path)
  meta_path = os.path.join(path, "model.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{meta_path} not found: {path} was not written by save_model")
  with open(meta_path) as f:
    meta = json.load(f)
  if meta.get("format") != FORMAT_VERSION:
    raise CheckpointError(f"{meta_path}: format {meta.get('format')!r}, expected "
                          f"{FORMAT_VERSION}")
  model = registry.build(meta["name"], **meta["kwargs"])
  x = jnp.zeros((1, *meta["input_shape"]), jnp.float32)
  target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  with ocp.StandardCheckpointer() as ckptr:
    vpath = os.path.join(path, "variables")
    _check_compatible(ckptr.metadata(vpath).item_metadata.tree, target, vpath)
    variables = ckptr.restore(vpath, target)
  return model, variables


def save_params(path: str, variables: dict) -> str:
  """The seed's second way: parameters only (`state_dict`); loading needs the model."""
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(path, variables, force=True)
  return path


def load_params(path: str, target: dict) -> dict:
  """Restores variables saved by `save_params` into the structure of `target`
  (e.g. `model.init(...)` of the caller's freshly declared model)."""
  path = os.path.abspath(path)
  with ocp.StandardCheckpointer() as ckptr:
    _check_compatible(ckptr.metadata(path).item_metadata.tree, target, path)
    return ckptr.restore(path, _abstract(target))
