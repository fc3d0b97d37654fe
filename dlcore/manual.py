"""Backpropagation written by hand, as seed 001 teaches it (SPEC 1.1, 1.2).

The two-layer ReLU net without bias, `y_pred = relu(x @ w1) @ w2`, loss = sum of squared
errors. `xp` is the array module: `numpy` for the seed's NumPy version (1.1), `jax.numpy`
for its device-array version (1.2). tests/test_manual.py checks these gradients against
`jax.grad`.
"""
from __future__ import annotations


def two_layer_forward_backward(x, y, w1, w2, xp):
  """Returns (loss, grad_w1, grad_w2), line by line as the seed's NumPy code."""
  h = x @ w1
  h_relu = xp.maximum(h, 0)
  y_pred = h_relu @ w2
  loss = xp.square(y_pred - y).sum()
  grad_y_pred = 2.0 * (y_pred - y)
  grad_w2 = h_relu.T @ grad_y_pred
  grad_h_relu = grad_y_pred @ w2.T
  grad_h = xp.where(h < 0, 0.0, grad_h_relu)  # the seed's grad_h[h < 0] = 0
  grad_w1 = x.T @ grad_h
  return loss, grad_w1, grad_w2


def two_layer_sgd_step(x, y, w1, w2, lr, xp):
  """One hand-written gradient-descent step; returns (loss, w1, w2)."""
  loss, g1, g2 = two_layer_forward_backward(x, y, w1, w2, xp)
  return loss, w1 - lr * g1, w2 - lr * g2
