"""Orbax checkpoints behind a few functions. Arrays only: nothing is pickled, and loading
never executes code from the files.

- `Checkpointer`: training state (params, opt_state, batch_stats, step, rng) every N steps,
  keeping K, restored into the structure of a freshly built state.
- `save_model` / `load_model`: the seed's "save the whole model" without pickle: parameters
  plus `model.json` (registered model name, constructor arguments, input shape), so
  `load_model(path)` rebuilds the module through the registry.
"""
from __future__ import annotations

import concurrent.futures
import hashlib
import json
import os
import shutil
import sys
import time
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from dlcore import distributed, files, preemption
from dlcore.models import registry

FORMAT_VERSION = 1
EXTRA = "dlcore_extra.json"
MARKER = "dlcore_checkpoints.json"  # this folder's steps carry manifests (required)


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


def _match_loss_scale(saved_meta, target):
  """A change of precision (`--allow-change precision`): a checkpoint with float16's loss
  scale restores into a state without one (the scale is dropped), and one without into a
  float16 state (which keeps its fresh scale). Returns (target to restore into, finish)."""
  if not hasattr(target, "dynamic_scale"):
    return target, lambda restored: restored
  saved = any(k.startswith("dynamic_scale/") for k in _leaves_by_path(saved_meta))
  if saved == (target.dynamic_scale is not None):
    return target, lambda restored: restored
  if saved:
    from dlcore import precision
    return (target.replace(dynamic_scale=precision.loss_scale("float16")),
            lambda restored: restored.replace(dynamic_scale=None))
  return (target.replace(dynamic_scale=None),
          lambda restored: restored.replace(dynamic_scale=target.dynamic_scale))


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


MANIFEST = "dlcore_manifest.json"


class CheckpointWriteError(CheckpointError):
  """A checkpoint could not be written (read-only folder, full disk, ...)."""


def _file_hashes(folder: str) -> dict[str, str]:
  out = {}
  for root, _, files in os.walk(folder):
    for name in files:
      if name == MANIFEST:
        continue
      path = os.path.join(root, name)
      h = hashlib.sha256()
      with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
          h.update(chunk)
      out[os.path.relpath(path, folder)] = h.hexdigest()
  return out


def verify_step(folder: str, *, manifest_required: bool = False) -> str | None:
  """None if the step folder matches its manifest, else what differs. A step without a
  manifest is incomplete (its save was cut short after Orbax finished and before the
  manifest was in place) when `manifest_required`; otherwise it predates manifests."""
  manifest = os.path.join(folder, MANIFEST)
  if not os.path.exists(manifest):
    return ("incomplete: the save was cut short before its manifest was written"
            if manifest_required else None)
  try:
    with open(manifest) as f:
      want = json.load(f)["sha256"]
  except (OSError, ValueError, KeyError) as e:
    return f"unreadable manifest ({e})"
  got = _file_hashes(folder)
  for name, digest in sorted(want.items()):
    if name not in got:
      return f"{name} is missing"
    if got[name] != digest:
      return f"{name} does not match its checksum"
  return None


class Checkpointer:
  """Saves and restores a training-state pytree with an Orbax `CheckpointManager`.

  Saves are synchronous by default, so a save that cannot be written fails at once
  (`CheckpointWriteError`, naming the path and the OS error) and earlier steps stay intact.
  With `background=True` (in a job of one process) `save` copies the state on its device
  and returns; one worker thread writes it (arrays, `extra`, manifest) while training goes
  on, and every other call (`save`, `wait`, `restore`, `latest_step`, ...) first waits for
  it and raises its error, so a failed write surfaces at the next save or at the end and the
  steps before it stay intact. Leaving the `with` block, or `close`, waits for the write (a
  write that failed while another error ends the block is reported in one line, and the
  other error propagates); a kill mid-write leaves a step without a manifest, which
  `restore` treats as incomplete and sets aside.
  Each step gets a manifest of its files' SHA-256, written (atomically) after the arrays
  and the `extra` file: a step counts as saved once its manifest is in place. `restore`
  verifies it and, if the newest step is damaged or incomplete, warns in one line, falls
  back to the newest good one, and moves the bad steps aside (`bad-<step>-<time>`, kept for
  inspection) so training can save those steps again. A folder marked by `MARKER` (every
  folder this version starts) requires manifests; steps of older folders without one are
  accepted. Temporary folders of interrupted saves are removed when the directory is
  opened.
  """

  def __init__(self, directory: str, *, max_to_keep: int = 3, save_every_steps: int = 1,
               background: bool = False):
    self.directory = os.path.abspath(directory)  # Orbax needs absolute paths
    # With several processes every one calls save and restore (Orbax coordinates them and
    # process 0 writes the arrays); only process 0 cleans up and writes manifests.
    self.primary = distributed.is_primary()
    try:
      os.makedirs(self.directory, exist_ok=True)
      probe = os.path.join(self.directory, f".write_test.{os.getpid()}")
      with open(probe, "w") as f:
        f.write("ok")
      os.remove(probe)
      if self.primary:
        names = os.listdir(self.directory)
        for name in names:  # an interrupted save's temporary folder
          if ".orbax-checkpoint-tmp" in name:
            shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        if MARKER not in names and not any(n.isdigit() for n in names):
          files.write_json(os.path.join(self.directory, MARKER), {"manifests": True})
    except OSError as e:
      raise CheckpointWriteError(f"cannot write checkpoints to {self.directory}: "
                                 f"{e.strerror or e}") from None
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep,
                                             save_interval_steps=max(1, save_every_steps),
                                             create=True, cleanup_tmp_directories=True,
                                             enable_async_checkpointing=False),
        # Declared up front so a fresh manager can read metadata before any save.
        item_handlers=ocp.StandardCheckpointHandler())
    self.save_every = max(1, save_every_steps)
    # Several processes save together (Orbax's barriers, ours): kept on the main thread.
    self._worker = (concurrent.futures.ThreadPoolExecutor(1, "dlcore-checkpoint")
                    if background and distributed.process_count() == 1 else None)
    self._pending: concurrent.futures.Future | None = None

  def _join(self) -> None:
    """Waits for the write in flight; raises its error. The write is forgotten only once it
    has finished (a wait cut short by a signal leaves it to the next call)."""
    pending = self._pending
    if pending is not None:
      try:
        pending.result()
      finally:
        if pending.done():
          self._pending = None

  def latest_step(self) -> int | None:
    self._join()
    return self.manager.latest_step()

  def all_steps(self) -> list[int]:
    self._join()
    return list(self.manager.all_steps())

  def should_save(self, step: int) -> bool:
    # Asked after every step: off the interval, with a step saved already (so Orbax's
    # initial-save policy is spent), Orbax would say no; it takes ~15 us to say so.
    if step % self.save_every and (self._pending is not None
                                   or self.manager.latest_step() is not None):
      return False  # (a write in flight: a step is being saved, so no initial save is due)
    self._join()
    return self.manager.should_save(step)

  def _step_dir(self, step: int) -> str:
    return os.path.join(self.directory, str(step))

  def save(self, step: int, state, *, force: bool = False, extra: dict | None = None) -> bool:
    """Saves the (unreplicated) state at `step` if the interval says so, or if `force`.
    `extra`: a JSON-able dict stored beside the arrays (covered by the manifest), read back
    with `extra(step)`; `fit` keeps an interrupted epoch's metrics there. In the background
    (see the class doc) True means the write has started."""
    self._join()
    if not force and not self.manager.should_save(int(step)):
      return False
    if self._worker is None:
      return self._write(int(step), state, extra)
    # A copy: the next training step may reuse (donate) the state's buffers. device_put
    # copies without compiling (jnp.array(copy=True) compiled one program per shape); it
    # would return a not fully addressable array uncopied, but saves in the background
    # run with one process only (see __init__).
    state = jax.tree.map(lambda x: jax.device_put(x, may_alias=False)
                         if isinstance(x, jax.Array) else x, state)
    self._pending = self._worker.submit(self._write, int(step), state, extra)
    return True

  def _write(self, step: int, state, extra: dict | None) -> bool:
    try:
      saved = self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
      if saved and self.primary:
        folder = self._step_dir(step)
        if extra is not None:
          files.write_json(os.path.join(folder, EXTRA), extra)
        # Last: the manifest (covering `extra`) marks the step as saved.
        files.write_json(os.path.join(folder, MANIFEST),
                         {"step": step, "sha256": _file_hashes(folder)})
      if saved and distributed.process_count() > 1:  # no process calls it saved before
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(f"dlcore-checkpoint-manifest-{step}")
    except OSError as e:
      raise CheckpointWriteError(f"cannot write checkpoint step {step} to {self.directory}: "
                                 f"{e.strerror or e}") from None
    if saved:
      preemption.note_saved(self.directory, step)
    return saved

  def manifest_required(self) -> bool:
    """Whether a step without a manifest is incomplete here (see the class doc)."""
    return os.path.exists(os.path.join(self.directory, MARKER)) or any(
        os.path.exists(os.path.join(self._step_dir(s), MANIFEST)) for s in self.all_steps())

  def restore(self, target, step: int | None = None):
    """Restores into the structure, shapes and dtypes of `target` (a fresh state): the given
    step, or the newest step whose files pass verification."""
    self._join()
    steps = [step] if step is not None else sorted(self.all_steps(), reverse=True)
    if not steps:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    problems = []
    required = self.manifest_required()
    for s in steps:
      bad = verify_step(self._step_dir(s), manifest_required=required)
      if bad is None:
        meta = self.manager.item_metadata(s).tree
        into, finish = _match_loss_scale(meta, target)
        _check_compatible(meta, into, f"{self.directory}/{s}")
        try:
          restored = finish(self.manager.restore(
              s, args=ocp.args.StandardRestore(_abstract(into))))
        except (OSError, ValueError) as e:  # damage the manifest could not see
          bad = f"{type(e).__name__}: {str(e).splitlines()[0][:100]}"
        else:
          if problems and self.primary:
            sys.stderr.write(f"warning: checkpoint {problems[0]}; resumed from step {s}\n")
          if step is None:
            self._set_aside(s)
          preemption.note_saved(self.directory, s)
          return restored
      problems.append(f"step {s} in {self.directory} is damaged ({bad})")
    raise CheckpointError(f"no intact checkpoint in {self.directory}: " + "; ".join(problems))

  def _set_aside(self, good: int) -> None:
    """Moves the steps newer than `good` (which failed verification) out of Orbax's sight,
    so the resumed run can save those steps again; every process then sees the same."""
    bad = [s for s in self.all_steps() if s > good]
    if self.primary and bad:
      stamp = time.strftime("%Y%m%dT%H%M%S")
      for s in bad:
        os.replace(self._step_dir(s), os.path.join(self.directory, f"bad-{s}-{stamp}"))
    if distributed.process_count() > 1:  # the others wait for process 0's moves
      from jax.experimental import multihost_utils
      multihost_utils.sync_global_devices(f"dlcore-checkpoint-set-aside-{good}")
    if bad or distributed.process_count() > 1:
      self.manager.reload()

  def extra(self, step: int) -> dict | None:
    """The `extra` dict saved with `step`, or None. Read as JSON only (no code runs)."""
    self._join()
    path = os.path.join(self._step_dir(int(step)), EXTRA)
    if not os.path.exists(path):
      return None
    try:
      with open(path) as f:
        value = json.load(f)
    except (OSError, ValueError) as e:
      raise CheckpointError(f"unreadable {path}: {e}") from None
    if not isinstance(value, dict):
      raise CheckpointError(f"{path} holds no JSON object")
    return value

  def wait(self) -> None:
    self._join()
    self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    finally:
      if self._worker is not None:
        self._worker.shutdown()
      self.manager.close()

  def __enter__(self):
    return self

  def __exit__(self, exc_type, exc, tb):
    if exc_type is None:
      self.close()
      return
    try:  # the error that ended the block is the one to report; a failed write is a line
      self.close()
    except CheckpointError as e:
      sys.stderr.write(f"warning: {e}\n")


def _local_checkpointer() -> ocp.StandardCheckpointer:
  """A checkpointer for this process alone: with several processes Orbax's default one
  waits at barriers for every process, and a model folder is written by process 0 only."""
  if distributed.process_count() == 1:
    return ocp.StandardCheckpointer()
  me = distributed.process_index()
  return ocp.StandardCheckpointer(multiprocessing_options=ocp.options.MultiprocessingOptions(
      primary_host=me, active_processes={me}))


def _host(tree):
  # With several processes Orbax refuses this process's own device arrays ("host local"),
  # and writes host arrays from process 0 only: hand it host arrays.
  return jax.device_get(tree) if distributed.process_count() > 1 else tree


def save_model(path: str, name: str, variables: dict, *, input_shape: tuple[int, ...],
               kwargs: dict[str, Any] | None = None) -> str:
  """Saves a registered model's variables plus what rebuilds it (name, kwargs, input shape).
  In a job of several processes, process 0 writes and the others return the path."""
  path = os.path.abspath(path)
  if not distributed.is_primary():
    return path
  kwargs = dict(kwargs or {})
  registry.build(name, **kwargs)  # fail now, not at load time, if it cannot be rebuilt
  meta = {"format": FORMAT_VERSION, "name": name, "kwargs": kwargs,
          "input_shape": list(input_shape)}
  # All or nothing: the folder is written beside `path` and renamed into place, so a
  # SIGKILL at any moment leaves the old folder (or none), never half of one. A SIGTERM or
  # Ctrl-C waits for the end of the save (`preemption.held`): Orbax writes in threads, and a
  # stop raised inside would leave them filling a folder that the cleanup had removed.
  parent, base = os.path.split(path)
  os.makedirs(parent, exist_ok=True)
  with preemption.held():
    _sweep_leftovers(parent, base)
    tmp = files.make_dir(parent, prefix=f".{base}.", suffix=".tmp")
    old = None
    try:
      with _local_checkpointer() as ckptr:
        ckptr.save(os.path.join(tmp, "variables"), _host(variables), force=True)
      files.write_json(os.path.join(tmp, "model.json"), meta, indent=2)
      if os.path.exists(path):
        old = files.make_dir(parent, prefix=f".{base}.", suffix=".old")
        os.replace(path, os.path.join(old, base))
      os.replace(tmp, path)
    except BaseException:
      if old is not None and not os.path.exists(path):  # failed between the two renames
        os.replace(os.path.join(old, base), path)
      shutil.rmtree(tmp, ignore_errors=True)
      raise
    finally:
      if old is not None:
        shutil.rmtree(old, ignore_errors=True)
  return path


def _sweep_leftovers(parent: str, base: str) -> None:
  """Removes what a SIGKILLed `save_model` of `base` left: its temporary folder, or the old
  folder it had moved aside (put back when nothing took its place)."""
  for name in os.listdir(parent):
    if not name.startswith(f".{base}."):
      continue
    folder = os.path.join(parent, name)
    if name.endswith(".old") and not os.path.exists(os.path.join(parent, base)) \
        and os.path.isdir(os.path.join(folder, base)):
      os.replace(os.path.join(folder, base), os.path.join(parent, base))
    if name.endswith((".tmp", ".old")):
      shutil.rmtree(folder, ignore_errors=True)


class ModelFolderError(ValueError):
  """A save_model folder whose model.json or arrays fail validation; names the field."""


MAX_INPUT_SIDE = 4096           # per dimension of model.json's input_shape
MAX_INPUT_ELEMENTS = 1 << 24    # per example


def _validate_meta(meta, meta_path: str) -> None:
  def bad(field, why):
    raise ModelFolderError(f"{meta_path}: {field} {why}")

  if not isinstance(meta, dict):
    bad("the file", "is not a JSON object")
  for field in ("format", "name", "kwargs", "input_shape"):
    if field not in meta:
      bad(field, "is missing")
  if meta["format"] != FORMAT_VERSION:
    bad("format", f"is {meta['format']!r}, expected {FORMAT_VERSION}")
  if not isinstance(meta["name"], str) or meta["name"] not in registry.names():
    bad("name", f"{meta['name']!r} is not a registered model")
  if not isinstance(meta["kwargs"], dict) or not all(isinstance(k, str) for k in meta["kwargs"]):
    bad("kwargs", "is not an object of keyword arguments")
  shape = meta["input_shape"]
  if (not isinstance(shape, list) or not 1 <= len(shape) <= 4
      or not all(isinstance(d, int) and not isinstance(d, bool) and 1 <= d <= MAX_INPUT_SIDE
                 for d in shape)
      or int(np.prod(shape)) > MAX_INPUT_ELEMENTS):
    bad("input_shape", f"{shape!r} is not 1-4 positive sizes of at most {MAX_INPUT_SIDE} "
        f"({MAX_INPUT_ELEMENTS} elements at most)")


def load_model(path: str):
  """Returns `(model, variables)` saved by `save_model`; the caller declares no class.

  model.json is validated (a registered name, keyword arguments, a small positive input
  shape) and so are the arrays (the model's structure and shapes, floating point, finite);
  a folder that fails raises `ModelFolderError` (a ValueError) naming the field."""
  path = os.path.abspath(path)
  meta_path = os.path.join(path, "model.json")
  if not os.path.exists(meta_path):
    raise FileNotFoundError(f"{meta_path} not found: {path} was not written by save_model")
  try:
    with open(meta_path) as f:
      meta = json.load(f)
  except (ValueError, UnicodeDecodeError) as e:
    raise ModelFolderError(f"{meta_path}: not valid JSON ({e})") from None
  _validate_meta(meta, meta_path)
  try:
    model = registry.build(meta["name"], **meta["kwargs"])
  except TypeError as e:
    raise ModelFolderError(f"{meta_path}: kwargs do not fit {meta['name']}: {e}") from None
  x = jnp.zeros((1, *meta["input_shape"]), jnp.float32)
  try:
    target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), x, train=False))
  except Exception as e:  # noqa: BLE001 - any failure means the shape does not fit the model
    raise ModelFolderError(f"{meta_path}: kwargs {meta['kwargs']} with input_shape "
                           f"{meta['input_shape']} do not build {meta['name']} "
                           f"({type(e).__name__}: {str(e).splitlines()[0][:80]})") from None
  vpath = os.path.join(path, "variables")
  with _local_checkpointer() as ckptr:
    try:
      saved = ckptr.metadata(vpath).item_metadata.tree
    except Exception as e:  # noqa: BLE001 - missing or unreadable array folder
      raise ModelFolderError(f"{vpath}: unreadable ({type(e).__name__})") from None
    try:
      _check_compatible(saved, target, vpath)
    except CheckpointError as e:
      raise ModelFolderError(str(e)) from None
    for keypath, leaf in jax.tree_util.tree_flatten_with_path(saved)[0]:
      dtype = getattr(leaf, "dtype", None)
      if dtype is None or not jnp.issubdtype(dtype, jnp.floating):
        raise ModelFolderError(f"{vpath}: {jax.tree_util.keystr(keypath)} has dtype {dtype}, "
                               "expected floating point")
    variables = ckptr.restore(vpath, target)
  for keypath, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
    name = jax.tree_util.keystr(keypath)
    if not np.isfinite(np.asarray(leaf)).all():
      raise ModelFolderError(f"{vpath}: {name} holds NaN or infinite values")
  return model, variables


def save_params(path: str, variables: dict) -> str:
  """The seed's second way: parameters only (`state_dict`); loading needs the model. In a
  job of several processes, process 0 writes and the others return the path."""
  path = os.path.abspath(path)
  if not distributed.is_primary():
    return path
  with _local_checkpointer() as ckptr:
    ckptr.save(path, _host(variables), force=True)
  return path


def load_params(path: str, target: dict) -> dict:
  """Restores variables saved by `save_params` into the structure of `target`
  (e.g. `model.init(...)` of the caller's freshly declared model)."""
  path = os.path.abspath(path)
  with _local_checkpointer() as ckptr:
    _check_compatible(ckptr.metadata(path).item_metadata.tree, target, path)
    return ckptr.restore(path, _abstract(target))
