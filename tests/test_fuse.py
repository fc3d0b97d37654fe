"""Fused steps (`fit`'s fused_step, the experiments' --fuse): the steps between save points as
one compiled loop give the loop of single calls' rows, records, checkpoints and state, bit for
bit, and resume the same."""
import json
import os

import jax
import numpy as np
import optax
import pytest

from dlcore import data as dldata
from dlcore.checkpoint import Checkpointer
from dlcore.harness import cli
from dlcore.train import Runner, fit, make_train_step, scan_steps
from tests.helpers import bce_loss, planar_batch, small_state

QUIET = ["--no-progress"]


class Recorder:
  def __init__(self):
    self.rows = []

  def write(self, split, step, metrics, **extra):
    self.rows.append((split, step, {k: float(v) for k, v in metrics.items()}, extra))


class Rows(Recorder):
  """Rows as RunDir keeps them: a resume drops those past the restored step."""

  def resume(self, step):
    self.rows = [r for r in self.rows if r[1] <= step]
    return []


def _fit(directory, *, fused: bool, epochs: int = 3, resume: bool = False, calls=None,
         save_every: int = 4, writer=None, fail_in_epoch: int | None = None,
         gather: bool = True, kinds=None, new_arrays: str | None = None):
  """3 epochs of 10 shuffled batches of 16 and one of 5 (11 steps), a save every 4 steps
  (off the epoch's end), metrics every 3 steps. `fail_in_epoch`: the data fails there (a
  killed run). `gather`: the epoch as `dldata.batches` gives it (fused calls gather it on
  the device); otherwise as a list of batches (stacked on the host). `kinds`: gets the type
  of each fused call's batches. `new_arrays`: each epoch draws from arrays of its own (as
  data augmented anew each epoch would be), in a new dict ("dict") or the same one ("value")."""
  runner = Runner("jit")
  step = make_train_step(bce_loss)
  fused_step = None
  if fused:
    scanned = runner.compile(scan_steps(step))

    def fused_step(state, batches):
      calls.append(jax.tree.leaves(batches)[0].shape[0])  # the steps of each fused call
      if kinds is not None:
        kinds.add(type(batches).__name__)
      return scanned(state, batches)

  data = planar_batch(165)
  same = dict(data)
  writer = Recorder() if writer is None else writer

  def batches(e):
    if e == fail_in_epoch:
      raise RuntimeError("killed")
    arrays = data
    if new_arrays == "dict":
      arrays = {"x": data["x"] * (1 + e), "y": data["y"]}
    elif new_arrays == "value":
      arrays = same
      same["x"] = data["x"] * (1 + e)
    epoch = dldata.batches(arrays, 16, shuffle=True, epoch=e)
    return epoch if gather else list(epoch)

  with Checkpointer(str(directory), save_every_steps=save_every, max_to_keep=50) as ckpt:
    state, history = fit(small_state(opt=optax.adam(0.05)), runner.compile(step), batches,
                         runner=runner, num_epochs=epochs, log_every=3, writer=writer,
                         checkpointer=ckpt, resume=resume, progress=False, fused_step=fused_step)
    saved = {s: (ckpt.restore(state, s), ckpt.extra(s)) for s in ckpt.all_steps()}
  return state, history, writer.rows, saved


def _equal(a, b) -> bool:
  """The same arrays at the same places (a state's static fields, its optimizer's functions,
  are not compared)."""
  a, b = (jax.tree_util.tree_flatten_with_path(t)[0] for t in (a, b))
  return [p for p, _ in a] == [p for p, _ in b] and all(
      np.array_equal(x, y) for (_, x), (_, y) in zip(a, b))


# (True, 3): dldata.batches whose arrays exceed FUSE_BYTES, so stacked (the size guard)
@pytest.mark.parametrize("gather,max_block", [(True, None), (False, None), (True, 3),
                                              (False, 3)])
def test_fused_steps_give_the_loops_rows_records_checkpoints_and_state(tmp_path, monkeypatch,
                                                                      gather, max_block):
  from dlcore.train import loop
  if max_block:  # FUSE_BYTES holds 3 batches of 16: calls of 3, 1, 2, ...
    monkeypatch.setattr(loop, "FUSE_BYTES", max_block * 16 * (2 + 1) * 4)
  calls, kinds = [], set()
  state, history, rows, saved = _fit(tmp_path / "loop", fused=False, gather=gather)
  f_state, f_history, f_rows, f_saved = _fit(tmp_path / "fused", fused=True, calls=calls,
                                             gather=gather, kinds=kinds)
  # batches of dldata.batches are gathered on the device, unless their arrays exceed
  # FUSE_BYTES (165 examples of 12 bytes do with max_block 3); others are stacked
  assert kinds == ({"Gathered"} if gather and not max_block else {"dict"}), kinds
  # calls end at the save points (4, 8, 12, ...) and before the partial batch (11, 22, 33)
  assert calls[:3] == ([4, 4, 2] if max_block is None else [3, 3, 2]), calls
  assert max(calls) == (max_block or 4), calls
  assert f_rows == rows and f_history == history
  assert _equal(f_state.params, state.params) and _equal(f_state.opt_state, state.opt_state)
  # Orbax's first save (step 1) is made by the loop only: a fused call ends at save points.
  assert set(saved) - set(f_saved) == {1} and set(f_saved) <= set(saved)
  assert len(f_saved) > 5
  for s in f_saved:
    assert _equal(f_saved[s][0], saved[s][0]), s
    assert f_saved[s][1] == saved[s][1], s  # the interrupted epoch's rows


@pytest.mark.parametrize("new_arrays", ["dict", "value"])
def test_fused_calls_gather_from_each_epochs_own_arrays(tmp_path, new_arrays):
  calls, kinds = [], set()
  state, history, rows, _ = _fit(tmp_path / "loop", fused=False, new_arrays=new_arrays)
  f_state, f_history, f_rows, _ = _fit(tmp_path / "fused", fused=True, calls=calls,
                                       kinds=kinds, new_arrays=new_arrays)
  assert kinds == {"Gathered"} and f_rows == rows and f_history == history
  assert _equal(f_state.params, state.params)


def test_a_fused_run_resumes_from_a_mid_epoch_checkpoint_to_the_same_numbers(tmp_path):
  state, history, rows, _ = _fit(tmp_path / "loop", fused=False)
  # a fused run stopped after 2 epochs, its checkpoints past step 16 lost: it resumes
  # mid-epoch (step 16 of 33) and replays the batches before it
  _fit(tmp_path / "fused", fused=True, epochs=2, calls=[])
  for name in os.listdir(tmp_path / "fused"):
    if name.isdigit() and int(name) > 16:
      import shutil
      shutil.rmtree(tmp_path / "fused" / name)
  calls = []
  r_state, r_history, r_rows, _ = _fit(tmp_path / "fused", fused=True, resume=True,
                                       calls=calls)
  assert calls and calls[0] == 4  # steps 17-20: the first fused call after the resume point
  # epoch 1's record from the rows saved with step 16 and the steps run after it
  assert _equal(r_state.params, state.params) and r_history == history[1:]
  assert _equal(r_state.opt_state, state.opt_state)
  # the resumed run writes the rows from its resume point on, as the loop wrote them
  assert r_rows == [r for r in rows if r[1] > 16]


def test_a_fused_run_killed_before_its_first_save_resumes_without_repeating_rows(tmp_path):
  """Fused calls make no save at step 1 (Orbax's first save): a run killed in its first
  epochs has rows but no checkpoint. Resumed, it starts over, and its rows are not repeated."""
  _, history, rows, _ = _fit(tmp_path / "loop", fused=False, save_every=100)
  writer = Rows()
  with pytest.raises(RuntimeError, match="killed"):
    _fit(tmp_path / "fused", fused=True, save_every=100, writer=writer, fail_in_epoch=2,
         calls=[])
  assert writer.rows and not os.listdir(tmp_path / "fused")[1:]  # rows, no checkpoint
  _, r_history, r_rows, _ = _fit(tmp_path / "fused", fused=True, save_every=100,
                                 writer=writer, resume=True, calls=[])
  assert r_rows == rows and r_history == history


def _run(module, workdir, *args):
  summary = module.main([*args, "--workdir", str(workdir), *QUIET])
  lines = [json.loads(x) for x in open(os.path.join(workdir, "metrics.jsonl"))]
  for r in lines:
    r.pop("time")
  return summary, lines


def _without(entry: dict, *keys) -> dict:
  return {k: v for k, v in entry.items() if k not in keys}


def _scans(monkeypatch, module):
  """Counts the steps that `module`'s scan_steps fuses (traced: once per program)."""
  traced = []

  def counting(step):
    fused = scan_steps(step)

    def call(state, batches):
      traced.append((type(batches).__name__, jax.tree.leaves(batches)[0].shape[0]))
      return fused(state, batches)
    return call

  monkeypatch.setattr(module, "scan_steps", counting)
  return traced


def test_mnist_mlp_fuses_by_default_with_the_numbers_of_single_calls(tmp_path, monkeypatch):
  from experiments import mnist_mlp
  from dlcore.checkpoint import load_model
  from dlcore.train import classify

  args = ["--dataset", "digits", "--no-compare", "--epochs", "3"]
  traced = _scans(monkeypatch, classify)
  fused, rows = _run(mnist_mlp, tmp_path / "default", *args)
  # the epoch's full batches as one call, gathered from the arrays on the device
  assert traced and traced[0][0] == "Gathered" and traced[0][1] > 10, traced
  loop, loop_rows = _run(mnist_mlp, tmp_path / "loop", *args, "--fuse", "False")
  assert fused["2.3.1"]["fused"] is True and loop["2.3.1"]["fused"] is False
  assert _without(fused["2.3.1"], "fused") == _without(loop["2.3.1"], "fused")
  assert rows == loop_rows and len(rows) > 10
  assert _equal(load_model(str(tmp_path / "default" / "model"))[1],
                load_model(str(tmp_path / "loop" / "model"))[1])


def _fuses_by_default(module, tmp_path, monkeypatch, args):
  """`module`'s default run fuses its steps (gathered on the device) and gives the rows and
  summary of its run with --fuse False."""
  traced = _scans(monkeypatch, module)
  fused, rows = _run(module, tmp_path / "default", *args)
  assert traced and traced[0][0] == "Gathered" and traced[0][1] > 5, traced
  loop, loop_rows = _run(module, tmp_path / "loop", *args, "--fuse", "False")
  key = next(k for k in fused if isinstance(fused[k], dict) and "fused" in fused[k])
  assert fused[key]["fused"] is True and loop[key]["fused"] is False
  assert _without(fused[key], "fused") == _without(loop[key], "fused")
  assert rows == loop_rows and len(rows) > 5


def test_the_vae_fuses_by_default_with_the_numbers_of_single_calls(tmp_path, monkeypatch):
  from experiments import vae

  _fuses_by_default(vae, tmp_path, monkeypatch, [
      "--dataset", "digits", "--epochs", "2", "--score-samples", "0", "--hidden", "32",
      "--latent-dim", "4"])


@pytest.mark.parametrize("variant", ["gan", "cgan"])
def test_the_gan_fuses_by_default_with_the_numbers_of_single_calls(tmp_path, monkeypatch,
                                                                   variant):
  from experiments import gan

  _fuses_by_default(gan, tmp_path, monkeypatch, [
      "--dataset", "digits", "--epochs", "2", "--score-samples", "0", "--variant", variant])
  # the DCGAN's convolutions stay in the loop of calls unless --fuse True asks
  assert not gan.fuses(cli.parse(gan.Config, ["--variant", "dcgan"], ""))
  assert gan.fuses(cli.parse(gan.Config, ["--variant", "dcgan", "--fuse", "True"], ""))
  assert gan.fuses(cli.parse(gan.Config, ["--variant", "cgan"], ""))


@pytest.mark.parametrize("extra", [["--seeds", "2"], ["--mode", "eager"],
                                   ["--sweep", "lr=0.01,0.02"]])
def test_fuse_where_it_cannot_run_is_refused_in_one_line(extra):
  from experiments import mnist_mlp

  cfg = cli.parse(mnist_mlp.Config, ["--fuse", "True", *extra], "")
  with pytest.raises(cli.ConfigError, match="^--fuse runs under --mode jit or sharded"):
    cli.fused(cfg)
  # left to its default, such a run is not fused
  assert cli.fused(cli.parse(mnist_mlp.Config, extra, "")) is False


@pytest.mark.parametrize("mode", ["eager", "members"])
def test_fit_refuses_a_fused_step_it_cannot_run(mode):
  from dlcore.train import members
  runner = Runner("eager") if mode == "eager" else members.MemberRunner(Runner("jit"), 2)
  step = make_train_step(bce_loss)
  with pytest.raises(ValueError, match="fused_step fuses single steps"):
    fit(small_state(), step, lambda e: [planar_batch(16)], runner=runner, num_epochs=1,
        progress=False, fused_step=scan_steps(step))
