"""dlcore's Optax optimizers against the book's pseudocode (SPEC 2.5.6), written in NumPy.

Each test runs several steps of f(theta) = sum(a * theta^2) + sum(b * theta) (a non-trivial
gradient field) from the same start, feeding each side the gradient at its own parameters.
"""
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from dlcore.optim import NAMES, make_optimizer, step_decay

A = np.array([0.5, 2.0, 1.5, 0.1])
B = np.array([1.0, -0.5, 0.3, 2.0])
THETA0 = np.array([1.0, -2.0, 0.5, 3.0])
STEPS = 25


def grad(theta):
  return 2 * A * theta + B


def run_optax(tx, theta=THETA0, steps=STEPS):
  params = jnp.asarray(theta, jnp.float32)
  state = tx.init(params)
  for _ in range(steps):
    g = jnp.asarray(grad(np.asarray(params, np.float64)), jnp.float32)
    updates, state = tx.update(g, state, params)
    params = optax.apply_updates(params, updates)
  return np.asarray(params, np.float64)


def test_sgd():
  lr, th = 0.1, THETA0.copy()
  for _ in range(STEPS):
    th = th - lr * grad(th)
  np.testing.assert_allclose(run_optax(make_optimizer("sgd", lr)), th, rtol=1e-5)


def test_momentum_velocity_form():
  """Book: v = alpha v - eps g; theta += v."""
  lr, alpha, th, v = 0.05, 0.8, THETA0.copy(), np.zeros(4)
  for _ in range(STEPS):
    v = alpha * v - lr * grad(th)
    th = th + v
  np.testing.assert_allclose(run_optax(make_optimizer("momentum", lr, momentum=alpha)), th,
                             rtol=1e-5)


def test_nesterov_tracks_the_look_ahead_point():
  """Book: g at theta + alpha v; v = alpha v - eps g; theta += v. Optax's parameters are
  the book's look-ahead point theta + alpha v (the pinned mapping)."""
  lr, alpha, th, v = 0.05, 0.9, THETA0.copy(), np.zeros(4)
  for _ in range(STEPS):
    v = alpha * v - lr * grad(th + alpha * v)
    th = th + v
  np.testing.assert_allclose(run_optax(make_optimizer("nesterov", lr, momentum=alpha)),
                             th + alpha * v, rtol=1e-5)


def test_adagrad():
  """Book: r += g^2; theta -= eps g / (delta + sqrt(r)), delta 1e-7, r from 0."""
  lr, delta, th, r = 0.3, 1e-7, THETA0.copy(), np.zeros(4)
  for _ in range(STEPS):
    g = grad(th)
    r = r + g * g
    th = th - lr * g / (delta + np.sqrt(r))
  np.testing.assert_allclose(run_optax(make_optimizer("adagrad", lr)), th, rtol=1e-5)


def test_optax_default_adagrad_differs_by_its_initial_accumulator():
  """Why dlcore sets initial_accumulator_value=0: Optax's default 0.1 changes the path."""
  got = run_optax(optax.adagrad(0.3))
  assert np.max(np.abs(got - run_optax(make_optimizer("adagrad", 0.3)))) > 1e-3


@pytest.mark.parametrize("rho", [0.9, 0.99])
def test_rmsprop(rho):
  """Book: r = rho r + (1 - rho) g^2; theta -= eps g / sqrt(delta + r), delta 1e-6."""
  lr, delta, th, r = 0.01, 1e-6, THETA0.copy(), np.zeros(4)
  for _ in range(STEPS):
    g = grad(th)
    r = rho * r + (1 - rho) * g * g
    th = th - lr * g / np.sqrt(delta + r)
  np.testing.assert_allclose(run_optax(make_optimizer("rmsprop", lr, decay=rho)), th,
                             rtol=1e-5)


def test_rmsprop_pytorch_convention_eps_outside_the_root():
  """PyTorch RMSprop(alpha=rho, eps): theta -= lr g / (sqrt(r) + eps)."""
  lr, eps, rho, th, r = 0.01, 1e-3, 0.9, THETA0.copy(), np.zeros(4)
  for _ in range(STEPS):
    g = grad(th)
    r = rho * r + (1 - rho) * g * g
    th = th - lr * g / (np.sqrt(r) + eps)
  got = run_optax(make_optimizer("rmsprop", lr, decay=rho, eps=eps, eps_in_sqrt=False))
  np.testing.assert_allclose(got, th, rtol=1e-5)


def test_adam():
  """Book: s, r moments, bias-corrected; theta -= eps s_hat / (sqrt(r_hat) + delta)."""
  lr, r1, r2, delta = 0.05, 0.9, 0.99, 1e-8
  th, s, r = THETA0.copy(), np.zeros(4), np.zeros(4)
  for t in range(1, STEPS + 1):
    g = grad(th)
    s = r1 * s + (1 - r1) * g
    r = r2 * r + (1 - r2) * g * g
    s_hat, r_hat = s / (1 - r1 ** t), r / (1 - r2 ** t)
    th = th - lr * s_hat / (np.sqrt(r_hat) + delta)
  np.testing.assert_allclose(run_optax(make_optimizer("adam", lr, b1=r1, b2=r2)), th,
                             rtol=1e-5)


def test_weight_decay_is_coupled_l2():
  """PyTorch's SGD(weight_decay=wd): g + wd * theta."""
  lr, wd, th = 0.1, 0.01, THETA0.copy()
  for _ in range(STEPS):
    th = th - lr * (grad(th) + wd * th)
  np.testing.assert_allclose(run_optax(make_optimizer("sgd", lr, weight_decay=wd)), th,
                             rtol=1e-5)


def test_step_decay_multiplies_after_every_k_steps():
  sched = step_decay(0.01, every_steps=5, factor=0.1)
  got = [float(sched(i)) for i in (0, 4, 5, 9, 10, 15)]
  np.testing.assert_allclose(got, [1e-2, 1e-2, 1e-3, 1e-3, 1e-4, 1e-5], rtol=1e-6)


def test_every_name_builds_and_unknown_is_clear():
  for name in NAMES:
    assert np.all(np.isfinite(run_optax(make_optimizer(name, 0.01), steps=2)))
  with pytest.raises(ValueError, match="unknown optimizer 'lbfgs'; choose one of sgd"):
    make_optimizer("lbfgs", 0.1)
