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
MLP = ["experiments.mnist_mlp", "--dataset", "digits", "--no-compare", "--epochs", "6",
       "--batch-size", "16", "--no-progress"]
STOP_S = 30  # SIGTERM to exit


def _history(workdir):
  with open(os.path.join(workdir, "history.jsonl")) as f:
    return [json.loads(line) for line in f]


def _test_loss(workdir):
  with open(os.path.join(workdir, "summary.json")) as f:
    return json.load(f)["2.3.1"]["test_loss"]


def _terminate_after(cmd, workdir, epochs=2):
  """Starts `cmd`, sends SIGTERM once `epochs` more epoch records exist; (returncode,
  stderr, seconds from the signal to the exit)."""
  proc = subprocess.Popen([sys.executable, "-m", *cmd], cwd=ROOT, stdout=subprocess.DEVNULL,
                          stderr=subprocess.PIPE, text=True)
  path = os.path.join(workdir, "history.jsonl")
  before = len(open(path).readlines()) if os.path.exists(path) else 0
  deadline = time.monotonic() + 180
  while time.monotonic() < deadline and proc.poll() is None:
    if os.path.exists(path) and len(open(path).readlines()) >= before + epochs:
      break
    time.sleep(0.05)
  assert proc.poll() is None, "the run ended before it could be stopped"
  proc.send_signal(signal.SIGTERM)
  start = time.monotonic()
  _, err = proc.communicate(timeout=STOP_S + 30)
  return proc.returncode, err, time.monotonic() - start


def _run(cmd, timeout=300, env=None):
  out = subprocess.run([sys.executable, "-m", *cmd], cwd=ROOT, capture_output=True, text=True,
                       timeout=timeout, env=env)
  assert out.returncode == 0, out.stderr[-2000:]
  assert "warning: checkpoint" not in out.stderr, out.stderr[-2000:]  # no step was damaged
  return out


def test_sigterm_saves_the_step_and_auto_resume_finishes_bit_for_bit(tmp_path):
  # The loop of single calls, which stops after the step in flight, mid-epoch: the saved
  # epoch rows are what this tests (fused calls stop at a call's end, an epoch's end here:
  # test_a_signal_between_fused_calls_stops_before_the_next_call, tests/test_fuse.py).
  stopped, whole = str(tmp_path / "stopped"), str(tmp_path / "whole")
  mlp = [*MLP, "--fuse", "False"]
  rc, err, seconds = _terminate_after([*mlp, "--workdir", stopped], stopped)
  assert rc == 143 and seconds < STOP_S, (rc, seconds, err[-1000:])
  line = err.strip().splitlines()[-1]
  assert line.startswith("error: SIGTERM") and "--auto-resume" in line, line
  step = int(re.search(r"after step (\d+)", line).group(1))
  assert str(step) in os.listdir(os.path.join(stopped, "checkpoints"))  # at the stopped step
  assert step > 2 * 90  # 1437 images / 16 = 90 steps per epoch; two epochs were done

  _run([*mlp, "--workdir", stopped, "--auto-resume"])
  _run([*MLP, "--workdir", whole])  # (fused: the same numbers)
  assert [h["epoch"] for h in _history(stopped)] == list(range(6))  # each epoch once
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


def _gone(err):
  """Every process the launcher started has exited."""
  pids = [int(p) for p in re.search(r"\(pids ([\d ]+)\)", err).group(1).split()]
  for pid in pids:
    with pytest.raises(ProcessLookupError):
      os.kill(pid, 0)


def test_two_processes_stop_together_at_any_moment_on_sigterm_to_the_launcher(tmp_path):
  """SIGTERM to the launcher while the processes start and load data, after they joined the
  job, in training (both save the same step), after training; each time every process is
  gone within STOP_S with exit 143, and --auto-resume ends with one process's numbers."""
  stopped, one = str(tmp_path / "stopped"), str(tmp_path / "one")
  short = [*MLP[:4], "--epochs", "4", "--batch-size", "64", "--no-progress"]  # keep it short
  args = [*short, "--mode", "sharded", "--workdir", stopped, "--auto-resume"]

  def launch(i):
    return ["dlcore.launch", "-n", "2", "--log-dir", str(tmp_path / f"logs{i}"), *args]

  for i, (marker, after) in enumerate([(None, 1.0), ("[mnist_mlp] mode=", 0)]):
    rc, err, seconds = _stop_at(launch(i), marker, os.environ, after=after)
    assert rc == 143 and seconds < STOP_S, (marker, rc, seconds, err[-1500:])
    _gone(err)
  rc, err, seconds = _terminate_after(launch(2), stopped, epochs=1)
  assert rc == 143 and seconds < STOP_S, (rc, seconds, err[-1500:])
  _gone(err)
  steps = []
  for i in (0, 1):  # both processes saved the same step
    log = open(tmp_path / "logs2" / f"process-{i}.log").read()
    steps.append(int(re.search(r"error: SIGTERM: stopped after step (\d+)", log).group(1)))
  assert steps[0] == steps[1] and str(steps[0]) in os.listdir(os.path.join(stopped,
                                                                            "checkpoints"))
  rc, err, seconds = _stop_at(launch(3), "chapter 3 MLP: test accuracy", os.environ)
  assert rc in (0, 143) and seconds < STOP_S, (rc, seconds, err[-1500:])
  _gone(err)
  _check_folder(stopped)
  _run(launch(4))
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


COUNT_COMPILES = r"""
import json, sys
from jax import monitoring
counts = {}
monitoring.register_event_listener(
    lambda event, **kw: counts.__setitem__(event, counts.get(event, 0) + 1))
from experiments import planar
planar.main(["--workdir", sys.argv[1], "--nets", "0.1", "--steps-scale", "0.05",
             "--no-progress"])
print(json.dumps({k.rsplit("/", 1)[-1]: v for k, v in counts.items()
                  if k.startswith("/jax/compilation_cache/")}))
"""


def test_a_second_run_compiles_nothing(tmp_path):
  """With an empty $DLCORE_CACHE the first run compiles and fills JAX's cache; the same
  command again reads every program back (JAX's own cache events, counted)."""
  env = {**os.environ, "DLCORE_CACHE": str(tmp_path / "cache")}
  env.pop(jaxcache.ENV_OFF, None)
  counts = []
  for run in ("first", "second"):
    out = subprocess.run([sys.executable, "-c", COUNT_COMPILES, str(tmp_path / run)], cwd=ROOT,
                         env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-1500:]
    counts.append(json.loads(out.stdout.strip().splitlines()[-1]))
  first, second = counts
  assert first.get("cache_misses", 0) > 0
  assert second.get("cache_misses", 0) == 0
  assert second["cache_hits"] == second["compile_requests_use_cache"] >= first["cache_misses"]


def test_empty_entries_left_by_a_stop_are_dropped_from_the_jax_cache(tmp_path, monkeypatch):
  """JAX writes a cache entry in place: a stop between its open and its write leaves an
  empty file that JAX would never replace. enable() drops such files."""
  import jax
  monkeypatch.setenv("DLCORE_CACHE", str(tmp_path))
  os.makedirs(tmp_path / "jax")
  (tmp_path / "jax" / "jit_step-abc-cache").write_bytes(b"")
  (tmp_path / "jax" / "jit_other-def-cache").write_bytes(b"x" * 10)
  before = jax.config.jax_compilation_cache_dir
  try:
    jaxcache.enable()
  finally:
    jax.config.update("jax_compilation_cache_dir", before)
  assert os.listdir(tmp_path / "jax") == ["jit_other-def-cache"]


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


@pytest.mark.parametrize("background", [False, True])
def test_a_signal_in_the_last_evaluation_stops_after_saving(handlers, tmp_path, background):
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
  # No periodic save at the last step: the final save is fit's, before it stops.
  with Checkpointer(str(tmp_path), save_every_steps=100, background=background) as ckpt, \
      pytest.raises(handlers.Preempted) as e:
    fit(small_state(), runner.compile(make_train_step(bce_loss)), lambda e: [data],
        runner=runner, num_epochs=3, progress=False, evaluators=[evaluator],
        checkpointer=ckpt)
  assert e.value.step == 3 and e.value.where == str(tmp_path)
  assert Checkpointer(str(tmp_path)).latest_step() == 3


def test_a_stop_at_the_last_step_then_two_resumes_write_each_epoch_once(handlers, tmp_path):
  """A stop after the last step of the last epoch saves that step with the epoch's rows; the
  resumed run writes the epoch's record and has no later step to save. Resumed once more (a
  stop after training), the record is not written again (it was, seen as [0, 1, 1])."""
  from dlcore.checkpoint import Checkpointer
  from dlcore.train import Runner, fit, make_train_step
  from tests.helpers import bce_loss, planar_batch, small_state
  runner, data = Runner("jit"), planar_batch(32)
  records = []

  class History:
    def write(self, split, step, metrics, **extra):
      pass

    def write_epoch(self, record):
      records.append(record)

    def resume(self, step):
      records[:] = [r for r in records if r["step"] <= step]
      return list(records)

  stops = [1]

  def batches(epoch):
    yield data
    if epoch == 1 and stops:  # the first run: stop after epoch 1's last step
      stops.pop()
      os.kill(os.getpid(), signal.SIGTERM)
    yield data

  def run(resume):
    with Checkpointer(str(tmp_path), save_every_steps=2) as ckpt:
      return fit(small_state(), runner.compile(make_train_step(bce_loss)), batches,
                 runner=runner, num_epochs=2, progress=False, writer=History(),
                 checkpointer=ckpt, resume=resume)

  with pytest.raises(handlers.Preempted) as e:
    run(False)
  assert e.value.step == 4 and [r["epoch"] for r in records] == [0]
  _, history = run(True)
  assert [h["epoch"] for h in history] == [0, 1] == [r["epoch"] for r in records]
  _, again = run(True)
  assert [h["epoch"] for h in again] == [0, 1] == [r["epoch"] for r in records]
  assert again == history


def test_a_signal_between_fused_calls_stops_before_the_next_call(handlers, tmp_path):
  """A fused call runs many steps; a signal that came while the epoch was evaluated stops the
  run at the epoch's end (step 11), not after the next call (step 15), keeping the save that
  the epoch's end made (saving step 11 again would fail)."""
  from dlcore import data as dldata
  from dlcore.checkpoint import Checkpointer
  from dlcore.train import Runner, fit, make_train_step, scan_steps
  from tests.helpers import bce_loss, planar_batch, small_state
  runner, data = Runner("jit"), planar_batch(165)
  step = make_train_step(bce_loss)

  def evaluator(state, key):
    os.kill(os.getpid(), signal.SIGTERM)
    return {"x": 1.0}

  with Checkpointer(str(tmp_path), save_every_steps=11) as ckpt, \
      pytest.raises(handlers.Preempted) as e:
    fit(small_state(), runner.compile(step),
        lambda e: dldata.batches(data, 16, shuffle=True, epoch=e), runner=runner,
        num_epochs=3, progress=False, evaluators=[evaluator], checkpointer=ckpt,
        fused_step=runner.compile(scan_steps(step)))
  assert e.value.step == 11 and Checkpointer(str(tmp_path)).latest_step() == 11


def test_entry_puts_the_handlers_back_and_forgets_the_request():
  from dlcore import preemption
  from dlcore.harness import cli
  before = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}
  with pytest.raises(SystemExit) as e:
    cli.entry(_signal_self)
  assert e.value.code == 143
  assert {s: signal.getsignal(s) for s in before} == before
  assert preemption.requested() is None


def test_a_raise_again_asked_by_an_ended_run_never_reaches_the_next_one():
  """A program's stop asks for a raise-again AGAIN_S later; when that run has ended and the
  next one (a notebook's) was stopped and caught its stop, the old request must not stop the
  next one again (seen in CI: a load after a caught stop raised Preempted)."""
  from dlcore import preemption
  from dlcore.harness import cli
  with pytest.raises(SystemExit):
    cli.entry(_signal_self)  # its handler asked for a raise-again
  previous = preemption.install()
  try:
    with pytest.raises(preemption.Preempted):
      _signal_self()
    time.sleep(3 * preemption.AGAIN_S)  # the old raise-again would land here
  finally:
    preemption.uninstall(previous)


def _signal_during(fn):
  """`fn`, with SIGTERM sent to this process once it returned, and time for the handler to
  run before the caller goes on (where the old code raised the stop)."""
  def wrapped(*args, **kwargs):
    out = fn(*args, **kwargs)
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(0.5)
    return out
  return wrapped


def test_a_stop_while_a_model_folder_is_written_waits_for_the_whole_folder(handlers,
                                                                          monkeypatch, tmp_path):
  """A SIGTERM while Orbax writes a model folder (its threads still filling it; CI saw a
  stop there leave a temporary folder in the scorer cache) and while its model.json is
  written: the save ends whole, then the stop is raised; nothing temporary is left."""
  from dlcore import checkpoint, files
  from tests.helpers import small_state
  path = str(tmp_path / "m")
  checkpoint.save_model(path, "mlp", {"params": small_state(seed=1).params}, input_shape=(2,))
  for seed, where in [(2, "orbax"), (3, "model.json")]:
    new = small_state(seed=seed).params
    with monkeypatch.context() as m:
      if where == "orbax":
        make = checkpoint._local_checkpointer

        def signalling():
          ckptr = make()
          ckptr.save = _signal_during(ckptr.save)
          return ckptr
        m.setattr(checkpoint, "_local_checkpointer", signalling)
      else:
        m.setattr(files, "write_json", _signal_during(files.write_json))
      with pytest.raises(handlers.Preempted):
        checkpoint.save_model(path, "mlp", {"params": new}, input_shape=(2,))
    assert sorted(os.listdir(tmp_path)) == ["m"], where  # no temporary folder left
    _, variables = checkpoint.load_model(path)
    assert all(np.array_equal(a, b) for a, b in zip(jax_leaves(variables["params"]),
                                                    jax_leaves(new))), where


def test_a_stop_as_a_temporary_file_is_made_or_renamed_leaves_none(handlers, monkeypatch,
                                                                   tmp_path):
  """`files.replacing`: a SIGTERM just after the temporary file was created leaves the old
  file and no temporary one; just after the rename, the new file."""
  import tempfile
  from dlcore import files
  path = tmp_path / "a.json"
  files.write_json(path, {"v": 1})
  with monkeypatch.context() as m:
    m.setattr(tempfile, "mkstemp", _signal_during(tempfile.mkstemp))
    with pytest.raises(handlers.Preempted):
      files.write_json(path, {"v": 2})
  assert os.listdir(tmp_path) == ["a.json"] and json.load(open(path)) == {"v": 1}
  with monkeypatch.context() as m:
    m.setattr(os, "replace", _signal_during(os.replace))
    with pytest.raises(handlers.Preempted):
      files.write_json(path, {"v": 3})
  assert os.listdir(tmp_path) == ["a.json"] and json.load(open(path)) == {"v": 3}


def test_held_raises_only_a_stop_that_arrived_inside(handlers):
  """A stop inside `held()` waits for the block's end; a request left from an earlier stop
  that a notebook caught is not raised again by a later block."""
  inside = []
  with pytest.raises(handlers.Preempted):
    with handlers.held():
      os.kill(os.getpid(), signal.SIGTERM)
      time.sleep(0.5)
      inside.append(True)  # reached: the stop waited
  assert inside == [True]
  assert handlers.requested() == "SIGTERM"  # a caught stop, its request kept
  with handlers.held():
    pass  # no new stop: nothing raised
  with pytest.raises(handlers.Preempted):  # outside a block a stop is at once, as before
    _signal_self()


def test_a_cleanup_under_held_lets_the_stop_on_its_way_go_on(handlers):
  """A stop that arrives while a cleanup (in a held block) handles an earlier stop does not
  replace it: the first one, with what it says was saved, goes on."""
  original = handlers.Preempted("SIGTERM", 7, "/somewhere")
  with pytest.raises(handlers.Preempted) as caught:
    try:
      raise original
    except handlers.Preempted:
      with handlers.held():
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.5)
      raise
  assert caught.value is original


def test_held_in_another_thread_does_not_hold_the_main_threads_stop(handlers):
  """Signals reach the main thread only: a held block in a worker (the background
  checkpoint writer) neither delays the main thread's stop nor raises one itself."""
  import threading
  inside, leave, errors = threading.Event(), threading.Event(), []

  def worker():
    try:
      with handlers.held():
        inside.set()
        leave.wait(10)
    except BaseException as e:  # noqa: BLE001 - the test reports it
      errors.append(e)

  thread = threading.Thread(target=worker)
  thread.start()
  assert inside.wait(10)
  try:
    with pytest.raises(handlers.Preempted):
      _signal_self()
  finally:
    leave.set()
    thread.join(10)
  assert errors == []


def jax_leaves(tree):
  import jax
  return [np.asarray(x) for x in jax.tree.leaves(tree)]


VAE_TINY = ["experiments.vae", "--dataset", "digits", "--epochs", "1", "--train-limit", "256",
            "--test-limit", "128", "--score-samples", "300", "--classifier-epochs", "1",
            "--no-progress"]


def test_two_runs_at_once_on_an_empty_cache_train_the_scorer_once(tmp_path):
  """Both runs need the scoring CNN: one trains it, the other waits for it and loads it;
  both end with the same numbers (nothing in the cache is read half-written)."""
  env = {**os.environ, "DLCORE_CACHE": str(tmp_path / "cache")}
  procs = [subprocess.Popen([sys.executable, "-m", *VAE_TINY, "--workdir", str(tmp_path / r)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True) for r in ("a", "b")]
  outs = [p.communicate(timeout=300) for p in procs]
  for p, (out, err) in zip(procs, outs):
    assert p.returncode == 0, err[-1500:]
  a, b = (json.load(open(tmp_path / r / "summary.json"))["2.8.1"] for r in ("a", "b"))
  assert sorted([a["classifier"]["trained_in_this_run"],
                 b["classifier"]["trained_in_this_run"]]) == [False, True]
  assert a["classifier"]["weights_sha256"] == b["classifier"]["weights_sha256"]
  for key in ("test_loss", "frechet_distance", "frechet_distance_train_vs_test"):
    assert a[key] == b[key], key
  assert "waiting for another run" in "".join(out for out, _ in outs)
  scorers = os.listdir(tmp_path / "cache" / "scorers")
  assert len([s for s in scorers if not s.endswith(".lock")]) == 1, scorers  # no temp folders


# ---- a stop at any moment ----------------------------------------------------------------
def _stop_at(cmd, marker, env, *, after=0.0, timeout=240):
  """Runs `python -m cmd...`, sends SIGTERM `after` seconds after `marker` appears in its
  output (after the start, when `marker` is None); (returncode, stderr, seconds from the
  signal to the exit)."""
  import threading
  proc = subprocess.Popen([sys.executable, "-m", *cmd], cwd=ROOT, env=env, text=True,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  seen = threading.Event()

  def watch():
    for line in proc.stdout:
      if marker is not None and marker in line:
        seen.set()
    seen.set()  # the process ended

  threading.Thread(target=watch, daemon=True).start()
  if marker is not None:
    assert seen.wait(timeout), f"no {marker!r} within {timeout} s"
  time.sleep(after)
  start = time.monotonic()
  if proc.poll() is None:
    proc.send_signal(signal.SIGTERM)
  try:
    _, err = proc.communicate(timeout=STOP_S)
  except subprocess.TimeoutExpired:
    proc.kill()
    raise AssertionError(f"still running {STOP_S} s after SIGTERM") from None
  return proc.returncode, err, time.monotonic() - start


def _check_folder(*folders):
  """Every JSON file parses, and no temporary file or folder was left behind."""
  for folder in folders:
    for root, dirs, names in os.walk(folder):
      for name in names + dirs:
        assert ".tmp" not in name and not name.endswith(".part"), os.path.join(root, name)
      for name in names:
        if name.endswith(".json"):
          with open(os.path.join(root, name)) as f:
            json.load(f)
        elif name.endswith(".jsonl"):
          with open(os.path.join(root, name)) as f:
            [json.loads(line) for line in f]


def _check_line(err):
  """The last line tells the truth about what was saved."""
  line = err.strip().splitlines()[-1]
  assert line.startswith("error: SIGTERM: ") and "--auto-resume" in line, line
  if (m := re.search(r"after step (\d+); checkpoint saved in (\S+);", line)):
    from dlcore.checkpoint import verify_step  # the step is there, whole, manifest included
    assert verify_step(os.path.join(m.group(2), m.group(1)), manifest_required=True) is None
  if (m := re.search(r"newest checkpoint is step (\d+) in (\S+);", line)):
    assert os.path.isdir(os.path.join(m.group(2), m.group(1))), line
  return line


# (marker in the output, seconds after it): the first compilation (the model's init; a stop
# there crashed Python's exit with SIGSEGV); the scoring CNN's training (its first steps
# compile for ~3 s); the VAE's compilation; its second epoch; after training.
VAE_STOPS = [("[vae] mode=", 1.0), ("training the scoring classifier", 3),
             ("scoring classifier: test accuracy", 0), ("epoch 1:", 0), ("Frechet distance", 0)]


def test_sigterm_at_any_moment_then_auto_resume_gives_the_uninterrupted_numbers(tmp_path):
  """One short flagship run stopped in every phase in turn (data loaded, the scoring CNN's
  training, the VAE's compilation, training, after training), each time continued with
  --auto-resume on a cache that started empty; the end equals an uninterrupted run."""
  cmd = ["experiments.vae", "--dataset", "digits", "--epochs", "2", "--train-limit", "512",
         "--test-limit", "256", "--score-samples", "300", "--classifier-epochs", "1",
         "--no-progress"]
  stopped, cache = tmp_path / "stopped", tmp_path / "cache"
  env = {**os.environ, "DLCORE_CACHE": str(cache)}
  lines = []
  for marker, after in VAE_STOPS:
    rc, err, seconds = _stop_at([*cmd, "--workdir", str(stopped), "--auto-resume"], marker,
                                env, after=after)
    # After the last phase's marker the run may already have finished (exit 0).
    finished = rc == 0 and marker == VAE_STOPS[-1][0] and (stopped / "summary.json").exists()
    assert (rc == 143 or finished) and seconds < STOP_S, (marker, rc, seconds, err[-1500:])
    if rc == 143:
      lines.append(_check_line(err))
    _check_folder(stopped, cache)
    if marker == VAE_STOPS[1][0]:  # a scoring CNN stopped in training leaves no model
      scorers = [cache / "scorers" / d for d in os.listdir(cache / "scorers")
                 if not d.endswith(".lock")]
      if "keeps no checkpoint" in lines[-1]:
        assert not scorers, scorers
      assert all((d / "model.json").exists() for d in scorers)  # else whole
  print("\n".join(lines))
  assert "keeps no checkpoint" in lines[1] or "outside training" in lines[1]  # the scorer's
  assert "checkpoint saved in" in lines[3]  # the VAE's training
  _run([*cmd, "--workdir", str(stopped), "--auto-resume"], env=env)
  whole = tmp_path / "whole"
  _run([*cmd, "--workdir", str(whole)], env={**os.environ, "DLCORE_CACHE": str(tmp_path / "c2")})
  a, b = (json.load(open(d / "summary.json"))["2.8.1"] for d in (stopped, whole))
  for key in ("test_loss", "train_loss", "frechet_distance", "dataset_name"):
    assert a[key] == b[key], key
  assert [h["epoch"] for h in _history(stopped)] == [0, 1]
  assert _history(stopped) == _history(whole)


def test_a_stop_swallowed_by_a_weakref_callback_is_raised_again():
  """Python ignores an exception raised in a weakref callback; a signal handler can run
  inside one. A program's stop is raised again until it is delivered."""
  import weakref
  from dlcore import preemption
  previous = preemption.install(program=True)
  try:
    class Thing:
      pass

    thing, swallowed = Thing(), []

    def callback(ref):
      os.kill(os.getpid(), signal.SIGTERM)
      swallowed.append(sum(range(1000)))  # the handler raises in here: Python ignores it

    ref = weakref.ref(thing, callback)  # noqa: F841
    start = time.monotonic()
    with pytest.raises(preemption.Preempted):
      del thing  # runs the callback
      assert not swallowed  # the raise ended the callback early
      time.sleep(5)
    assert time.monotonic() - start < 3
  finally:
    preemption.delivered()
    preemption.uninstall(previous)


@pytest.mark.parametrize("after", [0.4, 1.2])
def test_sigterm_while_a_program_starts_ends_in_one_line(tmp_path, after):
  """While Python imports JAX and the rest (before cli.entry runs): exit 143 and one line,
  not a traceback or a silent kill; nothing was written."""
  cmd = ["experiments.planar", "--workdir", str(tmp_path / "run"), "--nets", "0.1",
         "--no-progress"]
  rc, err, seconds = _stop_at(cmd, None, os.environ, after=after)
  assert rc == 143 and seconds < STOP_S, (rc, err[-1500:])
  lines = [line for line in err.strip().splitlines() if line.startswith("error: ")]
  assert len(lines) == 1 and "Traceback" not in err, err[-1500:]
  _check_line(err)  # (on a fast machine it may have reached training already)


def test_an_experiment_without_checkpoints_starts_over_and_records_each_step_once(
    handlers, tmp_path, monkeypatch):
  """two_layer keeps no checkpoints: stopped in its second fit, it resumes by starting over,
  and its metric rows and history are those of one uninterrupted run, each step once."""
  from dlcore.train import loop
  from experiments import two_layer
  args = ["--steps", "100", "--fuse", "50", "--no-progress"]
  calls = []

  def stop_in_the_second_fit(step):
    calls.append(step)
    return "SIGTERM" if len(calls) == 3 else None  # 2 calls per fit: the second fit's first

  monkeypatch.setattr(loop.preemption, "reached", stop_in_the_second_fit)
  with pytest.raises(handlers.Preempted, match="keeps no checkpoint"):
    two_layer.main(["--workdir", str(tmp_path / "stopped"), *args])
  monkeypatch.undo()
  two_layer.main(["--workdir", str(tmp_path / "stopped"), "--auto-resume", *args])
  two_layer.main(["--workdir", str(tmp_path / "whole"), *args])

  def rows(run, name):
    return [{k: v for k, v in json.loads(line).items() if k != "time"}
            for line in open(tmp_path / run / name)]

  for name in ("metrics.jsonl", "history.jsonl"):
    assert rows("stopped", name) == rows("whole", name), name


def test_sigterm_while_waiting_to_join_a_job_stops_at_once(tmp_path):
  """A process blocked inside JAX's join (its peer has not come) cannot run a Python signal
  handler; dlcore sees the signal through the wakeup fd and leaves in one line, exit 143,
  instead of when the join times out."""
  from dlcore.launch import free_port
  cmd = [*MLP[:4], "--epochs", "1", "--no-progress", "--mode", "sharded", "--workdir",
         str(tmp_path / "run"), "--coordinator", f"127.0.0.1:{free_port()}",
         "--num-processes", "2", "--process-id", "1"]  # process 0 never starts
  env = {**os.environ, "DLCORE_CONNECT_TIMEOUT": "60"}
  rc, err, seconds = _stop_at(cmd, "data: ", env, after=1.5)
  assert rc == 143 and seconds < 10, (rc, seconds, err[-1500:])
  assert err.strip().splitlines()[-1].startswith("error: SIGTERM: stopped outside training")
