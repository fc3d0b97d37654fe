"""Seeds as a members axis (`dlcore.train.members`, `--seeds N`): member i of a run with N
seeds is the single run with `--seed seed+i`, under jit, sharded over devices and over two
processes; summaries carry mean, _std and per_seed; `--seeds 1` is the single run."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlcore import data as dldata
from dlcore import losses, models, optim
from dlcore.harness import cli
from dlcore.harness.seeds import Seeds, summarize
from dlcore.train import (MemberRunner, Runner, create_members, create_train_state, fit,
                          make_eval_step, make_train_step, member_batches, over_members)
from dlcore.train.members import member_view

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RTOL = 1e-4  # the bound on member i against the single run seed+i


def _assert_close(a, b, rtol=RTOL):
  """Asserts that member value `a` equals the single run's `b` to `rtol` (an assert here,
  not a returned tuple: a tuple is always true)."""
  assert abs(a - b) <= rtol * abs(b), (a, b)


def _digits():
  from sklearn.datasets import load_digits
  d = load_digits()
  return {"x": (d.data[:384] / 16).astype(np.float32), "y": d.target[:384].astype(np.int32)}


def _loss(out, b):
  return losses.cross_entropy(out, b["y"]), {"accuracy": losses.accuracy(out, b["y"])}


def _metrics(out, b):
  return {"loss": losses.cross_entropy(out, b["y"]),
          "count": jnp.asarray(b["y"].shape[0], jnp.float32)}


@pytest.mark.parametrize("mode,devices", [("jit", None), ("sharded", 2),
                                          pytest.param("sharded", 3, marks=pytest.mark.slow)])
def test_engine_members_equal_single_runs(mode, devices):
  """Batch norm, shuffled batches gathered on the device, per-member evaluation; sharded with
  2 devices splits the 4 members, with 3 it replicates them."""
  arrays = _digits()
  model = models.build("mnist_mlp", in_dim=64, n_hidden_1=32, n_hidden_2=16, out_dim=10,
                       batchnorm=True)
  tx = optim.make_optimizer("momentum", 0.05, momentum=0.9)
  seeds = [3, 4, 5, 6]
  base = Runner(mode, devices=devices)
  runner = MemberRunner(base, len(seeds))
  assert runner.split == (mode == "sharded" and devices == 2)
  state = create_members(model, tx, arrays["x"][:2], seeds)
  on_device = jax.device_put(arrays)
  state, history = fit(state, runner.compile(over_members(make_train_step(_loss))),
                       lambda e: member_batches(on_device, 64, seeds, e), runner=runner,
                       num_epochs=3, progress=False,
                       eval_step=runner.compile_eval(make_eval_step(_metrics)),
                       eval_batches=lambda: dldata.batches(arrays, 200))
  assert len(history[-1]["per_seed"]["train"]["loss"]) == 4
  jit = Runner("jit")
  for i in (3,):
    single = create_train_state(model, tx, arrays["x"][:2], seeds[i])
    _, h = fit(single, jit.compile(make_train_step(_loss)),
               lambda e: dldata.batches(arrays, 64, shuffle=True, seed=seeds[i], epoch=e),
               runner=jit, num_epochs=3, progress=False,
               eval_step=jit.compile_eval(make_eval_step(_metrics)),
               eval_batches=lambda: dldata.batches(arrays, 200))
    mine = member_view(history, i)
    for epoch in range(3):  # the whole trajectory, not only where it ends
      for split in ("train", "eval"):
        _assert_close(mine[epoch][split]["loss"], h[epoch][split]["loss"])
  means = history[-1]["train"]["loss"]
  assert means == pytest.approx(np.mean(history[-1]["per_seed"]["train"]["loss"]))


def test_pmap_with_members_is_refused_in_one_line():
  with pytest.raises(cli.ConfigError, match="use --mode sharded"):
    Seeds([0, 1]).runner(Runner("pmap", devices=2))


def test_summarize_gives_mean_std_and_per_seed():
  # Three seeds with a skewed spread: the mean is not the median, ddof=1 is not ddof=0.
  entries = [{"loss": 1.0, "curve": [1.0, 3.0], "name": "a", "nested": {"acc": 0.5}},
             {"loss": 2.0, "curve": [3.0, 5.0], "name": "a", "nested": {"acc": 0.7}},
             {"loss": 6.0, "curve": [8.0, 4.0], "name": "a", "nested": {"acc": 0.9}}]
  s = summarize(entries, [4, 5, 6])
  assert s["loss"] == 3.0 and s["loss_std"] == pytest.approx(np.sqrt(7.0))
  assert s["per_seed"]["loss"] == [1.0, 2.0, 6.0] and s["seeds"] == [4, 5, 6]
  assert s["curve"] == [4.0, 4.0]
  assert s["per_seed"]["curve"] == [[1.0, 3.0], [3.0, 5.0], [8.0, 4.0]]
  assert s["name"] == "a"
  assert s["nested"]["acc"] == pytest.approx(0.7)
  assert s["nested"]["per_seed"]["acc"] == [0.5, 0.7, 0.9]
  assert summarize(entries[:1]) is entries[0]  # one seed: unchanged


def _planar(tmp_path, name, *argv):
  from experiments import planar
  return planar.main(["--workdir", str(tmp_path / name), "--nets", "0.2", "0.5",
                      "--steps-scale", "0.05", "--no-progress", *argv])


def test_planar_member_i_is_the_run_with_seed_plus_i(tmp_path):
  four = _planar(tmp_path, "four", "--seeds", "4", "--seed", "10")
  for i in (0, 3):
    one = _planar(tmp_path, f"one{i}", "--seed", str(10 + i))
    for net in ("0.2", "0.5"):
      _assert_close(four[net]["per_seed"]["loss"][i], one[net]["loss"])
  s = four["0.5"]
  assert s["loss"] == pytest.approx(np.mean(s["per_seed"]["loss"]))
  assert s["loss_std"] == pytest.approx(np.std(s["per_seed"]["loss"], ddof=1))
  assert s["seeds"] == [10, 11, 12, 13]
  assert os.path.getsize(tmp_path / "four" / "loss_curves.png") > 0  # the band plot


def test_seeds_1_is_the_single_run_bit_for_bit(tmp_path):
  plain, one = _planar(tmp_path, "plain"), _planar(tmp_path, "one", "--seeds", "1")
  assert plain == one and "per_seed" not in plain["0.5"]
  rows = [[{k: v for k, v in json.loads(line).items() if k != "time"}
           for line in open(tmp_path / d / "metrics.jsonl")] for d in ("plain", "one")]
  assert rows[0] == rows[1]


def _mlp(tmp_path, name, *argv):
  from experiments import mnist_mlp
  return mnist_mlp.main(["--workdir", str(tmp_path / name), "--dataset", "digits",
                         "--no-compare", "--epochs", "2", "--train-limit", "640",
                         "--no-progress", *argv])["2.3.1"]


def test_mnist_mlp_members_under_jit_and_sharded_equal_single_runs(tmp_path):
  jit = _mlp(tmp_path, "jit", "--seeds", "4")
  sharded = _mlp(tmp_path, "sharded", "--seeds", "4", "--mode", "sharded", "--devices", "2")
  for i in (3,):
    one = _mlp(tmp_path, f"one{i}", "--seed", str(i))
    for four in (jit, sharded):
      _assert_close(four["per_seed"]["test_loss"][i], one["test_loss"])
  assert len(jit["per_seed"]["test_accuracy_per_epoch"][0]) == 2
  assert "test_accuracy_std" in jit and "dataset" in jit


def test_vae_members_equal_single_runs(tmp_path):
  from experiments import vae
  args = ["--dataset", "digits", "--epochs", "2", "--score-samples", "0", "--train-limit",
          "512", "--test-limit", "128", "--hidden", "64", "--no-progress"]
  four = vae.main(["--workdir", str(tmp_path / "four"), "--seeds", "4", *args])["2.8.1"]
  one = vae.main(["--workdir", str(tmp_path / "one"), "--seed", "2", *args])["2.8.1"]
  for key in ("test_loss", "train_loss"):
    _assert_close(four["per_seed"][key][2], one[key])


def test_two_processes_split_the_members_and_match_one_process(tmp_path):
  args = ["experiments.mnist_mlp", "--dataset", "digits", "--no-compare", "--epochs", "2",
          "--train-limit", "640", "--no-progress", "--seeds", "4"]
  two = subprocess.run([sys.executable, "-m", "dlcore.launch", "-n", "2", "--log-dir",
                        str(tmp_path / "logs"), *args, "--mode", "sharded", "--workdir",
                        str(tmp_path / "two")], cwd=ROOT, capture_output=True, text=True,
                       timeout=240)
  assert two.returncode == 0, two.stderr[-2000:]
  a = json.load(open(tmp_path / "two" / "summary.json"))["2.3.1"]
  b = _mlp(tmp_path, "one", "--seeds", "4")
  for i in range(4):
    _assert_close(a["per_seed"]["test_loss"][i], b["per_seed"]["test_loss"][i])
  assert a["devices"] == 2


def test_convolution_members_run_member_after_member_and_equal_single_runs():
  """On the CPU under jit, members of a convolution model run as copies of the single step
  in one program (a vmapped convolution with a kernel per member is a slow grouped one):
  each member's steps then equal its single run's to 1e-6 (vmapped: ~5e-6 apart after a
  few steps); a dense model stays vmapped."""
  from dlcore.data.transforms import ImagePipeline
  from dlcore.train import Runner, make_train_step
  from dlcore.train import members as mb
  from dlcore.train.classify import xent_loss
  from dlcore.train.state import create_train_state
  pipe = ImagePipeline("pm1")
  rng = np.random.RandomState(0)
  data = {"x": rng.randint(0, 255, (256, 28, 28, 1)).astype(np.uint8),
          "y": rng.randint(0, 10, 256).astype(np.int32)}
  model = models.build("cnn", in_channels=1, num_classes=10)
  tx = optim.make_optimizer("adam", 1e-3)
  seeds = [0, 1, 2]
  step = make_train_step(xent_loss, preprocess=pipe)
  runner = mb.MemberRunner(Runner("jit"), len(seeds))
  state = mb.create_members(model, tx, pipe(jnp.asarray(data["x"][:2])), seeds)
  stepped = mb.over_members(step)
  assert mb._has_convolution(stepped.single, state, mb.Indexed(
      data, np.zeros((3, 32), np.int32)))
  compiled = runner.compile(stepped)
  singles = [create_train_state(model, tx, pipe(jnp.asarray(data["x"][:2])), s) for s in seeds]
  one = Runner("jit").compile(step)
  for epoch in range(2):
    for batch in mb.member_batches(jax.device_put(data), 32, seeds, epoch):
      state, out = compiled(state, batch)
      for i in range(len(seeds)):
        singles[i], o = one(singles[i], jax.tree.map(lambda a: a[batch.idx[i]], data))
        _assert_close(out["loss"][i], o["loss"], rtol=1e-6)
  dense = mb.over_members(make_train_step(_loss))
  small = mb.create_members(models.build("mnist_mlp", in_dim=64, n_hidden_1=8, n_hidden_2=8,
                                         out_dim=10), tx, jnp.zeros((2, 64)), seeds)
  assert not mb._has_convolution(dense.single, small, {"x": jnp.zeros((4, 64)),
                                                       "y": jnp.zeros(4, jnp.int32)})
