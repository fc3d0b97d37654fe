"""Preemption (`dlcore.preemption`, `--auto-resume`): SIGTERM finishes the step in flight,
saves a checkpoint at it and exits 143; the same command with `--auto-resume` continues to
the uninterrupted run's numbers; with two processes the launcher passes SIGTERM on and both
stop at the same step. Also the persistent compilation cache switch."""
import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from dlcore.checkpoint import load_model
from dlcore.harness import jaxcache
from dlcore.harness.errors import RunDirError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = ["experiments.mnist_mlp", "--dataset", "digits", "--no-compare", "--epochs", "12",
       "--batch-size", "16", "--no-progress"]  # the acceptance command
STOP_S = 30  # SIGTERM to exit


def _history(workdir):
  with open(os.path.join(workdir, "history.jsonl")) as f:
    return [json.loads(line) for line in f]


def _test_loss(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)["2.3.1"]["test_loss"]


def _terminate_after(cmd, workdir, epochs=2):
  """Starts `cmd`, sends SIGTERM once `epochs` epoch records exist; (returncode, stderr,
  seconds from the signal to the exit)."""
  proc = subprocess.Popen([sys.executable, "-m", *cmd], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  path = os.path.join(workdir, "history.jsonl")
  deadline = time.monotonic() + 180
  while time.monotonic() < deadline and proc.poll() is None:
    if os.path.exists(path) and len(open(path).readlines()) >= epochs:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be stopped"
  proc.send_signal(signal.SIGTERM)
  start = time.monotonic()
  _, err = proc.communicate(timeout=STOP_S + 30)
  return proc.returncode, err, time.monotonic() - start


def _run(cmd, timeout=300):
  out = subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout)
  assert out.returncode == 0, out.stderr[-2000:]


def test_sigterm_saves_the_step_and_auto_resume_finishes_bit_for_bit(tmp_path):
  stopped, whole = str(tmp_path / "stopped"), str(tmp_path / "whole")
  rc, err, seconds = _terminate_after([*MLP, "--workdir", stopped], stopped)
  assert rc == 143 and seconds < STOP_S, (rc, seconds, err[-1000:])
  line = err.strip().splitlines()[-1]
  assert line.startswith("error: SIGTERM") and "--auto-resume" in line, line
  step = int(re.search(r"after step (\d+)", line).group(1))
  assert str(step) in os.listdir(os.path.join(stopped, "checkpoints"))  # at the stopped step
  assert step > 2 * 90  # 1437 images / 16 = 90 steps per epoch; two epochs were done

  _run([*MLP, "--workdir", stopped, "--auto-resume"])
  _run([*MLP, "--workdir", whole])
  assert [h["epoch"] for h in _history(stopped)] == list(range(12))  # each epoch once
  assert _history(stopped) == _history(whole)  # the interrupted epoch's means too
  assert _test_loss(stopped) == _test_loss(whole)
  (_, a), (_, b) = load_model(os.path.join(stopped, "model")), load_model(
      os.path.join(whole, "model"))
  for x, y in zip(np.concatenate([np.ravel(v) for v in _leaves(a)]),
                  np.concatenate([np.ravel(v) for v in _leaves(b)])):
    assert x == y  # the final parameters, bit for bit


def _leaves(tree):
  import jax
  return [np.asarray(v) for v in jax.tree.leaves(tree)]


def test_two_processes_stop_together_on_sigterm_to_the_launcher(tmp_path):
  stopped, one = str(tmp_path / "stopped"), str(tmp_path / "one")
  launch = ["dlcore.launch", "-n", "2", "--log-dir", str(tmp_path / "logs")]
  short = [*MLP[:4], "--epochs", "4", "--batch-size", "64", "--no-progress"]  # keep it short
  args = [*short, "--mode", "sharded", "--workdir", stopped]
  rc, err, seconds = _terminate_after([*launch, *args], stopped, epochs=1)
  assert rc == 143 and seconds < STOP_S, (rc, seconds, err[-1500:])
  steps = []
  for i in (0, 1):  # both processes saved the same step
    log = open(tmp_path / "logs" / f"process-{i}.log").read()
    steps.append(int(re.search(r"error: SIGTERM: stopped after step (\d+)", log).group(1)))
  assert steps[0] == steps[1] and str(steps[0]) in os.listdir(os.path.join(stopped,
                                                                            "checkpoints"))
  _run(["dlcore.launch", "-n", "2", "--log-dir", str(tmp_path / "logs2"), *args,
        "--auto-resume"])
  _run([*short, "--mode", "sharded", "--devices", "2", "--workdir", one])
  assert [h["epoch"] for h in _history(stopped)] == list(range(4))
  assert abs(_test_loss(stopped) - _test_loss(one)) < 1e-4  # 2 processes vs 2 devices


def _planar(workdir, *argv):
  from experiments import planar
  return planar.main(["--workdir", str(workdir), "--nets", "0.1", "--steps-scale", "0.1",
                      "--no-progress", *argv])


def test_auto_resume_starts_a_missing_or_empty_folder(tmp_path):
  fresh = _planar(tmp_path / "new", "--auto-resume")
  (tmp_path / "empty").mkdir()
  assert _planar(tmp_path / "empty", "--auto-resume") == fresh
  again = _planar(tmp_path / "new", "--auto-resume")  # a finished run: resumed, unchanged
  assert again["0.1"]["loss"] == fresh["0.1"]["loss"]
  ident = json.load(open(tmp_path / "new" / "run.json"))
  assert len(ident["resumed"]) == 1


def test_auto_resume_refuses_a_run_with_other_settings(tmp_path):
  _planar(tmp_path / "run", "--auto-resume")
  with pytest.raises(RunDirError, match="--steps-scale"):
    _planar(tmp_path / "run", "--auto-resume", "--steps-scale", "0.2")
  with pytest.raises(RunDirError, match="contradict"):
    _planar(tmp_path / "run", "--auto-resume", "--overwrite")


def test_the_compilation_cache_is_on_unless_switched_off(monkeypatch, tmp_path):
  import jax
  monkeypatch.setenv("DLCORE_CACHE", str(tmp_path))
  before = jax.config.jax_compilation_cache_dir
  try:
    monkeypatch.setenv(jaxcache.ENV_OFF, "0")
    assert jaxcache.enable() is None
    monkeypatch.delenv(jaxcache.ENV_OFF)
    assert jaxcache.enable() == str(tmp_path / "jax")
    assert jax.config.jax_compilation_cache_dir == str(tmp_path / "jax")
  finally:
    jax.config.update("jax_compilation_cache_dir", before)


# ---- signals outside training, handlers and requests that do not outlive a run -------------
@pytest.fixture
def handlers():
  """dlcore's handlers installed, as `cli.entry` does; the previous ones put back after."""
  from dlcore import preemption
  previous = preemption.install()
  yield preemption
  preemption.uninstall(previous)


def _signal_self(name="SIGTERM"):
  os.kill(os.getpid(), getattr(signal, name))
  time.sleep(2)  # the handler runs here, at the next bytecode
  raise AssertionError("the signal was not handled")


def test_a_signal_while_tfds_reads_stops_the_load_instead_of_falling_back(handlers,
                                                                         monkeypatch):
  import tensorflow_datasets as tfds
  from dlcore.data import images
  monkeypatch.setattr(tfds, "data_source", lambda *a, **k: _signal_self())
  monkeypatch.setenv("DLCORE_OFFLINE", "1")
  with pytest.raises(handlers.Preempted) as e:  # not digits, not a download
    images.load("mnist", sources=("tfds", "download"), fallback="digits")
  assert e.value.exit_code == 143 and "outside training" in str(e.value)


def test_a_signal_while_a_model_folder_loads_is_a_stop_not_a_damaged_folder(handlers,
                                                                           monkeypatch,
                                                                           tmp_path):
  from dlcore import checkpoint
  from tests.helpers import small_state
  path = checkpoint.save_model(str(tmp_path / "m"), "mlp", {"params": small_state().params},
                               input_shape=(2,))
  monkeypatch.setattr(checkpoint.jax, "eval_shape", lambda *a, **k: _signal_self())
  with pytest.raises(handlers.Preempted):
    checkpoint.load_model(path)


def _fit(n_steps=6, signal_at=None, checkpointer=None):
  """A small fit over `n_steps` one-batch epochs; SIGTERM is sent by the batches of step
  `signal_at`. Returns (steps trained, history)."""
  from dlcore.train import Runner, fit, make_train_step
  from tests.helpers import bce_loss, planar_batch, small_state
  runner, data = Runner("jit"), planar_batch(32)

  def batches(epoch):
    if epoch + 1 == signal_at:
      os.kill(os.getpid(), signal.SIGTERM)
    yield data

  state, history = fit(small_state(), runner.compile(make_train_step(bce_loss)), batches,
                       runner=runner, num_epochs=n_steps, progress=False,
                       checkpointer=checkpointer, desc="toy")
  return int(state.step), history


def test_a_stop_does_not_outlive_its_run(handlers):
  """After one stopped fit, the next fit in the same process trains every step."""
  with pytest.raises(handlers.Preempted) as e:
    _fit(signal_at=2)
  assert e.value.step == 2
  assert _fit()[0] == 6


def test_a_fit_without_checkpoints_says_nothing_was_saved(handlers):
  with pytest.raises(handlers.Preempted) as e:
    _fit(signal_at=3)
  message = str(e.value)
  assert "None" not in message and "saved in" not in message
  assert "'toy' after step 3" in message and "keeps no checkpoint" in message


def test_a_signal_in_the_last_evaluation_stops_after_saving(handlers, tmp_path):
  """SIGTERM while the last epoch is evaluated: fit saves the final step and stops, rather
  than returning to code that would go on (scoring, more fits)."""
  from dlcore.checkpoint import Checkpointer
  from dlcore.train import Runner, fit, make_train_step
  from tests.helpers import bce_loss, planar_batch, small_state
  runner, data = Runner("jit"), planar_batch(32)
  signalled = []

  def evaluator(state, key):
    if not signalled:
      signalled.append(os.kill(os.getpid(), signal.SIGTERM))
    return {"x": 1.0}

  evaluator.every = None  # the last epoch only
  with Checkpointer(str(tmp_path)) as ckpt, pytest.raises(handlers.Preempted) as e:
    fit(small_state(), runner.compile(make_train_step(bce_loss)), lambda e: [data],
        runner=runner, num_epochs=3, progress=False, evaluators=[evaluator],
        checkpointer=ckpt)
  assert e.value.step == 3 and e.value.where == str(tmp_path)
  assert Checkpointer(str(tmp_path)).latest_step() == 3


def test_entry_puts_the_handlers_back_and_forgets_the_request():
  from dlcore import preemption
  from dlcore.harness import cli
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  with pytest.raises(SystemExit) as e:
    cli.entry(_signal_self)
  assert e.value.code == 143
  assert {s: signal.getsignal(s) for s in before} == before
  assert preemption.requested() is None
