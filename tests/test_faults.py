"""Fault injection: the ways a run could silently lose or mix data, hang, or report the
wrong thing, each shown to end in a refusal, a fallback or one line and an exit code.
docs/faults.md ("What survives what") points here."""
import glob
import hashlib
import json
import os
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlcore import checkpoint
from dlcore.checkpoint import Checkpointer, CheckpointError, CheckpointWriteError
from dlcore.data import DataError, check_labels
from dlcore.harness.rundir import RunDir, RunDirError
from dlcore.train import NonFiniteLossError, Runner, fit, make_train_step
from tests.helpers import bce_loss, planar_batch, small_state

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QUIET = ["--no-progress"]
FIZZ = ["--seeds", "1", "--epochs", "40", "--fuse", "10", *QUIET]


def _digest(folder):
  out = {}
  for path in sorted(glob.glob(os.path.join(folder, "**"), recursive=True)):
    if os.path.isfile(path) and not path.endswith(".lock"):
      out[os.path.relpath(path, folder)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
  return out


def _cli(*args, timeout=120, env=None):
  return subprocess.run([sys.executable, "-m", *args], cwd=ROOT, capture_output=True,
                        text=True, timeout=timeout, env={**os.environ, **(env or {})})


# ---- one run per folder -----------------------------------------------------------------------
def test_rerun_without_resume_is_refused_and_changes_nothing(tmp_path):
  from experiments import fizzbuzz

  fizzbuzz.main(["--workdir", str(tmp_path), *FIZZ])
  before = _digest(tmp_path)
  with pytest.raises(RunDirError, match="already holds a run.*--resume.*--overwrite"):
    fizzbuzz.main(["--workdir", str(tmp_path), *FIZZ])
  assert _digest(tmp_path) == before
  fizzbuzz.main(["--workdir", str(tmp_path), "--overwrite", *FIZZ])  # on purpose: allowed


def test_a_second_run_on_a_busy_folder_is_refused_in_seconds(tmp_path):
  holder = RunDir(str(tmp_path))  # holds the lock, as a running run does
  start = time.monotonic()
  out = _cli("experiments.planar", "--workdir", str(tmp_path), "--nets", "0.1", *QUIET)
  assert time.monotonic() - start < 60
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert out.stderr.strip().startswith("error: ") and "in use by a running run" in out.stderr
  holder.close()
  with pytest.raises(RunDirError, match="already holds a run"):  # the holder's run is kept
    RunDir(str(tmp_path))


def test_a_lock_of_a_dead_run_does_not_block(tmp_path):
  code = ("from dlcore.harness.rundir import RunDir; import os; r = RunDir(%r); os._exit(0)"
          % str(tmp_path))
  subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
  RunDir(str(tmp_path), resume=True).close()  # the dead holder's lock is gone


# ---- honest resume ----------------------------------------------------------------------------
def test_resume_with_other_settings_names_each_field(tmp_path):
  from experiments import fizzbuzz

  fizzbuzz.main(["--workdir", str(tmp_path), *FIZZ])
  with pytest.raises(RunDirError, match=r"--lr 0\.05 -> 0\.1.*--allow-change lr"):
    fizzbuzz.main(["--workdir", str(tmp_path), "--resume", "--lr", "0.1", *FIZZ])
  # Longer training is what resume is for; a changed lr passes when asked for.
  fizzbuzz.main(["--workdir", str(tmp_path), "--resume", *FIZZ[:-3], "--epochs", "60",
                 "--fuse", "10", *QUIET])
  fizzbuzz.main(["--workdir", str(tmp_path), "--resume", "--lr", "0.1", "--allow-change", "lr",
                 *FIZZ[:-3], "--epochs", "60", "--fuse", "10", *QUIET])


def test_resume_on_a_folder_without_a_run_is_refused(tmp_path):
  from experiments import fizzbuzz

  with pytest.raises(RunDirError, match="holds no run"):
    fizzbuzz.main(["--workdir", str(tmp_path / "typo"), "--resume", *FIZZ])


@pytest.mark.parametrize("seeds", ["1", "4"])  # one run; four members in one stacked state
def test_kill_9_then_resume_covers_every_epoch_once_and_matches(tmp_path, seeds):
  args = ["--seeds", seeds, "--epochs", "3000", "--fuse", "10", *QUIET]
  killed = str(tmp_path / "killed")
  proc = subprocess.Popen([sys.executable, "-m", "experiments.fizzbuzz", "--workdir", killed,
                           *args], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
  deadline = time.monotonic() + 120
  while time.monotonic() < deadline:
    steps = [d for d in glob.glob(os.path.join(killed, "checkpoints", "*")) if
             os.path.basename(d).isdigit()]
    if steps and os.path.exists(os.path.join(killed, "history.jsonl")):
      break
    time.sleep(0.05)
  time.sleep(0.3)  # let it write rows past the checkpoint, as a real crash would leave
  assert proc.poll() is None, "the run ended before it could be killed"
  os.kill(proc.pid, signal.SIGKILL)
  proc.wait(timeout=30)
  from experiments import fizzbuzz

  resumed = fizzbuzz.main(["--workdir", killed, "--resume", *args])["1.7"]
  history = [json.loads(line) for line in open(os.path.join(killed, "history.jsonl"))]
  assert [h["epoch"] for h in history] == list(range(300))  # 3000 epochs / 10 per call
  rows = [json.loads(line) for line in open(os.path.join(killed, "metrics.jsonl"))]
  keys = [(r["split"], r["step"]) for r in rows]
  assert len(keys) == len(set(keys)), "duplicated metric rows"
  whole = fizzbuzz.main(["--workdir", str(tmp_path / "whole"), *args])["1.7"]
  assert resumed["final_train_loss"] == whole["final_train_loss"]  # bitwise
  assert resumed["correct_per_seed"] == whole["correct_per_seed"]
  assert resumed.get("per_seed") == whole.get("per_seed")  # every member, bitwise


# ---- finite checkpoints -----------------------------------------------------------------------
def test_divergence_stops_before_a_non_finite_state_is_saved(tmp_path):
  """The loss stays finite but the parameters become inf after step 3: the state check,
  not the loss check, stops the run, and every checkpoint left restores to finite values."""
  runner = Runner("jit")
  base = make_train_step(bce_loss)

  def step(state, batch):
    new, metrics = base(state, batch)
    bad = jax.tree.map(lambda p: p * np.inf, new.params)
    return new.replace(params=jax.lax.cond(new.step > 3, lambda: bad,
                                           lambda: new.params)), metrics

  data = planar_batch(64)
  with Checkpointer(str(tmp_path / "ck"), max_to_keep=10) as ckpt:
    with pytest.raises(NonFiniteLossError, match=r"step 4 .*last finite checkpoint \(step 3\)"):
      fit(small_state(), runner.compile(step), lambda e: [data], runner=runner, num_epochs=8,
          checkpointer=ckpt, progress=False)
    assert ckpt.all_steps() == [1, 2, 3]
    for s in ckpt.all_steps():
      restored = ckpt.restore(small_state(), step=s)
      assert all(np.all(np.isfinite(x)) for x in jax.tree.leaves(restored.params))


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_all_finite_sees_a_non_finite_value_in_any_leaf(dtype, monkeypatch):
  """Both ways of checking: numpy where the arrays are on this host (the CPU: the compiled
  reduction is not called), the compiled reduction elsewhere (taken here by declaring the
  arrays off the host: this machine has no accelerator)."""
  from dlcore.train import loop
  state = small_state(opt=optax.adam(1e-3))
  state = jax.tree.map(lambda x: x.astype(dtype) if jnp.issubdtype(x.dtype, jnp.floating)
                       else x, state)
  leaves, treedef = jax.tree.flatten(state)
  floats = [i for i, x in enumerate(leaves) if jnp.issubdtype(x.dtype, jnp.inexact)]
  assert len(floats) > 4 and all(loop._on_host(leaves[i]) for i in floats)
  compiled = loop._all_finite
  calls = []

  def no_program(leaves):
    raise AssertionError("host arrays checked by a compiled program")

  def counted(leaves):
    calls.append(len(leaves))
    return compiled(leaves)
  trees = [state]
  for i in floats:
    for bad in (np.nan, np.inf, -np.inf):
      for where in ((0,) * leaves[i].ndim, (-1,) * leaves[i].ndim):
        broken = list(leaves)
        broken[i] = leaves[i].at[where].set(bad)
        trees.append(jax.tree.unflatten(treedef, broken))
  for host in (True, False):
    with monkeypatch.context() as m:
      m.setattr(loop, "_all_finite", no_program if host else counted)
      if not host:
        m.setattr(loop, "_on_host", lambda x: False)
      for n, tree in enumerate(trees):
        assert loop.all_finite(tree) == (n == 0), (host, n)
        # The same leaves as numpy arrays (a fetched state) are read the same way.
        assert loop.all_finite(jax.tree.map(np.asarray, tree)) == (n == 0), (host, n)
  assert calls == [len(floats)] * (2 * len(trees))  # off the host: the compiled reduction
  assert loop.all_finite({"step": np.int32(3)}) and not loop.all_finite([np.float32("nan")])


def test_lr_1e39_exits_non_zero_in_one_line(tmp_path):
  out = _cli("experiments.fizzbuzz", "--workdir", str(tmp_path), "--lr", "1e39", *FIZZ)
  assert out.returncode == 5 and "Traceback" not in out.stderr
  assert out.stderr.strip().splitlines()[-1].startswith("error: ")
  for step in glob.glob(str(tmp_path / "checkpoints" / "[0-9]*")):
    assert checkpoint.verify_step(step) is None


def test_bad_labels_are_caught_before_training():
  with pytest.raises(DataError, match=r"labels must lie in 0\.\.9, found 0\.\.12"):
    check_labels(np.array([0, 3, 12]), 10, "train labels")


# ---- verified checkpoints, failing saves ------------------------------------------------------
def test_a_damaged_newest_checkpoint_is_reported_and_skipped(tmp_path, capsys):
  state = small_state()
  with Checkpointer(str(tmp_path)) as c:
    c.save(1, state)
    c.save(2, state.replace(step=state.step + 7))
  files = [f for f in glob.glob(str(tmp_path / "2" / "**"), recursive=True)
           if os.path.isfile(f) and not f.endswith(checkpoint.MANIFEST)]
  victim = max(files, key=os.path.getsize)
  data = bytearray(open(victim, "rb").read())
  data[len(data) // 2] ^= 0xFF
  open(victim, "wb").write(bytes(data))
  with Checkpointer(str(tmp_path)) as c:
    restored = c.restore(small_state())
    # The damaged step is set aside (kept), so the resumed run can save step 2 again.
    assert c.all_steps() == [1]
    c.save(2, state.replace(step=state.step + 9))
    assert int(c.restore(small_state()).step) == int(state.step) + 9
  assert int(restored.step) == int(state.step)  # step 1's state
  assert len(glob.glob(str(tmp_path / "bad-2-*" / "**" / os.path.basename(victim)),
                       recursive=True)) == 1
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and "step 2" in err[0] and "damaged" in err[0]
  for step in ("1", "2"):  # none good: one error naming the folder
    victim = max((f for f in glob.glob(str(tmp_path / step / "**"), recursive=True)
                  if os.path.isfile(f) and not f.endswith(checkpoint.MANIFEST)),
                 key=os.path.getsize)
    open(victim, "ab").write(b"x")
  with Checkpointer(str(tmp_path)) as c, pytest.raises(CheckpointError,
                                                       match="no intact checkpoint"):
    c.restore(small_state())


def test_a_step_without_its_manifest_is_incomplete(tmp_path, capsys):
  """A kill after Orbax finalised a step and before its manifest was written leaves a step
  that does not count: restore falls back to the step before, with that step's rows."""
  state = small_state()
  with Checkpointer(str(tmp_path)) as c:
    c.save(1, state, extra={"epoch": 0, "epoch_rows": [{"loss": 1.5}]})
    c.save(2, state.replace(step=state.step + 7), extra={"epoch": 0, "epoch_rows": []})
  os.remove(tmp_path / "2" / checkpoint.MANIFEST)
  with Checkpointer(str(tmp_path)) as c:
    restored = c.restore(small_state())
    assert int(restored.step) == int(state.step) and c.all_steps() == [1]
    assert c.extra(1)["epoch_rows"] == [{"loss": 1.5}]
  err = capsys.readouterr().err
  assert "step 2" in err and "incomplete" in err
  # A folder from before manifests (no marker, no manifest anywhere) is still accepted.
  legacy = tmp_path / "legacy"
  with Checkpointer(str(legacy)) as c:
    c.save(3, state)
  os.remove(legacy / checkpoint.MARKER)
  os.remove(legacy / "3" / checkpoint.MANIFEST)
  with Checkpointer(str(legacy)) as c:
    assert int(c.restore(small_state()).step) == int(state.step)


def test_interrupted_saves_leave_no_tmp_folders(tmp_path):
  with Checkpointer(str(tmp_path)) as c:
    c.save(1, small_state())
  os.makedirs(tmp_path / "2.orbax-checkpoint-tmp-1700000000")
  with Checkpointer(str(tmp_path)) as c:
    assert c.all_steps() == [1]
  assert not glob.glob(str(tmp_path / "*tmp*"))


def test_an_unwritable_checkpoint_folder_fails_fast(tmp_path):
  blocker = tmp_path / "file"
  blocker.write_text("not a folder")
  start = time.monotonic()
  with pytest.raises(CheckpointWriteError, match="cannot write checkpoints to .*file/ck"):
    Checkpointer(str(blocker / "ck"))
  # A folder that goes away mid-run: the next save fails at once, naming the path.
  ck = Checkpointer(str(tmp_path / "ck"))
  ck.save(1, small_state())
  import shutil
  shutil.rmtree(tmp_path / "ck")
  (tmp_path / "ck").write_text("now a file")
  with pytest.raises(CheckpointWriteError, match="cannot write checkpoint step 2"):
    ck.save(2, small_state(), force=True)
  assert time.monotonic() - start < 60


# ---- no silent substitution, one-line errors --------------------------------------------------
def test_an_explicit_dataset_is_never_replaced(tmp_path):
  (tmp_path / "empty").mkdir()
  out = _cli("experiments.vae", "--workdir", str(tmp_path / "run"), "--dataset",
             "fashion_mnist", "--data-dir", str(tmp_path / "empty"), *QUIET,
             env={"DLCORE_OFFLINE": "1"})
  assert out.returncode == 3 and "Traceback" not in out.stderr
  assert out.stderr.strip().startswith("error: dataset 'fashion_mnist' is not available")
  assert "--dataset fashion_mnist" not in out.stderr  # no hint back to what just failed
  assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("argv, flag", [
    (["--batch-size", "-5"], "--batch-size"), (["--batch-size", "0"], "--batch-size"),
    (["--epochs", "0"], "--epochs"), (["--devices", "-1"], "--devices"),
    (["--train-limit", "-3"], "--train-limit"), (["--lr", "-1"], "--lr"),
    (["--mode", "pmap", "--devices", "3"], "--batch-size"),
    (["--coordinator", "127.0.0.1:1", "--num-processes", "2"], "--process-id"),
])
def test_bad_values_are_refused_at_parse_time(argv, flag, capsys, tmp_path):
  from experiments import cnn

  with pytest.raises(SystemExit) as e:
    cnn.main(["--workdir", str(tmp_path), *argv])
  assert e.value.code == 2 and not (tmp_path / "config.json").exists()
  err = capsys.readouterr().err.strip()
  assert len(err.splitlines()) == 1 and err.startswith("error: ") and flag in err


def test_an_unknown_dataset_lists_the_choices():
  out = _cli("experiments.cnn", "--dataset", "nonsense")
  assert out.returncode == 2 and "Traceback" not in out.stderr
  assert "fashion_mnist" in out.stderr and "digits" in out.stderr


# ---- model folders ----------------------------------------------------------------------------
@pytest.fixture
def model_folder(tmp_path):
  variables = small_state("mlp").params
  path = checkpoint.save_model(str(tmp_path / "m"), "mlp", {"params": variables},
                               input_shape=(2,))
  return path


@pytest.mark.parametrize("edit, field", [
    (lambda m: m.update(input_shape=[100000, 100000]), "input_shape"),
    (lambda m: m.update(input_shape=[-3]), "input_shape"),
    (lambda m: m.pop("kwargs"), "kwargs"),
    (lambda m: m.update(name="os.system"), "name"),
    (lambda m: m.update(kwargs={"widths": "nonsense"}), "kwargs"),
])
def test_a_tampered_model_json_raises_a_value_error_naming_the_field(model_folder, edit, field):
  path = os.path.join(model_folder, "model.json")
  meta = json.load(open(path))
  edit(meta)
  json.dump(meta, open(path, "w"))
  start = time.monotonic()
  with pytest.raises(ValueError, match=field):
    checkpoint.load_model(model_folder)
  assert time.monotonic() - start < 10


def test_bad_json_and_non_finite_or_integer_arrays_are_refused(model_folder, tmp_path):
  open(os.path.join(model_folder, "model.json"), "w").write("{not json")
  with pytest.raises(checkpoint.ModelFolderError, match="not valid JSON"):
    checkpoint.load_model(model_folder)
  params = small_state("mlp").params
  nan = jax.tree.map(lambda p: p * np.nan, params)
  path = checkpoint.save_model(str(tmp_path / "nan"), "mlp", {"params": nan}, input_shape=(2,))
  with pytest.raises(checkpoint.ModelFolderError, match="NaN or infinite"):
    checkpoint.load_model(path)
  ints = jax.tree.map(lambda p: np.asarray(p).astype(np.int32), params)
  path = checkpoint.save_model(str(tmp_path / "int"), "mlp", {"params": ints}, input_shape=(2,))
  with pytest.raises(checkpoint.ModelFolderError, match="expected floating point"):
    checkpoint.load_model(path)


# ---- files written all or nothing -------------------------------------------------------------
def test_run_files_are_replaced_whole_or_not_at_all(tmp_path, monkeypatch):
  """A stop just before the new summary.json would replace the old one (here: an interrupt
  raised by fsync, after the new text was written) leaves the old file as it was and no
  temporary file; new files get the usual permissions."""
  run = RunDir(str(tmp_path))
  run.update_summary({"1.1": {"loss": 1.0}})
  before = open(tmp_path / "summary.json").read()

  def interrupted(fd):
    raise KeyboardInterrupt

  monkeypatch.setattr(os, "fsync", interrupted)
  with pytest.raises(KeyboardInterrupt):
    run.update_summary({"1.2": {"loss": 2.0}})
  monkeypatch.undo()
  assert open(tmp_path / "summary.json").read() == before
  assert sorted(os.listdir(tmp_path)) == [".lock", "run.json", "summary.json"]  # no temp file
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(tmp_path / "summary.json").st_mode & 0o777 == 0o666 & ~umask
  run.close()


def test_a_model_folder_stopped_between_its_renames_is_put_back(tmp_path, monkeypatch):
  """save_model over an existing folder moves the old one aside, then renames the new one in:
  a stop between the two puts the old one back; a SIGKILL's leftovers are swept next time."""
  old = small_state("mlp", seed=1).params
  path = checkpoint.save_model(str(tmp_path / "m"), "mlp", {"params": old}, input_shape=(2,))
  replace, calls = os.replace, []

  def stop_at_the_third(src, dst):  # manifest-free model.json, old aside, new in
    calls.append(dst)
    if len(calls) == 3:
      raise KeyboardInterrupt
    replace(src, dst)

  monkeypatch.setattr(os, "replace", stop_at_the_third)
  with pytest.raises(KeyboardInterrupt):
    checkpoint.save_model(path, "mlp", {"params": small_state("mlp", seed=2).params},
                          input_shape=(2,))
  monkeypatch.undo()
  assert os.listdir(tmp_path) == ["m"]
  loaded = checkpoint.load_model(path)[1]["params"]
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(loaded), jax.tree.leaves(old)))
  umask = os.umask(0)
  os.umask(umask)
  assert os.stat(path).st_mode & 0o777 == 0o777 & ~umask
  # What a SIGKILL between the renames leaves: the old folder aside, nothing in place.
  aside = tmp_path / ".m.x.old"
  aside.mkdir()
  os.replace(path, aside / "m")
  (tmp_path / ".m.y.tmp").mkdir()
  checkpoint.save_model(str(tmp_path / "other"), "mlp", {"params": old}, input_shape=(2,))
  checkpoint.save_model(path, "mlp", {"params": old}, input_shape=(2,))
  assert sorted(os.listdir(tmp_path)) == ["m", "other"]
