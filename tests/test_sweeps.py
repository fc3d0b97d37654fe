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
from dlcore.harness.sweeps import Sweep
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


def test_a_grid_of_two_names_with_one_seed(tmp_path, capsys):
  """lr x momentum, one seed: four members; (lr 0.05, momentum 0.5) is `--lr 0.05
  --momentum 0.5`; the best line is the last of the classifier's output."""
  entry = _mlp(tmp_path, "grid", "--sweep", "lr=0.01,0.05", "momentum=0.5,0.9")
  last = [line for line in capsys.readouterr().out.splitlines() if line.strip()][-1]
  best = entry["best_point"]
  assert last == (f"best point: lr={best['lr']:g} momentum={best['momentum']:g} with "
                  f"test_accuracy {entry['test_accuracy']:.4f}"), last
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


def test_an_experiment_without_sweepable_options_refuses_sweep(tmp_path, capsys):
  from experiments import two_layer
  with pytest.raises(SystemExit) as e:
    two_layer.main(["--workdir", str(tmp_path / "run"), "--sweep", "lr=0.1,0.2"])
  assert e.value.code == 2 and not os.path.exists(tmp_path / "run")
  assert "sweepable: none" in capsys.readouterr().err


def test_a_resume_with_another_grid_is_refused(tmp_path):
  """The grid is a setting: the same grid resumes (to the same numbers), another one is
  refused, and --allow-change cannot change a sweep's numbers (they are in the checkpoint)."""
  from dlcore.harness.errors import RunDirError
  first = _mlp(tmp_path, "run", "--sweep", "lr=0.01,0.05", "--epochs", "1")
  with pytest.raises(RunDirError, match=r"--sweep \['lr=0.01,0.05'\] -> \['lr=0.01,0.1'\]"):
    _mlp(tmp_path, "run", "--sweep", "lr=0.01,0.1", "--epochs", "1", "--resume")
  again = _mlp(tmp_path, "run", "--sweep", "lr=0.01,0.05", "--epochs", "1", "--resume")
  assert again["sweep"] == first["sweep"]
  with pytest.raises(SystemExit) as e:
    _mlp(tmp_path, "run", "--sweep", "lr=0.01,0.1", "--epochs", "1", "--resume",
         "--allow-change", "sweep")
  assert e.value.code == 2


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


def test_without_sweep_the_optimizer_is_todays():
  """No --sweep: the experiments' optimizer is the factory's own (no injected state), so the
  state tree, checkpoints and numbers are what they were; with one, it is injected."""
  from dlcore.harness import cli
  from dlcore.harness.seeds import Seeds

  def make(lr):
    return optim.make_optimizer("adam", lr)

  params = {"w": jnp.ones(3)}
  plain = Seeds.of(cli.Common()).optimizer(make, lr=0.1)
  assert jax.tree.structure(plain.init(params)) == jax.tree.structure(make(0.1).init(params))
  assert optim.hyperparams_of(plain.init(params)) == {}
  swept = Seeds.of(cli.Common(seeds=2), sweep=Sweep({"lr": [0.1, 0.2]}))
  assert swept.seeds == [0, 1, 0, 1] and swept.hyper == [{"lr": 0.1}] * 2 + [{"lr": 0.2}] * 2
  assert set(optim.hyperparams_of(swept.optimizer(make, lr=0.1).init(params))) == {"lr"}


def test_the_best_point_skips_a_diverged_one():
  sweep = Sweep({"lr": [1.0, 0.1, 0.01]})
  entries = [{"test_loss": float("nan")}, {"test_loss": 0.5}, {"test_loss": 0.7}]
  low = sweep.summarize(entries, [0], best="test_loss", higher_is_better=False)
  assert low["best_point"] == {"lr": 0.1}
  high = sweep.summarize(entries, [0], best="test_loss")
  assert high["best_point"] == {"lr": 0.01}



def test_a_shape_option_crossed_with_a_number_runs_one_program_per_value(tmp_path, capsys):
  """--sweep lr=... batch_size=...: one program per batch size (its own checkpoints and
  rows), the learning rates vmapped inside; points batch-size-major whatever the order given;
  member (batch 32, lr 0.05) is `--batch-size 32 --lr 0.05`; the log counts the programs."""
  entry = _mlp(tmp_path, "grid", "--sweep", "lr=0.01,0.05", "batch_size=32,64")
  out = capsys.readouterr().out
  assert [r["point"] for r in entry["sweep"]] == [
      {"batch_size": 32, "lr": 0.01}, {"batch_size": 32, "lr": 0.05},
      {"batch_size": 64, "lr": 0.01}, {"batch_size": 64, "lr": 0.05}]
  assert entry["programs"] == 2 and "2 programs for 4 points, XLA compiled" in out
  assert "sweep program 2/2 (batch_size=64): 2 points x 1 seed = 2 members" in out
  assert sorted(os.listdir(tmp_path / "grid" / "checkpoints")) == ["batch_size=32",
                                                                   "batch_size=64"]
  one = _mlp(tmp_path, "one", "--batch-size", "32", "--lr", "0.05")
  _assert_close(entry["sweep"][1]["test_loss"], one["test_loss"], rtol=1e-4)
  with open(tmp_path / "grid" / "sweep.csv") as f:
    assert [r["batch_size"] for r in csv.DictReader(f)] == ["32", "32", "64", "64"]


def test_a_width_sweep_of_the_spiral(tmp_path):
  """spiral --sweep hidden=8,16: two programs; the hidden=16 member is `--hidden 16`."""
  from experiments import spiral
  args = ["--epochs", "20", "--overfit-epochs", "5", "--no-progress"]
  swept = spiral.main(["--workdir", str(tmp_path / "s"), "--sweep", "hidden=8,16", *args])
  one = spiral.main(["--workdir", str(tmp_path / "one"), "--hidden", "16", *args])
  assert [r["point"] for r in swept["3.1"]["sweep"]] == [{"hidden": 8}, {"hidden": 16}]
  _assert_close(swept["3.1"]["sweep"][1]["final_train_loss"], one["3.1"]["final_train_loss"],
                rtol=1e-4)


def test_planar_sweeps_its_learning_rate_scale(tmp_path):
  """planar has no --lr (each net has the seed's own): --sweep lr_scale=...; each member is
  the run with its --lr-scale (the 0.5 one trains differently from the seed's rates)."""
  from experiments import planar
  args = ["--nets", "0.2", "--steps-scale", "0.1", "--no-progress"]
  swept = planar.main(["--workdir", str(tmp_path / "s"), "--sweep", "lr_scale=0.5,1", *args])
  half = planar.main(["--workdir", str(tmp_path / "half"), "--lr-scale", "0.5", *args])
  one = planar.main(["--workdir", str(tmp_path / "one"), *args])
  _assert_close(swept["0.2"]["sweep"][0]["loss"], half["0.2"]["loss"], rtol=1e-4)
  _assert_close(swept["0.2"]["sweep"][1]["loss"], one["0.2"]["loss"], rtol=1e-4)
  assert abs(half["0.2"]["loss"] - one["0.2"]["loss"]) > 1e-3  # the scale is applied
  assert os.path.exists(tmp_path / "s" / "sweep_0.2.csv")


def test_a_spiral_lr_sweep_member_is_its_single_run(tmp_path):
  """Through `Seeds.state(..., hyperparams=)`: 3.1's member lr 0.003 is `--lr 0.003`."""
  from experiments import spiral
  args = ["--epochs", "20", "--overfit-epochs", "5", "--no-progress"]
  swept = spiral.main(["--workdir", str(tmp_path / "s"), "--sweep", "lr=0.003,0.01", *args])
  one = spiral.main(["--workdir", str(tmp_path / "one"), "--lr", "0.003", *args])
  other = spiral.main(["--workdir", str(tmp_path / "other"), *args])
  _assert_close(swept["3.1"]["sweep"][0]["final_train_loss"], one["3.1"]["final_train_loss"],
                rtol=1e-4)
  _assert_close(swept["3.1"]["sweep"][1]["final_train_loss"],
                other["3.1"]["final_train_loss"], rtol=1e-4)
  assert abs(one["3.1"]["final_train_loss"] - other["3.1"]["final_train_loss"]) > 1e-3


def test_a_gan_sweep_sets_both_players_and_needs_its_scores(tmp_path, capsys):
  """Each member's lr reaches both players (the lr 0.001 member is `--lr 0.001`); without
  scores there is no best point: refused before any work."""
  from experiments import gan
  with pytest.raises(SystemExit) as e:
    gan.main(["--workdir", str(tmp_path / "g0"), "--dataset", "digits", "--score-samples",
              "0", "--sweep", "lr=0.0002,0.001", "--no-progress"])
  assert e.value.code == 2 and "keep --score-samples above 0" in capsys.readouterr().err
  assert not os.path.exists(tmp_path / "g0")
  args = ["--dataset", "digits", "--epochs", "1", "--train-limit", "256", "--score-samples",
          "300", "--classifier-epochs", "1", "--no-progress"]
  swept = gan.main(["--workdir", str(tmp_path / "g"), "--sweep", "lr=0.0002,0.001", *args])
  one = gan.main(["--workdir", str(tmp_path / "one"), "--lr", "0.001", *args])
  a, b = swept["2.8.2"]["sweep"][1], one["2.8.2"]
  for key in ("d_loss", "g_loss"):
    _assert_close(a["final"][key], b["final"][key], rtol=1e-4)
  _assert_close(a["frechet_distance"], b["frechet_distance"], rtol=1e-4)


def test_an_lstm_regressor_sweep_member_is_its_single_run(tmp_path):
  from experiments import lstm
  args = ["--task", "timeseries", "--epochs", "3", "--no-progress"]
  swept = lstm.main(["--workdir", str(tmp_path / "s"), "--sweep", "lr=0.001,0.003", *args])
  one = lstm.main(["--workdir", str(tmp_path / "one"), "--lr", "0.003", *args])
  other = lstm.main(["--workdir", str(tmp_path / "other"), *args])
  _assert_close(swept["2.7.2"]["sweep"][1]["test_mse"], one["2.7.2"]["test_mse"], rtol=1e-4)
  _assert_close(swept["2.7.2"]["sweep"][0]["test_mse"], other["2.7.2"]["test_mse"], rtol=1e-4)
  assert abs(one["2.7.2"]["test_mse"] - other["2.7.2"]["test_mse"]) > 1e-4
