"""`--sweep` (issue 34): the points of a grid crossed with seeds as members of one program.
Member (point P, seed S) is the single run with P's options and `--seed S`; an unknown name
stops before any work; without `--sweep` nothing changes."""
import csv
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlcore import optim
from tests.test_members import _assert_close, _mlp

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def test_a_member_of_a_sweep_is_the_single_run_with_its_point_and_seed(tmp_path):
  """The issue's acceptance: (lr 0.05, seed 1) of `--sweep lr=0.01,0.05 --seeds 2` equals
  `--lr 0.05 --seed 1` under jit and under --mode sharded --devices 2."""
  sweep = ["--sweep", "lr=0.01,0.05", "--seeds", "2"]
  jit = _mlp(tmp_path, "jit", *sweep)
  sharded = _mlp(tmp_path, "sharded", *sweep, "--mode", "sharded", "--devices", "2")
  one = _mlp(tmp_path, "one", "--lr", "0.05", "--seed", "1")
  other = _mlp(tmp_path, "other", "--lr", "0.01", "--seed", "1")  # off the diagonal
  for entry in (jit, sharded):
    points = [row["point"] for row in entry["sweep"]]
    assert points == [{"lr": 0.01}, {"lr": 0.05}]
    _assert_close(entry["sweep"][1]["per_seed"]["test_loss"][1], one["test_loss"], rtol=1e-4)
    _assert_close(entry["sweep"][0]["per_seed"]["test_loss"][1], other["test_loss"],
                  rtol=1e-4)
    best = max(entry["sweep"], key=lambda r: r["test_accuracy"])
    assert entry["best_point"] == best["point"] and entry["lr"] == best["point"]["lr"]
    assert entry["test_accuracy"] == best["test_accuracy"]
  with open(tmp_path / "jit" / "sweep.csv") as f:
    rows = list(csv.DictReader(f))
  assert [(r["lr"], r["seed"]) for r in rows] == [("0.01", "0"), ("0.01", "1"), ("0.05", "0"),
                                                  ("0.05", "1")]
  assert float(rows[1]["test_loss"]) == jit["sweep"][0]["per_seed"]["test_loss"][1]
  for name in ("sweep_test_accuracy.png", "sweep_curves_test_loss.png"):
    assert os.path.getsize(tmp_path / "jit" / name) > 1000


def test_a_grid_of_two_names_with_one_seed(tmp_path):
  """lr x momentum, one seed: four members; (lr 0.05, momentum 0.5) is `--lr 0.05
  --momentum 0.5`; the best line is the last of the classifier's output."""
  entry = _mlp(tmp_path, "grid", "--sweep", "lr=0.01,0.05", "momentum=0.5,0.9")
  assert [r["point"] for r in entry["sweep"]] == [
      {"lr": 0.01, "momentum": 0.5}, {"lr": 0.01, "momentum": 0.9},
      {"lr": 0.05, "momentum": 0.5}, {"lr": 0.05, "momentum": 0.9}]
  one = _mlp(tmp_path, "one", "--lr", "0.05", "--momentum", "0.5")
  _assert_close(entry["sweep"][2]["test_loss"], one["test_loss"], rtol=1e-4)
  assert "per_seed" not in entry["sweep"][2]


@pytest.mark.parametrize("spec, words", [
    ("nosuch=1,2", "cannot sweep 'nosuch'; sweepable: lr, momentum"),
    ("lr=0.1,abc", "'abc' is not a float"),
    ("lr=-1,0.1", "must be >= 0.0"),
    ("lr", "give NAME=V1,V2"),
])
def test_a_bad_sweep_stops_before_any_work_in_one_line(tmp_path, spec, words):
  out = subprocess.run([sys.executable, "-m", "experiments.mnist_mlp", "--dataset", "digits",
                        "--workdir", str(tmp_path / "run"), "--sweep", spec],
                       cwd=ROOT, capture_output=True, text=True, timeout=120)
  assert out.returncode == 2, out.stderr[-1000:]
  lines = out.stderr.strip().splitlines()
  assert len(lines) == 1 and words in lines[0], out.stderr
  assert not os.path.exists(tmp_path / "run")


def test_an_experiment_without_sweepable_options_refuses_sweep(tmp_path):
  from experiments import planar
  with pytest.raises(SystemExit) as e:
    planar.main(["--workdir", str(tmp_path / "run"), "--sweep", "lr=0.1,0.2"])
  assert e.value.code == 2 and not os.path.exists(tmp_path / "run")


def test_a_resume_with_another_grid_is_refused(tmp_path):
  from dlcore.harness.errors import RunDirError
  _mlp(tmp_path, "run", "--sweep", "lr=0.01,0.05", "--epochs", "1")
  with pytest.raises((RunDirError, SystemExit)):
    _mlp(tmp_path, "run", "--sweep", "lr=0.01,0.1", "--epochs", "1", "--resume")


def test_a_run_saved_before_sweep_existed_resumes(tmp_path):
  """config.json of a run made before --sweep existed has no "sweep": it resumes."""
  _mlp(tmp_path, "run", "--epochs", "1")
  path = tmp_path / "run" / "config.json"
  config = json.load(open(path))
  del config["common"]["sweep"]
  json.dump(config, open(path, "w"))
  again = _mlp(tmp_path, "run", "--epochs", "1", "--resume")
  assert "sweep" not in again


def test_injected_hyperparameters_compute_what_the_plain_optimizer_does():
  """The optimizer behind a sweep: lr and momentum as arrays in the state, set per member,
  equal the plain optimizer's updates bit for bit (a schedule's base rate included)."""
  params = {"w": jnp.arange(6.0).reshape(2, 3)}
  grads = [{"w": jnp.sin(jnp.arange(6.0) + i).reshape(2, 3)} for i in range(4)]

  def make(lr, momentum):
    return optim.make_optimizer("momentum", optim.step_decay(lr, 2, 0.1), momentum=momentum)

  def run(tx, state):
    p = params
    for g in grads:
      u, state = tx.update(g, state, p)
      p = jax.tree.map(lambda a, b: a + b, p, u)
    return p

  tx = optim.injected(make, lr=0.01, momentum=0.9)
  state = optim.set_hyperparams(tx.init(params), {"lr": 0.05, "momentum": 0.5})
  assert float(optim.hyperparams_of(state)["lr"]) == np.float32(0.05)
  plain = make(0.05, 0.5)
  np.testing.assert_array_equal(run(tx, state)["w"], run(plain, plain.init(params))["w"])
  with pytest.raises(ValueError, match="no injected hyperparameter beta"):
    optim.set_hyperparams(tx.init(params), {"beta": 1.0})
