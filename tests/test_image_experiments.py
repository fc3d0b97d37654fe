"""The image experiments end to end on tiny data: TFDS mock MNIST, scikit-learn's digits and
(when installed) a slice of the real Fashion-MNIST."""
import json
import os
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from dlcore.checkpoint import load_model
from dlcore.data import images
from tests.test_data import FASHION_DIR, isolated_home  # noqa: F401  (fixture)

QUIET = ["--no-progress"]


def test_mnist_mlp_on_mock_mnist(isolated_home, tmp_path):  # noqa: F811
  from experiments import mnist_mlp

  workdir = str(tmp_path / "run")
  with tfds.testing.mock_data(num_examples=96):
    summary = mnist_mlp.main(["--epochs", "2", "--batch-size", "32", "--compare-epochs", "1",
                              "--workdir", workdir, *QUIET])
  entry = summary["2.3.1"]
  assert 0.0 <= entry["test_accuracy"] <= 1.0 and entry["epochs"] == 2
  assert "tfds.data_source" in entry["dataset"] and entry["dataset_name"] == "mnist"
  assert summary["2.3.2"]["layers"] == ["flatten", "fc1", "bn1", "relu1", "fc2", "bn2", "relu2",
                                        "fc3"]
  losses = summary["2.3.3"]["last_epoch_mean_loss"]
  assert set(losses) == set(mnist_mlp.COMPARED) and all(np.isfinite(list(losses.values())))
  for f in ("optimizer_comparison.png", "mnist_mlp_curves.png", "mnist_mlp_confusion.png",
            "summary.json", "layers.txt"):
    assert os.path.exists(os.path.join(workdir, f)), f
  with open(os.path.join(workdir, "summary.json")) as f:
    assert json.load(f)["2.3.1"]["test_accuracy"] == entry["test_accuracy"]


def test_optimizer_comparison_learns(tmp_path):
  """2.3.3 on the full settings: every optimizer lowers the loss; the adaptive ones and
  momentum end below plain SGD (the chapter's point)."""
  from experiments import mnist_mlp

  summary = mnist_mlp.main(["--no-classifier", "--workdir", str(tmp_path), *QUIET])
  final = summary["2.3.3"]["last_epoch_mean_loss"]
  assert all(v < 0.1 for v in final.values()), final  # y = x^2 has variance ~0.09
  assert final["Adam (0.9, 0.99)"] < final["SGD"] and final["Momentum 0.8"] < final["SGD"]


def test_cnn_experiment_on_digits(tmp_path):
  from experiments import cnn

  workdir = str(tmp_path / "cnn")
  summary = cnn.main(["--dataset", "digits", "--epochs", "3", "--batch-size", "64",
                      "--workdir", workdir, *QUIET])
  assert summary["2.6.1"]["output_shapes_8x8"]["k(3,5) p(0,1) s(3,4)"] == [2, 2]
  errors = summary["2.6.1"]["transposed_conv_vs_matrix_max_error"]["stride 2"]
  assert errors["lax.conv_transpose"] < 1e-5
  assert errors["nn.ConvTranspose(transpose_kernel=True)"] < 1e-5
  assert errors["nn.ConvTranspose default (kernel not flipped)"] > 1e-2
  assert summary["2.6.1"]["groups_4_to_8"]["groups=2"] == {"kernel": [3, 3, 2, 8], "weights": 144}
  entry = summary["2.6.2"]
  assert entry["dataset_name"] == "digits" and entry["epochs"] == 3
  assert entry["test_accuracy"] > 0.5  # 3 epochs on 1437 digits; chance is 0.1
  model, variables = load_model(os.path.join(workdir, "model"))
  assert model.apply(variables, np.zeros((2, 28, 28, 1), np.float32)).shape == (2, 10)


def test_model_building_trains_lenet_and_resumes(tmp_path):
  from experiments import model_building

  workdir = str(tmp_path / "mb")
  args = ["--dataset", "digits", "--batch-size", "64", "--workdir", workdir, *QUIET]
  first = model_building.main(args + ["--epochs", "1"])
  assert first["4.1"]["parameters"] == 203_530 and first["4.5"]["parameters"] == 61_706
  assert first["4.6"]["parameters"] == 46_764_746
  assert first["4.4"]["pool2d_max"] == [[4.0, 5.0], [7.0, 8.0]]
  assert first["4.5"]["epochs"] == 1 and "test_accuracy" in first["4.5"]
  resumed = model_building.main(args + ["--epochs", "2", "--resume"])
  rows = [json.loads(line) for line in open(os.path.join(workdir, "metrics.jsonl"))]
  evals = [r for r in rows if r["split"] == "eval"]
  assert [r["epoch"] for r in evals] == [0, 1]  # the resumed run trained epoch 1 only
  assert resumed["4.5"]["epochs"] == 2


def test_offline_mnist_experiment_fails_fast_and_writes_nothing(isolated_home, tmp_path,  # noqa
                                                                 monkeypatch):
  from experiments import cnn

  monkeypatch.setenv("DLCORE_OFFLINE", "1")
  workdir = tmp_path / "never"
  start = time.monotonic()
  with pytest.raises(images.DatasetUnavailableError, match="--data-dir"):
    cnn.main(["--workdir", str(workdir), *QUIET])
  assert time.monotonic() - start < 10
  assert not workdir.exists()


@pytest.mark.skipif(not os.path.isdir(FASHION_DIR), reason="dataset-fashion-mnist not installed")
def test_mnist_mlp_pmap_matches_jit_on_fashion_mnist(tmp_path):
  """The acceptance's pmap check in small, on real data: 1000 images (15 batches of 64 and
  a partial one of 40, which pmap runs whole, as jit does) give jit's numbers on 2 host
  devices, with batch norm built without any axis name."""
  from experiments import mnist_mlp

  common = ["--dataset", "fashion_mnist", "--train-limit", "1000", "--test-limit", "1000",
            "--epochs", "2", "--no-compare", *QUIET]
  jit = mnist_mlp.main(common + ["--workdir", str(tmp_path / "jit")])["2.3.1"]
  pmap = mnist_mlp.main(common + ["--workdir", str(tmp_path / "pmap"), "--mode", "pmap",
                                  "--devices", "2"])["2.3.1"]
  assert pmap["devices"] == 2 and FASHION_DIR in pmap["dataset"]
  assert jit["test_accuracy"] > 0.6
  assert abs(jit["test_loss"] - pmap["test_loss"]) < 1e-4
  assert abs(jit["train_accuracy"] - pmap["train_accuracy"]) < 1e-5
