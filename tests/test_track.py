"""Trackers (`dlcore.harness.track`, `--track`): a real MLflow tracking server on 127.0.0.1
(SQLite store in a temporary folder) read back through `MlflowClient`; W&B in offline mode
read back from its run file; faults (a server down before or during a run, a SIGTERM and
`--auto-resume`) and `python -m dlcore.harness.track sync`."""
import glob
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time

import pytest

mlflow = pytest.importorskip("mlflow")

from benchmarks.tracking import MlflowServer  # noqa: E402
from dlcore.harness import track  # noqa: E402
from experiments import mnist_mlp  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MLP = ["--dataset", "digits", "--no-compare", "--no-progress"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


Server = MlflowServer  # starts `mlflow server` on 127.0.0.1 (benchmarks.tracking)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
  s = Server(tmp_path_factory.mktemp("mlflow")).start()
  yield s
  s.stop()


def _rows(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line) for line in f]


def _runs(client, run_dir, experiment="experiments.mnist_mlp"):
  """The MLflow runs of the dlcore run in `run_dir` (parent first)."""
  with open(os.path.join(run_dir, "run.json")) as f:
    run_id = json.load(f)["run_id"]
  exp = client.get_experiment_by_name(experiment)
  assert exp is not None, f"no MLflow experiment {experiment}"
  runs = client.search_runs([exp.experiment_id],
                            filter_string=f"tags.`dlcore.run_id` = '{run_id}'")
  return sorted(runs, key=lambda r: "dlcore.point" in r.data.tags)


def _history(client, run_id, key):
  return [(m.step, m.value) for m in
          sorted(client.get_metric_history(run_id, key), key=lambda m: m.step)]


def _assert_metrics_equal_the_folder(client, run_id, workdir):
  """Every scalar of every row of metrics.jsonl is in MLflow at its step, once."""
  rows = _rows(workdir)
  keys = {}
  for r in rows:
    for k, v in r.items():
      if k not in ("split", "step", "epoch", "time", "scope") and isinstance(v, (int, float)):
        keys.setdefault(f"{r['split']}/{k}", []).append((r["step"], float(v)))
  assert "train/loss" in keys and "eval/accuracy" in keys
  keys["epoch"] = [(r["step"], float(r["epoch"])) for r in rows if r["split"] == "train"]
  for key, want in keys.items():
    assert _history(client, run_id, key) == want, key


def test_a_tracked_run_is_one_mlflow_run_equal_to_its_folder(server, tmp_path):
  """The acceptance command: one run in experiment `experiments.mnist_mlp`, named as the run
  folder, whose metric histories equal metrics.jsonl (and history.jsonl's epochs), with the
  options and the environment as parameters, the summary as final metrics, and the figures
  and summary.json as artifacts."""
  workdir = str(tmp_path / "tracked")
  mnist_mlp.main([*MLP, "--epochs", "3", "--workdir", workdir, "--track", "mlflow",
                  "--tracking-uri", server.uri])
  client = server.client()
  (run,) = _runs(client, workdir)
  assert run.info.run_name == "tracked" and run.info.status == "FINISHED"
  params = run.data.params
  assert params["lr"] == "0.01" and params["epochs"] == "3" and params["dataset"] == "digits"
  assert params["jax.version"] and params["device.kind"] == "cpu"
  _assert_metrics_equal_the_folder(client, run.info.run_id, workdir)
  with open(os.path.join(workdir, "history.jsonl")) as f:
    epochs = [json.loads(line) for line in f]
  assert _history(client, run.info.run_id, "eval/loss") == [
      (e["step"], e["eval"]["loss"]) for e in epochs]
  with open(os.path.join(workdir, "summary.json")) as f:
    summary = json.load(f)
  assert run.data.metrics["summary/2.3.1/test_accuracy"] == summary["2.3.1"]["test_accuracy"]
  artifacts = {a.path for a in client.list_artifacts(run.info.run_id)}
  assert {"summary.json", "config.json", "mnist_mlp_curves.png"} <= artifacts
  with open(os.path.join(workdir, "run.json")) as f:
    assert json.load(f)["tracking"]["mlflow"]["run_id"] == run.info.run_id
  # Each point carries its row's time, so a row sent again (its count lost, as when a server
  # dies between storing a request's metrics and its count) is the same point, stored once.
  times = [(r["step"], round(r["time"] * 1000)) for r in _rows(workdir) if r["split"] == "train"]
  assert [(m.step, m.timestamp) for m in client.get_metric_history(
      run.info.run_id, "train/loss")] == times
  client.set_tag(run.info.run_id, "dlcore.rows", "0")
  assert track.main(["sync", workdir, "--track", "mlflow", "--tracking-uri", server.uri]) == 0
  _assert_metrics_equal_the_folder(client, run.info.run_id, workdir)


def test_without_track_nothing_changes(server, tmp_path):
  """The same run with and without `--track mlflow`: the same numbers in metrics.jsonl and
  summary.json, bit for bit; without it nothing is tracked and run.json names no tracker."""
  plain, tracked = str(tmp_path / "plain"), str(tmp_path / "tracked")
  a = mnist_mlp.main([*MLP, "--epochs", "2", "--workdir", plain])
  b = mnist_mlp.main([*MLP, "--epochs", "2", "--workdir", tracked, "--track", "mlflow",
                      "--tracking-uri", server.uri])
  assert {k: v for k, v in a.items() if k != "timings"} == {
      k: v for k, v in b.items() if k != "timings"}
  strip = lambda rows: [{k: v for k, v in r.items() if k != "time"} for r in rows]  # noqa: E731
  assert strip(_rows(plain)) == strip(_rows(tracked))
  with open(os.path.join(plain, "run.json")) as f:
    assert set(json.load(f)) == {"run_id", "started"}  # run.json as before trackers existed
  with open(os.path.join(tracked, "run.json")) as f:
    assert set(json.load(f)["tracking"]) == {"mlflow"}


def test_seeds_and_a_sweep_give_a_parent_and_a_child_run_per_point(server, tmp_path):
  """`--sweep lr=... --seeds 2`: a parent run for the command, one child run per point with
  the point's lr as its parameter; in each child the mean under the metric's name, `/std`
  and each seed's value under `/seed_<s>`, equal to the members' values in metrics.jsonl."""
  workdir = str(tmp_path / "sweep")
  mnist_mlp.main([*MLP, "--epochs", "2", "--workdir", workdir, "--sweep", "lr=0.01,0.05",
                  "--seeds", "2", "--seed", "3", "--track", "mlflow", "--tracking-uri",
                  server.uri])
  client = server.client()
  parent, *children = _runs(client, workdir)
  assert "dlcore.point" not in parent.data.tags and len(children) == 2
  assert {c.data.params["lr"] for c in children} == {"0.01", "0.05"}
  assert all(c.data.tags["mlflow.parentRunId"] == parent.info.run_id for c in children)
  evals = [r for r in _rows(workdir) if r["split"] == "eval"]
  for c in children:
    p = 0 if c.data.params["lr"] == "0.01" else 1  # members are point-major
    members = [r["per_seed"]["accuracy"][2 * p:2 * p + 2] for r in evals]
    for i, seed in enumerate((3, 4)):
      assert _history(client, c.info.run_id, f"eval/accuracy/seed_{seed}") == [
          (r["step"], m[i]) for r, m in zip(evals, members)]
    got = dict(_history(client, c.info.run_id, "eval/accuracy"))
    std = dict(_history(client, c.info.run_id, "eval/accuracy/std"))
    for r, m in zip(evals, members):
      assert got[r["step"]] == pytest.approx(sum(m) / 2, abs=1e-12)
      assert std[r["step"]] == pytest.approx(abs(m[0] - m[1]) / 2 ** 0.5, abs=1e-12)
  assert "summary/2.3.1/test_accuracy" in parent.data.metrics


def _one_warning(err: str) -> str:
  """stderr holds one line, the tracker's warning, and nothing else."""
  lines = [line for line in err.splitlines() if line.strip()]
  assert len(lines) == 1, err[-3000:]
  assert lines[0].startswith("warning: mlflow:") and "dlcore.harness.track sync" in lines[0]
  return lines[0]


def test_a_server_that_is_down_costs_one_line_and_sync_sends_the_run(server, tmp_path, capsys):
  """No server at the URI: the run ends normally with its folder complete and one warning
  line; `python -m dlcore.harness.track sync` then sends the whole run to a live server."""
  workdir = str(tmp_path / "offline")
  down = f"http://127.0.0.1:{_free_port()}"
  start = time.monotonic()
  summary = mnist_mlp.main([*MLP, "--epochs", "2", "--workdir", workdir, "--track", "mlflow",
                            "--tracking-uri", down])
  assert time.monotonic() - start < 120
  assert summary["2.3.1"]["epochs"] == 2
  assert os.path.exists(os.path.join(workdir, "summary.json"))
  _one_warning(capsys.readouterr().err)
  assert track.main(["sync", workdir, "--track", "mlflow", "--tracking-uri", server.uri]) == 0
  (run,) = _runs(server.client(), workdir)
  assert run.info.status == "FINISHED"
  _assert_metrics_equal_the_folder(server.client(), run.info.run_id, workdir)
  # A second sync sends nothing twice.
  assert track.main(["sync", workdir, "--track", "mlflow", "--tracking-uri", server.uri]) == 0
  _assert_metrics_equal_the_folder(server.client(), run.info.run_id, workdir)


def _wait_for_epochs(workdir, n, proc, timeout=180):
  path = os.path.join(workdir, "history.jsonl")
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline and proc.poll() is None:
    if os.path.exists(path) and len(open(path).readlines()) >= n:
      return
    time.sleep(0.05)
  raise AssertionError(f"the run ended or took too long before epoch {n}")


def _start(args, **kw):
  return subprocess.Popen([sys.executable, "-m", "experiments.mnist_mlp", *args], cwd=ROOT,
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, **kw)


def test_sigterm_and_auto_resume_continue_one_mlflow_run_with_each_epoch_once(server, tmp_path):
  workdir = str(tmp_path / "stopped")
  args = [*MLP, "--epochs", "6", "--batch-size", "16", "--workdir", workdir, "--auto-resume",
          "--track", "mlflow", "--tracking-uri", server.uri]
  proc = _start(args)
  _wait_for_epochs(workdir, 2, proc)
  proc.send_signal(signal.SIGTERM)
  _, err = proc.communicate(timeout=60)
  assert proc.returncode == 143, err[-2000:]
  out = subprocess.run([sys.executable, "-m", "experiments.mnist_mlp", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  assert out.returncode == 0 and "warning" not in out.stderr, out.stderr[-2000:]
  client = server.client()
  (run,) = _runs(client, workdir)
  assert run.info.status == "FINISHED"
  with open(os.path.join(workdir, "history.jsonl")) as f:
    epochs = [json.loads(line) for line in f]
  assert len(epochs) == 6
  assert _history(client, run.info.run_id, "eval/loss") == [
      (e["step"], e["eval"]["loss"]) for e in epochs]
  _assert_metrics_equal_the_folder(client, run.info.run_id, workdir)


def test_a_server_killed_mid_run_leaves_the_folder_complete_and_sync_completes(tmp_path):
  s = Server(tmp_path / "store").start()
  try:
    workdir = str(tmp_path / "run")
    proc = _start([*MLP, "--epochs", "30", "--batch-size", "16", "--workdir", workdir,
                   "--track", "mlflow", "--tracking-uri", s.uri])
    deadline = time.monotonic() + 180
    while proc.poll() is None and time.monotonic() < deadline:  # until the server has rows
      if os.path.exists(os.path.join(workdir, "run.json")):
        runs = _runs(s.client(), workdir) if s.client().get_experiment_by_name(
            "experiments.mnist_mlp") else []
        if runs and _history(s.client(), runs[0].info.run_id, "train/loss"):
          break
      time.sleep(0.2)
    assert proc.poll() is None, "the run ended before the server was killed"
    s.stop()
    _, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-2000:]
    _one_warning(err)
    with open(os.path.join(workdir, "history.jsonl")) as f:
      assert len(f.readlines()) == 30
    assert os.path.exists(os.path.join(workdir, "summary.json"))
    s.start()
    (run,) = _runs(s.client(), workdir)
    assert run.info.status == "RUNNING"  # it stopped mid-run
    assert len(_history(s.client(), run.info.run_id, "eval/loss")) < 30
    assert track.main(["sync", workdir, "--track", "mlflow"]) == 0  # the URI from run.json
    (run,) = _runs(s.client(), workdir)
    assert run.info.status == "FINISHED"
    _assert_metrics_equal_the_folder(s.client(), run.info.run_id, workdir)
  finally:
    s.stop()


def test_track_without_the_package_stops_before_any_work(monkeypatch, capsys, tmp_path):
  monkeypatch.setitem(sys.modules, "mlflow", None)
  with pytest.raises(SystemExit) as e:
    mnist_mlp.main([*MLP, "--workdir", str(tmp_path / "x"), "--track", "mlflow"])
  assert e.value.code == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert err == ['error: --track mlflow needs MLflow, which is not installed; install it '
                 'with: pip install "dlcore[mlflow]"']
  assert not os.path.exists(tmp_path / "x")


# ---- W&B offline --------------------------------------------------------------------------
def _wandb_records(path):
  """The records of a W&B run file (`run-<id>.wandb`): LevelDB's log format (32 KiB blocks,
  a 7-byte header per chunk) after W&B's 7-byte file header, each a protobuf `Record`."""
  from wandb.proto import wandb_internal_pb2 as pb
  with open(path, "rb") as f:
    data = f.read()
  assert data[:4] == b":W&B"
  pos, block, out, part = 7, 32768, [], b""
  while pos + 7 <= len(data):
    left = block - pos % block
    if left < 7:  # a block's tail too short for a header is padding
      pos += left
      continue
    length, kind = struct.unpack("<HB", data[pos + 4:pos + 7])
    if length == 0 and kind == 0:
      pos += left
      continue
    part = data[pos + 7:pos + 7 + length] if kind == 2 else part + data[pos + 7:pos + 7 + length]
    pos += 7 + length
    if kind in (1, 4):  # a whole record, or the last chunk of one
      r = pb.Record()
      r.ParseFromString(part)
      out.append(r)
      part = b""
  return out


def test_wandb_offline_holds_every_metric_row(tmp_path, monkeypatch):
  pytest.importorskip("wandb")
  monkeypatch.setenv("WANDB_MODE", "offline")
  monkeypatch.setenv("WANDB_PROJECT", "dlcore-test")
  workdir = str(tmp_path / "wb")
  mnist_mlp.main([*MLP, "--epochs", "2", "--workdir", workdir, "--track", "wandb"])
  (path,) = glob.glob(os.path.join(workdir, "wandb", "offline-run-*", "run-*.wandb"))
  logged, runs = [], []
  for r in _wandb_records(path):
    if r.WhichOneof("record_type") == "history":
      logged.append({i.key or "/".join(i.nested_key): json.loads(i.value_json)
                     for i in r.history.item})
    if r.WhichOneof("record_type") == "run":
      runs.append((r.run.project, r.run.display_name))
  assert runs and set(runs) == {("dlcore-test", "wb")}
  for row in _rows(workdir):
    for k in ("loss", "accuracy"):
      key = f"{row['split']}/{k}"
      assert any(h.get("step") == row["step"] and h.get(key) == row[k] for h in logged), \
          (key, row["step"])
  files = os.listdir(os.path.dirname(path) + "/files")
  assert "summary.json" in files and "mnist_mlp_curves.png" in files


def test_a_server_that_never_answers_times_out_and_the_run_finishes(tmp_path, capsys,
                                                                    monkeypatch):
  """A tracking URI that accepts connections and never answers (a hung server): each request
  times out (here after 2 s), the run finishes with its folder complete and one warning line,
  and its end waits for the tracker no longer than `CLOSE_WAIT_S`."""
  monkeypatch.delenv("MLFLOW_HTTP_REQUEST_TIMEOUT", raising=False)  # dlcore's default applies
  monkeypatch.delenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", raising=False)
  monkeypatch.setattr(track, "CALL_TIMEOUT_S", 2)
  with socket.socket() as hole:
    hole.bind(("127.0.0.1", 0))
    hole.listen(16)  # connections are queued by the kernel and never read
    uri = f"http://127.0.0.1:{hole.getsockname()[1]}"
    workdir = str(tmp_path / "hung")
    start = time.monotonic()
    summary = mnist_mlp.main([*MLP, "--epochs", "2", "--workdir", workdir, "--track", "mlflow",
                              "--tracking-uri", uri])
    took = time.monotonic() - start
  assert summary["2.3.1"]["epochs"] == 2 and os.path.exists(os.path.join(workdir, "summary.json"))
  line = _one_warning(capsys.readouterr().err)
  assert "timed out" in line, line
  assert took < 60
  assert os.environ["MLFLOW_HTTP_REQUEST_TIMEOUT"] == "2"
  assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "0"


def test_sync_of_a_folder_without_a_run_is_one_line(tmp_path, capsys):
  assert track.main(["sync", str(tmp_path), "--track", "mlflow"]) == 2
  assert capsys.readouterr().err.strip().splitlines() == [
      f"error: {tmp_path} holds no dlcore run (no run.json); pass a run folder"]


def test_a_sweep_over_shapes_puts_each_program_s_members_in_its_points(server, tmp_path):
  """`--sweep lr=... batch_size=...`: one program per batch size (rows scoped
  "sweep batch_size=32"), four child runs, each holding its own member's numbers."""
  workdir = str(tmp_path / "shapes")
  mnist_mlp.main([*MLP, "--epochs", "1", "--workdir", workdir, "--sweep", "lr=0.01,0.05",
                  "batch_size=32,64", "--track", "mlflow", "--tracking-uri", server.uri])
  client = server.client()
  parent, *children = _runs(client, workdir)
  points = {(c.data.params["batch_size"], c.data.params["lr"]): c for c in children}
  assert set(points) == {(b, lr) for b in ("32", "64") for lr in ("0.01", "0.05")}
  for (batch, lr), child in points.items():
    i = ("0.01", "0.05").index(lr)
    for split in ("train", "eval"):
      want = [(r["step"], r["per_seed"]["loss"][i]) for r in _rows(workdir)
              if r["split"] == split and r["scope"] == f"sweep batch_size={batch}"]
      assert want and _history(client, child.info.run_id, f"{split}/loss") == want
    want = [(r["step"], float(r["epoch"])) for r in _rows(workdir)
            if r["split"] == "train" and r["scope"] == f"sweep batch_size={batch}"]
    assert _history(client, child.info.run_id, "epoch") == want


class _Recorder(track._Backend):
  """A tracker that keeps what it is sent, and the rows each run holds, in memory."""
  held: dict = {}

  def open(self, info, saved):
    self.key = info.run_id
    _Recorder.held.setdefault(self.key, {"points": [], "rows": {}})
    return {}

  def rows_held(self):
    return dict(_Recorder.held[self.key]["rows"])

  def params(self, params):
    pass

  def metrics(self, child, points, rows):
    _Recorder.held[self.key]["points"] += [(p.key, p.step, p.value) for p in points]
    _Recorder.held[self.key]["rows"][child] = rows


def _recorded(path, run, key):
  return [(s, v) for k, s, v in _Recorder.held[run.run_id]["points"] if k == key]


def test_every_row_reaches_a_tracker_once_across_fits_resumes_and_syncs(tmp_path, monkeypatch):
  """Two `fit`s of one run (scoped, each from step 1), a resume of the second from step 1
  (`RunDir.resume` drops its later rows, which are computed again), then a run that keeps no
  checkpoints and starts over (`restart_rows`), then a sync: each row reaches the tracker
  once, in the folder's order."""
  from dlcore.harness.rundir import RunDir
  monkeypatch.setitem(track._BACKEND, "mlflow", _Recorder)
  monkeypatch.setattr(track, "SEND_EVERY_S", 0.0)
  path = str(tmp_path / "run")
  first = [(s, 1.0 / s) for s in (1, 2, 3)]
  second = [(s, 10.0 + s) for s in (1, 2, 3, 4)]
  run = RunDir(path, track=("mlflow",), experiment="experiments.test")
  for s, v in first:
    run.scoped("a").write("train", s, {"loss": v})
  for s, v in second[:3]:  # killed after step 3, its checkpoint at step 1
    run.scoped("b").write("train", s, {"loss": v})
  run.close()
  run = RunDir(path, track=("mlflow",), resume=True, experiment="experiments.test")
  run.scoped("a").resume(3)
  run.scoped("b").resume(1)  # drops b's steps 2 and 3
  for s, v in second[1:]:
    run.scoped("b").write("train", s, {"loss": v})
  run.close()
  assert _recorded(path, run, "a/train/loss") == first
  assert _recorded(path, run, "b/train/loss") == second
  assert [(r["step"], r["loss"]) for r in _rows(path)] == first + second
  # A run without checkpoints resumed: it starts over, and writes the same rows again.
  run = RunDir(path, track=("mlflow",), resume=True, experiment="experiments.test")
  run.restart_rows()
  for s, v in first:
    run.scoped("a").write("train", s, {"loss": v})
  for s, v in second:
    run.scoped("b").write("train", s, {"loss": v})
  run.close()
  assert track.sync(path, ["mlflow"]) == {"mlflow": True}
  assert _recorded(path, run, "a/train/loss") == first
  assert _recorded(path, run, "b/train/loss") == second


class _Stuck(_Recorder):
  def metrics(self, child, points, rows):
    time.sleep(30)


def test_a_tracker_that_hangs_costs_the_run_at_most_close_wait_s(tmp_path, monkeypatch, capsys):
  """A tracker stuck in a request: the run's close gives up after `CLOSE_WAIT_S` with one
  warning line, and the folder stays locked until the tracker's thread is done."""
  from dlcore.harness.rundir import RunDir, RunDirError
  monkeypatch.setitem(track._BACKEND, "mlflow", _Stuck)
  monkeypatch.setattr(track, "SEND_EVERY_S", 0.0)
  monkeypatch.setattr(track, "CLOSE_WAIT_S", 1.0)
  path = str(tmp_path / "run")
  run = RunDir(path, track=("mlflow",), experiment="experiments.test")
  run.write("train", 1, {"loss": 1.0})
  start = time.monotonic()
  run.close()
  assert time.monotonic() - start < 5
  (line,) = [x for x in capsys.readouterr().err.splitlines() if x.strip()]
  assert line.startswith("warning: mlflow: still sending after the run ended")
  with pytest.raises(RunDirError, match="in use"):
    RunDir(path, resume=True)


def test_a_scope_naming_two_shape_options_maps_members_to_their_points():
  """classify's scope for a program of two shape options is "sweep hidden=64,batch_size=32":
  its members are the numeric points (lr), and each goes to the child run of its full point."""
  layout = track.Layout(seed=0, sweep={"lr": ["0.01", "0.05"], "hidden": ["32", "64"],
                                       "batch_size": ["32", "64"]})
  row = {"split": "eval", "step": 7, "scope": "sweep hidden=64,batch_size=32", "loss": 0.5,
         "per_seed": {"loss": [0.4, 0.6]}}
  got = {(child, p.key): p.value for child, p in layout.points(row)}
  assert got == {("hidden=64 batch_size=32 lr=0.01", "eval/loss"): 0.4,
                 ("hidden=64 batch_size=32 lr=0.05", "eval/loss"): 0.6}
  # A train row's epoch: once per point, however many metrics the row has.
  train = dict(row, split="train", epoch=2, accuracy=0.9, per_seed={
      "loss": [0.4, 0.6], "accuracy": [0.8, 1.0]})
  epochs = [(c, p.value) for c, p in layout.points(train) if p.key == "epoch"]
  assert sorted(epochs) == [("hidden=64 batch_size=32 lr=0.01", 2.0),
                            ("hidden=64 batch_size=32 lr=0.05", 2.0)]


def test_wandb_online_without_a_key_is_one_warning_not_a_prompt(tmp_path, capsys, monkeypatch):
  """Online W&B with no key is refused before W&B starts (at a terminal W&B would ask for a
  key from the mirror's thread), with one line that names the fixes; the run finishes."""
  pytest.importorskip("wandb")
  monkeypatch.delenv("WANDB_MODE", raising=False)
  monkeypatch.delenv("WANDB_API_KEY", raising=False)
  monkeypatch.setenv("NETRC", str(tmp_path / "no-netrc"))
  workdir = str(tmp_path / "online")
  summary = mnist_mlp.main([*MLP, "--epochs", "1", "--workdir", workdir, "--track", "wandb"])
  assert summary["2.3.1"]["epochs"] == 1
  err = [line for line in capsys.readouterr().err.splitlines() if "wandb" in line.lower()]
  assert len(err) == 1 and err[0].startswith("warning: wandb: no W&B API key (run `wandb "
                                             "login` or set WANDB_API_KEY; WANDB_MODE=offline "
                                             "records the run locally)"), err
  assert not os.path.exists(os.path.join(workdir, "wandb"))


def test_sigkill_after_rows_past_the_checkpoint_were_sent_then_each_row_once(server, tmp_path):
  """The resume that drops rows: SIGKILL once MLflow holds a row past the latest checkpoint;
  `--auto-resume` drops that row from the folder and computes it again; MLflow then holds
  every row once, equal to the folder."""
  workdir = str(tmp_path / "killed")
  args = [*MLP, "--epochs", "40", "--batch-size", "16", "--workdir", workdir, "--auto-resume",
          "--track", "mlflow", "--tracking-uri", server.uri]
  proc = _start(args)
  client, deadline, past = server.client(), time.monotonic() + 180, None
  while proc.poll() is None and time.monotonic() < deadline:
    saved = [int(d) for d in os.listdir(os.path.join(workdir, "checkpoints"))
             if d.isdigit()] if os.path.isdir(os.path.join(workdir, "checkpoints")) else []
    exp = client.get_experiment_by_name("experiments.mnist_mlp")
    runs = _runs(client, workdir) if saved and exp else []
    if runs:
      steps = [s for s, _ in _history(client, runs[0].info.run_id, "train/loss")]
      if steps and max(steps) > max(saved):
        past = max(steps)
        proc.kill()
        break
    time.sleep(0.1)
  proc.communicate(timeout=60)
  assert past is not None, "the run ended before it could be killed past a checkpoint"
  out = subprocess.run([sys.executable, "-m", "experiments.mnist_mlp", *args], cwd=ROOT,
                       capture_output=True, text=True, timeout=300)
  # (a kill in a checkpoint's save may leave it damaged: the resume says so; not the tracker)
  assert out.returncode == 0 and "warning: mlflow" not in out.stderr, out.stderr[-2000:]
  (run,) = _runs(client, workdir)
  assert run.info.status == "FINISHED"
  _assert_metrics_equal_the_folder(client, run.info.run_id, workdir)
  assert past in [r["step"] for r in _rows(workdir)]  # that row is in the folder once more


def test_mlflow_s_count_of_rows_is_stored_with_the_last_metric(monkeypatch):
  """MLflow takes at most 1000 entities a request: the count of rows held travels with the
  last 999 metrics, so a failure before the last request leaves the count where it was."""
  requests = []

  class Client:
    def log_batch(self, run_id, metrics=(), tags=()):
      assert len(metrics) + len(tags) <= 1000
      requests.append((len(metrics), [(t.key, t.value) for t in tags]))

  b = track.MlflowBackend()
  b.client, b.run_id, b.children = Client(), "r", {}
  for n in (5, 999, 1000, 2500):
    requests.clear()
    b.metrics(None, [track.Point("k", i, 0.0, 0) for i in range(n)], rows=7)
    assert sum(m for m, _ in requests) == n
    assert [t for _, t in requests] == [[]] * (len(requests) - 1) + [[("dlcore.rows", "7")]]
