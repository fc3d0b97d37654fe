import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlcore import checkpoint, models
from dlcore.train import NonFiniteLossError, Runner, create_train_state, fit, make_train_step
from tests.helpers import bce_loss, max_abs_diff, planar_batch, small_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_state_round_trip(tmp_path):
  state = small_state(opt=optax.adam(1e-3))
  state, _ = jax.jit(make_train_step(bce_loss))(state, planar_batch(32))
  with checkpoint.Checkpointer(str(tmp_path / "ck")) as ck:
    ck.save(int(state.step), state)
  with checkpoint.Checkpointer(str(tmp_path / "ck")) as ck:
    assert ck.latest_step() == 1
    restored = ck.restore(small_state(opt=optax.adam(1e-3), seed=7))
  assert max_abs_diff(state.params, restored.params) == 0
  assert max_abs_diff(state.opt_state, restored.opt_state) == 0
  assert int(restored.step) == 1
  np.testing.assert_array_equal(state.rng, restored.rng)


def test_a_background_save_keeps_the_state_it_was_given(tmp_path):
  """`save` returns while a worker writes; the next (donating) steps reuse the state's
  buffers meanwhile, and what is restored is still the state at the saved step."""
  step = jax.jit(make_train_step(bce_loss), donate_argnums=0)
  state, _ = step(small_state(opt=optax.adam(1e-3)), planar_batch(32))
  want = jax.tree.map(jnp.copy, state)  # (a host copy would keep the buffers from donation)
  with checkpoint.Checkpointer(str(tmp_path / "ck"), background=True) as ck:
    import threading
    trained, orbax_save = threading.Event(), ck.manager.save

    def late_save(*args, **kwargs):  # the write starts only after the steps below
      assert trained.wait(60)
      return orbax_save(*args, **kwargs)

    ck.manager.save = late_save
    assert ck.save(1, state, extra={"note": 1})
    for _ in range(20):
      state, _ = step(state, planar_batch(32))
    jax.block_until_ready(state)
    trained.set()
    assert ck.latest_step() == 1 and ck.extra(1) == {"note": 1}
    assert checkpoint.verify_step(str(tmp_path / "ck" / "1"), manifest_required=True) is None
    restored = ck.restore(small_state(opt=optax.adam(1e-3), seed=7))
  assert max_abs_diff(want.params, restored.params) == 0
  assert max_abs_diff(want.opt_state, restored.opt_state) == 0
  assert max_abs_diff(want.params, state.params) > 0  # training did go on


def test_a_failed_background_save_raises_at_the_next_call_and_keeps_the_steps_before(
    tmp_path, monkeypatch):
  """Step 2's write fails after Orbax wrote its arrays, before its manifest (the window a
  background write leaves open): the next save raises naming step 2, step 1 still
  restores, and step 2, without a manifest, is never trusted."""
  from dlcore import files
  ck = checkpoint.Checkpointer(str(tmp_path / "ck"), background=True)
  ck.save(1, small_state(seed=1))
  ck.wait()
  write_json = files.write_json

  def failing(path, *args, **kwargs):
    if path.endswith(checkpoint.MANIFEST) and f"{os.sep}2{os.sep}" in path:
      raise OSError(28, "No space left on device")
    return write_json(path, *args, **kwargs)

  monkeypatch.setattr(files, "write_json", failing)
  assert ck.save(2, small_state(seed=2), force=True)  # started; the write fails in the worker
  with pytest.raises(checkpoint.CheckpointWriteError,
                     match="cannot write checkpoint step 2 .*No space left"):
    ck.save(3, small_state(seed=3), force=True)
  monkeypatch.setattr(files, "write_json", write_json)
  restored = ck.restore(small_state(seed=7))  # step 2 is set aside, step 1 comes back
  assert max_abs_diff(restored.params, small_state(seed=1).params) == 0
  assert ck.all_steps() == [1]
  ck.close()


def test_an_error_leaving_the_block_is_not_replaced_by_a_failed_background_write(
    tmp_path, monkeypatch, capsys):
  from dlcore import files
  with pytest.raises(KeyError, match="the error that stopped the run"):
    with checkpoint.Checkpointer(str(tmp_path / "ck"), background=True) as ck:
      monkeypatch.setattr(files, "write_json", lambda *a, **k: (_ for _ in ()).throw(
          OSError(28, "No space left on device")))
      ck.save(1, small_state(), force=True)
      raise KeyError("the error that stopped the run")
  assert "warning: cannot write checkpoint step 1" in capsys.readouterr().err


def test_should_save_takes_orbax_decisions(tmp_path):
  """The fast path (off the interval) says what Orbax's own policy says, including its
  first save at any step of an empty folder."""
  ck = checkpoint.Checkpointer(str(tmp_path / "ck"), save_every_steps=5, background=True)
  ref = checkpoint.Checkpointer(str(tmp_path / "ref"), save_every_steps=5)
  for c in (ck, ref):
    assert c.should_save(3)
  decisions = {}
  for c in (ck, ref):
    got = []
    for s in range(3, 23):
      if c.should_save(s):
        got.append(s)
        c.save(s, small_state())
    decisions[c is ck] = got
  assert decisions[True] == decisions[False] == [3, 5, 10, 15, 20]
  ck.close(), ref.close()


def test_incompatible_checkpoint_names_the_keys(tmp_path):
  with checkpoint.Checkpointer(str(tmp_path / "ck")) as ck:
    ck.save(0, small_state(widths=(10, 1)))
    with pytest.raises(checkpoint.CheckpointError, match=r"(?s)shape of params/fc1/kernel: "
                       r"checkpoint \(2, 10\) vs model \(2, 5\).*fresh --workdir"):
      ck.restore(small_state(widths=(5, 1)))


def test_whole_model_save_and_load_needs_no_class(tmp_path):
  model = models.build("mlp", widths=(6, 3), activation="relu")
  x = jnp.asarray(planar_batch(5)["x"])
  variables = model.init(jax.random.PRNGKey(3), x)
  path = checkpoint.save_model(str(tmp_path / "m"), "mlp", variables, input_shape=(2,),
                               kwargs={"widths": (6, 3), "activation": "relu"})
  meta = json.load(open(os.path.join(path, "model.json")))
  assert meta["name"] == "mlp" and meta["kwargs"]["widths"] == [6, 3]
  loaded, loaded_vars = checkpoint.load_model(path)
  np.testing.assert_array_equal(model.apply(variables, x), loaded.apply(loaded_vars, x))
  # No pickle anywhere: every file is JSON or Orbax/TensorStore array data.
  for dirpath, _, files in os.walk(path):
    for f in files:
      with open(os.path.join(dirpath, f), "rb") as fh:
        assert not fh.read(2).startswith(b"\x80"), f"pickle protocol header in {f}"


def test_load_model_with_unknown_name_fails_without_executing_anything(tmp_path):
  path = tmp_path / "m"
  path.mkdir()
  (path / "model.json").write_text(json.dumps(
      {"format": 1, "name": "os.system", "kwargs": {"command": "touch pwned"},
       "input_shape": [2]}))
  with pytest.raises(checkpoint.ModelFolderError, match="name 'os.system' is not a registered"):
    checkpoint.load_model(str(path))
  assert not os.path.exists("pwned")


def test_nan_loss_stops_training_and_keeps_the_last_good_checkpoint(tmp_path):
  good = planar_batch(32)
  bad = {"x": np.full_like(good["x"], np.nan), "y": good["y"]}
  runner = Runner("jit")
  with checkpoint.Checkpointer(str(tmp_path / "ck"), save_every_steps=2) as ck:
    with pytest.raises(NonFiniteLossError, match=r"last good checkpoint \(step 4\)"):
      fit(small_state(), runner.compile(make_train_step(bce_loss)),
          lambda epoch: [good] if epoch < 5 else [bad], runner=runner, num_epochs=8,
          checkpointer=ck, progress=False, log_every=1)
    assert ck.latest_step() == 4
    restored = ck.restore(small_state())
  assert all(np.all(np.isfinite(p)) for p in jax.tree.leaves(restored.params))


def _fizzbuzz(workdir, epochs, *extra):
  cmd = [sys.executable, "-m", "experiments.fizzbuzz", "--workdir", str(workdir), "--epochs",
         str(epochs), "--fuse", "5", "--seeds", "1", "--no-progress", *extra]
  subprocess.run(cmd, cwd=ROOT, check=True, capture_output=True, timeout=300)


def test_resume_in_a_new_process_gives_identical_parameters(tmp_path):
  """20 epochs straight vs 10 epochs, exit, then --resume to 20 in a new process.

  Asserted bit for bit: the resumed process runs the same XLA program on the same batches
  (data order depends only on the epoch) from restored arrays, and CPU XLA is deterministic.
  (A GPU with nondeterministic reductions could need a ~1e-6 tolerance.)"""
  _fizzbuzz(tmp_path / "straight", 20)
  _fizzbuzz(tmp_path / "resumed", 10)
  _fizzbuzz(tmp_path / "resumed", 20, "--resume")
  model = models.build("mlp", widths=(100, 4), activation="relu")
  template = create_train_state(model, optax.sgd(0.05), np.zeros((2, 10)), 0)  # --seeds 1
  finals = []
  for run in ("straight", "resumed"):
    with checkpoint.Checkpointer(str(tmp_path / run / "checkpoints")) as ck:
      assert ck.latest_step() == 20 * 8
      finals.append(ck.restore(template))
  assert max_abs_diff(finals[0].params, finals[1].params) == 0
  assert max_abs_diff(finals[0].opt_state, finals[1].opt_state) == 0


def test_a_failed_save_model_leaves_no_model_json(tmp_path, monkeypatch):
  """model.json is written last: a folder whose arrays failed to save is not a model (the
  scorer cache once kept such a folder and every later run failed to load it)."""
  model = models.build("mlp", widths=(4, 1))
  variables = model.init(jax.random.PRNGKey(0), jnp.zeros((1, 2)))

  class Broken:
    def __enter__(self):
      return self

    def __exit__(self, *exc):
      return False

    def save(self, *args, **kwargs):
      raise OSError(28, "No space left on device")

  monkeypatch.setattr(checkpoint, "_local_checkpointer", Broken)
  with pytest.raises(OSError):
    checkpoint.save_model(str(tmp_path / "m"), "mlp", variables, input_shape=(2,),
                          kwargs={"widths": (4, 1)})
  assert not (tmp_path / "m" / "model.json").exists()
  monkeypatch.undo()
  checkpoint.save_model(str(tmp_path / "m"), "mlp", variables, input_shape=(2,),
                        kwargs={"widths": (4, 1)})
  _, loaded = checkpoint.load_model(str(tmp_path / "m"))
  assert max_abs_diff(loaded["params"], variables["params"]) == 0
