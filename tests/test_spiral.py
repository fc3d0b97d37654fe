"""Seed 003 (SPEC 3.1-3.4): the spiral MLP on generated and CSV data, init, dropout, overfit."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlcore import models
from dlcore.data import synthetic

CSV = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "data", "spiral.csv")


@pytest.mark.parametrize("csv,target", [("", 0.96), (CSV, 0.97)])
def test_spiral_accuracy_and_overfitting(tmp_path, csv, target):
  if csv and not os.path.exists(csv):
    pytest.skip("../shared/data/spiral.csv not found")
  from experiments import spiral

  args = ["--workdir", str(tmp_path), "--no-progress"] + (["--csv", csv] if csv else [])
  summary = spiral.main(args)
  for spec_id in ("3.1", "3.2", "3.3"):
    assert summary[spec_id]["test_accuracy"] >= target, (spec_id, summary[spec_id])
  per_class = summary["3.1"]["per_class"]
  assert len(per_class) == 3 and all(0.9 <= m["f1"] <= 1 for m in per_class.values())
  over = summary["3.4"]
  assert over["train_accuracy"] - over["test_accuracy"] > 0.2  # memorises noise
  assert over["test_accuracy"] < 0.5                           # ~chance on new points
  for f in ("boundary_3.1_train.png", "boundary_3.1_test.png", "overfit_train_accuracy.png"):
    assert (tmp_path / f).exists()


def test_generated_spiral_shape():
  x, y = synthetic.spiral(100, 3, seed=0)
  assert x.shape == (300, 2) and np.bincount(y).tolist() == [100, 100, 100]
  assert np.hypot(x[:, 0], x[:, 1]).max() <= 1 + 1e-6  # radius in [0, 1]


def test_xavier_relu_init_and_dropout_only_in_training():
  m = models.build("spiral_mlp", input_dim=300, hidden_dim=500, init_scheme="xavier_relu",
                   dropout_p=0.5)
  v = m.init(jax.random.PRNGKey(0), jnp.zeros((1, 300)))
  std = float(jnp.std(v["params"]["fc1"]["kernel"]))
  np.testing.assert_allclose(std, np.sqrt(2.0) * np.sqrt(2.0 / (300 + 500)), rtol=0.03)
  x = jax.random.normal(jax.random.PRNGKey(1), (4, 300))
  np.testing.assert_array_equal(m.apply(v, x), m.apply(v, x))  # eval: deterministic
  a = m.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(2)})
  b = m.apply(v, x, train=True, rngs={"dropout": jax.random.PRNGKey(3)})
  assert float(jnp.abs(a - b).max()) > 0
