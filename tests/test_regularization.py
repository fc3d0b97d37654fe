"""Chapter 5 (SPEC 2.5.1-2.5.7) on a small budget: figures, hand-checked losses, init
statistics, and the data-parallel run equal to the single-device run over 4 host devices."""
import sys

import jax
import numpy as np


def test_regularization_experiment_small(tmp_path, monkeypatch):
  """Also: a default run needs no optional extra (tensorboardX is made unimportable)."""
  from experiments import regularization

  monkeypatch.setitem(sys.modules, "tensorboardX", None)
  assert jax.local_device_count() == 4  # tests/conftest.py
  summary = regularization.main([
      "--workdir", str(tmp_path), "--epochs", "15", "--hidden", "32", "--optimizer-epochs", "6",
      "--parallel-epochs", "5", "--no-progress"])
  for spec_id in ("2.5.1", "2.5.2", "2.5.3"):
    final = summary[spec_id]["final"]
    assert all(np.isfinite(v["test_mse"]) for v in final.values())
  # Weight decay and dropout raise the training error (they regularise).
  assert summary["2.5.1"]["final"]["with"]["train_mse"] > summary["2.5.1"]["final"]["without"]["train_mse"]
  assert summary["2.5.2"]["final"]["with"]["train_mse"] > summary["2.5.2"]["final"]["without"]["train_mse"]
  std = summary["2.5.4"]["activation_std_per_layer"]
  # Kaiming keeps a deep ReLU net's activations alive; PyTorch's default init shrinks them.
  assert std["relu"]["kaiming"][-1] > 0.3 and std["relu"]["default"][-1] < 0.01
  assert max(summary["2.5.5"]["max_abs_error"].values()) < 1e-5
  assert set(summary["2.5.6"]["final"]) == {"sgd", "momentum", "nesterov", "adagrad", "rmsprop",
                                            "adam", "adam then sgd"}
  par = summary["2.5.7"]
  assert par["devices"] == 4 and par["per_device_batch"] == [32, 10]
  assert abs(par["final_loss"] - par["single_device_final_loss"]) < 1e-4
  for f in ("2.5.1_weight_decay.png", "2.5.2_dropout.png", "2.5.3_batch_norm.png",
            "2.5.4_init_activation_std.png", "2.5.6_optimizers.png"):
    assert (tmp_path / f).exists(), f
  assert (tmp_path / "variants" / "2.5.1_with" / "metrics.jsonl").exists()
  assert not (tmp_path / "variants" / "2.5.1_with" / "tb").exists()  # --tensorboard is opt-in
