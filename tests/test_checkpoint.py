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
