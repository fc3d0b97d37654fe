"""Chapter 2 (SPEC 2.2.1-2.2.2): gradient descent three ways, the Jacobian."""
import numpy as np

from experiments import basics


def test_three_ways_agree_and_reach_the_targets(tmp_path):
  summary = basics.main(["--workdir", str(tmp_path), "--no-progress"])
  r = summary["2.2.1"]
  # Eager and jitted jax.grad run the same float32 program: same w, b.
  assert abs(r["eager"]["w"] - r["jit"]["w"]) < 1e-5 and abs(r["eager"]["b"] - r["jit"]["b"]) < 1e-5
  # Hand-written float64 gradients agree to float32 rounding.
  assert abs(r["numpy"]["w"] - r["jit"]["w"]) < 1e-4 and abs(r["numpy"]["b"] - r["jit"]["b"]) < 1e-4
  for way in ("numpy", "eager", "jit"):
    assert abs(r[way]["w"] - 3) < 0.05 and abs(r[way]["b"] - 2) < 0.15, (way, r[way])
  assert r["jit"]["ms_per_step"] > 0 and r["eager"]["ms_per_step"] > 0
  assert (tmp_path / "regression.png").exists()
  np.testing.assert_allclose(summary["2.2.2"]["jacobian"], [[4, 3], [2, 6]])
  np.testing.assert_allclose(summary["2.2.2"]["jacfwd"], [[4, 3], [2, 6]])
  np.testing.assert_allclose(summary["2.2.2"]["vjp_rows"], [[4, 3], [2, 6]])


def test_hand_written_gradients_equal_jax_grad():
  import jax

  x, y, w, b = basics.make_data(0)
  err = w * x ** 2 + b - y
  by_hand = (np.sum(err * x ** 2), np.sum(err))
  with jax.enable_x64(True):
    auto = jax.grad(basics.loss_fn)((w, b), x, y)
  np.testing.assert_allclose(by_hand, [float(a) for a in auto], rtol=1e-10)
