"""Seed 004 (SPEC 4.1-4.4): building models and custom layers, and the convolution
arithmetic of chapter 6 (SPEC 2.6.1).

`corr2d`, `pool2d` and the convolution-as-a-matrix functions are written by hand on purpose:
the material teaches them that way. They are vectorised (a sum of shifted slices rather than
the seed's Python double loop) so they run under jit; models use `nn.Conv` / `nn.max_pool`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlcore.models.init import scaled_normal
from dlcore.models.layers import Linear, dtypes

F32 = jnp.float32
from dlcore.models.registry import register


@register("basic_mlp", example_shape=(784,))
class BasicMLP(nn.Module):
  """SPEC 4.1: the seed's `MLP` subclassing `nn.Module`: hidden = Linear(784, 256), act =
  ReLU, output = Linear(256, 10). 203,530 parameters, as PyTorch counts them."""
  num_input: int = 784
  num_hidden: int = 256
  num_output: int = 10
  dtype: Any = F32
  param_dtype: Any = F32

  def setup(self):
    self.hidden = Linear(self.num_input, self.num_hidden, **dtypes(self))
    self.act = nn.relu
    self.output = Linear(self.num_hidden, self.num_output, **dtypes(self))

  def __call__(self, x, *, train: bool = False):
    return self.output(self.act(self.hidden(x.reshape((x.shape[0], -1)))))


@register("centered_layer", example_shape=(5,))
class CenteredLayer(nn.Module):
  """SPEC 4.2: a layer without parameters, `x - x.mean()` (the mean of the whole input, as
  the seed's `MyLayer`): [1, 2, 3, 4, 5] -> [-2, -1, 0, 1, 2]. The mean is taken in float32
  at any `dtype` (a reduction); it has no parameters, so `param_dtype` is only accepted."""
  dtype: Any = F32
  param_dtype: Any = F32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    return (x - jnp.mean(x, dtype=jnp.float32).astype(self.dtype)).astype(self.dtype)


@register("list_dense", example_shape=(4,))
class ListDense(nn.Module):
  """SPEC 4.3: `MyListDense`, a `ParameterList` of three (4, 4) matrices and one (4, 1),
  each N(0, 1), applied as chained matrix products. In Flax a list of `self.param` calls
  in `setup` plays the ParameterList; the parameters are named `params_0` ... `params_3`."""
  shapes: Sequence[tuple[int, int]] = ((4, 4), (4, 4), (4, 4), (4, 1))
  dtype: Any = F32
  param_dtype: Any = F32

  def setup(self):
    self.matrices = [self.param(f"params_{i}", scaled_normal(1.0), tuple(s), self.param_dtype)
                     for i, s in enumerate(self.shapes)]

  def __call__(self, x, *, train: bool = False):
    x = jnp.asarray(x, self.dtype)
    for w in self.matrices:
      x = x @ jnp.asarray(w, self.dtype)
    return x


@register("dict_dense", example_shape=(4,))
class DictDense(nn.Module):
  """SPEC 4.3: `MyDictDense`, a `ParameterDict` {linear1: (4, 4), linear2: (4, 1)} extended
  with linear3: (4, 2), all N(0, 1); the forward pass multiplies by the one chosen by name.
  Every entry is created at init whichever `choice` the init call uses."""
  shapes: Sequence[tuple[str, tuple[int, int]]] = (
      ("linear1", (4, 4)), ("linear2", (4, 1)), ("linear3", (4, 2)))
  dtype: Any = F32
  param_dtype: Any = F32

  def setup(self):
    self.matrices = {name: self.param(name, scaled_normal(1.0), tuple(shape), self.param_dtype)
                     for name, shape in self.shapes}

  def __call__(self, x, choice: str = "linear1", *, train: bool = False):
    if choice not in self.matrices:
      raise KeyError(f"unknown parameter {choice!r}; choose one of {list(self.matrices)}")
    return jnp.asarray(x, self.dtype) @ jnp.asarray(self.matrices[choice], self.dtype)


def corr2d(x: jax.Array, k: jax.Array, dtype=jnp.float32) -> jax.Array:
  """SPEC 4.4: 2-D cross-correlation of one (H, W) array with a (h, w) kernel (no padding,
  stride 1): Y[i, j] = sum(X[i:i+h, j:j+w] * K). Hand-written as the seed teaches it; the
  double loop over outputs becomes a loop over the h*w kernel taps, each adding a shifted
  slice of X, so it traces to a handful of XLA ops. Computed in `dtype` (float32 default)."""
  h, w = k.shape
  oh, ow = x.shape[0] - h + 1, x.shape[1] - w + 1
  if oh < 1 or ow < 1:
    raise ValueError(f"kernel {k.shape} is larger than the input {x.shape}")
  x, k = jnp.asarray(x, dtype), jnp.asarray(k, dtype)
  y = jnp.zeros((oh, ow), dtype)
  for a in range(h):
    for b in range(w):
      y = y + k[a, b] * x[a:a + oh, b:b + ow]
  return y


def pool2d(x: jax.Array, pool_size: tuple[int, int], mode: str = "max") -> jax.Array:
  """SPEC 4.4: the seed's `pool2d`, stride 1 and no padding, max or avg over each window:
  [[0,1,2],[3,4,5],[6,7,8]] with 2x2 -> max [[4,5],[7,8]], avg [[2,3],[5,6]]. Hand-written:
  the windows are stacked as shifted slices and reduced."""
  if mode not in ("max", "avg"):
    raise ValueError(f"unknown pooling mode {mode!r}; use 'max' or 'avg'")
  p_h, p_w = pool_size
  oh, ow = x.shape[0] - p_h + 1, x.shape[1] - p_w + 1
  windows = jnp.stack([x[a:a + oh, b:b + ow] for a in range(p_h) for b in range(p_w)])
  return windows.max(0) if mode == "max" else windows.astype(jnp.float32).mean(0)


@register("corr2d_conv", example_shape=(6, 8), batched=False)
class Conv2D(nn.Module):
  """SPEC 4.4: the seed's `Conv2D(kernel_size)` built on `corr2d`: weight ~ N(0, 1) of
  `kernel_size`, a scalar bias ~ N(0, 1); input one (H, W) array (no batch, no channels)."""
  kernel_size: tuple[int, int] = (1, 2)
  dtype: Any = F32
  param_dtype: Any = F32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    weight = self.param("weight", scaled_normal(1.0), tuple(self.kernel_size), self.param_dtype)
    bias = self.param("bias", scaled_normal(1.0), (1,), self.param_dtype)
    return corr2d(x, weight, self.dtype) + jnp.asarray(bias, self.dtype)


# ---- chapter 6: convolution arithmetic (SPEC 2.6.1) --------------------------------------
def conv_output_size(n: int, kernel: int, padding: int = 0, stride: int = 1,
                     dilation: int = 1) -> int:
  """Output length along one axis: floor((n + 2p - d(k - 1) - 1) / s) + 1 (PyTorch's
  formula; with d = 1 it is the book's floor((n + 2p - k) / s) + 1)."""
  out = (n + 2 * padding - dilation * (kernel - 1) - 1) // stride + 1
  if out < 1:
    raise ValueError(f"kernel {kernel} (dilation {dilation}) does not fit an input of {n} "
                     f"with padding {padding}")
  return out


def conv_matrix(kernel: np.ndarray, input_shape: tuple[int, int], stride: int = 1,
                padding: int = 0) -> np.ndarray:
  """The convolution (cross-correlation) of a (H, W) input with `kernel` as a matrix C:
  conv(x).ravel() == C @ x.ravel(). Row r holds the kernel placed at output position r;
  padding is folded in by dropping taps that fall outside the input. The chapter's point:
  the transposed convolution is multiplication by C.T, mapping the output shape back to
  the input shape (and it is the gradient of the convolution)."""
  kernel = np.asarray(kernel)
  kh, kw = kernel.shape
  h, w = input_shape
  oh = conv_output_size(h, kh, padding, stride)
  ow = conv_output_size(w, kw, padding, stride)
  c = np.zeros((oh * ow, h * w), kernel.dtype)
  for i in range(oh):
    for j in range(ow):
      for a in range(kh):
        for b in range(kw):
          r, s = i * stride - padding + a, j * stride - padding + b
          if 0 <= r < h and 0 <= s < w:
            c[i * ow + j, r * w + s] = kernel[a, b]
  return c
