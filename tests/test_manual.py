import jax
import jax.numpy as jnp
import numpy as np

from dlcore import manual


def test_handwritten_numpy_gradients_equal_jax_grad():
  """SPEC 1.1: the seed's NumPy backward equals automatic differentiation (float64)."""
  rng = np.random.RandomState(0)
  x, y = rng.randn(16, 50), rng.randn(16, 5)
  w1, w2 = rng.randn(50, 20), rng.randn(20, 5)
  loss, g1, g2 = manual.two_layer_forward_backward(x, y, w1, w2, np)
  with jax.enable_x64(True):
    f = lambda a, b: jnp.sum(jnp.square(jax.nn.relu(x @ a) @ b - y))  # noqa: E731
    auto_loss = f(w1, w2)
    a1, a2 = jax.grad(f, argnums=(0, 1))(jnp.asarray(w1), jnp.asarray(w2))
  np.testing.assert_allclose(loss, auto_loss, rtol=1e-12)
  np.testing.assert_allclose(g1, a1, rtol=1e-10, atol=1e-10)
  np.testing.assert_allclose(g2, a2, rtol=1e-10, atol=1e-10)


def test_handwritten_code_runs_on_jax_arrays_and_matches_numpy():
  """SPEC 1.2: the same code on device arrays (float32) gives the same step."""
  rng = np.random.RandomState(1)
  x, y = rng.randn(8, 30).astype(np.float32), rng.randn(8, 4).astype(np.float32)
  w1, w2 = rng.randn(30, 10).astype(np.float32), rng.randn(10, 4).astype(np.float32)
  ln, n1, n2 = manual.two_layer_sgd_step(x, y, w1, w2, 1e-3, np)
  lj, j1, j2 = jax.jit(manual.two_layer_sgd_step, static_argnums=5)(x, y, w1, w2, 1e-3, jnp)
  np.testing.assert_allclose(ln, lj, rtol=1e-5)
  np.testing.assert_allclose(n1, j1, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(n2, j2, rtol=1e-5, atol=1e-5)


def test_scalar_autograd_example():
  from experiments.two_layer import scalar_autograd
  assert scalar_autograd() == {"dy_dx": 2.0, "dy_dw": 1.0, "dy_db": 1.0}
