"""Fully connected networks of seeds 000, 001 and 003 (and the chapter 3 MLP).

Each module mirrors the seed's PyTorch class: same submodule names, sizes as fields with the
seed's defaults, and the common call shape `__call__(x, *, train=False)`.
"""
from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax.numpy as jnp

from dlcore.models.init import scaled_normal, torch_bias_init
from dlcore.models.layers import (BatchNorm, Dropout, Linear, NamedSequential, Sequential,
                                  dtypes)
from dlcore.models.registry import register

# Every model takes `dtype` (computation) and `param_dtype` (storage); float32 both by default.
F32 = jnp.float32

ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh, "sigmoid": nn.sigmoid,
               "leaky_relu": nn.leaky_relu, "identity": lambda x: x}


def activation(name: str):
  try:
    return ACTIVATIONS[name]
  except KeyError:
    raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}") from None


@register("logistic_regression", example_shape=(2,))
class LogisticRegression(nn.Module):
  """Seed 000 (SPEC 0.1): `torch.mm(x, w) + b` with w ~ N(0, 1) of shape (2, 1) and b = 0.

  Returns logits; the seed trains it with BCEWithLogitsLoss."""
  num_output: int = 1
  dtype: Any = F32
  param_dtype: Any = F32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    w = self.param("w", scaled_normal(1.0), (x.shape[-1], self.num_output), self.param_dtype)
    b = self.param("b", nn.initializers.zeros, (self.num_output,), self.param_dtype)
    x, w, b = (jnp.asarray(a, self.dtype) for a in (x, w, b))
    return x @ w + b


@register("raw_two_layer", example_shape=(2,))
class RawTwoLayer(nn.Module):
  """Seed 000 (SPEC 0.2): the 2-4-1 tanh net written with raw parameters.

  `w1 = randn(2, 4) * 0.01`, `b1 = zeros(4)`, `w2 = randn(4, 1) * 0.01`, `b2 = zeros(1)`."""
  num_hidden: int = 4
  num_output: int = 1
  init_scale: float = 0.01
  dtype: Any = F32
  param_dtype: Any = F32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    p = self.param_dtype
    w1 = self.param("w1", scaled_normal(self.init_scale), (x.shape[-1], self.num_hidden), p)
    b1 = self.param("b1", nn.initializers.zeros, (self.num_hidden,), p)
    w2 = self.param("w2", scaled_normal(self.init_scale), (self.num_hidden, self.num_output), p)
    b2 = self.param("b2", nn.initializers.zeros, (self.num_output,), p)
    x, w1, b1, w2, b2 = (jnp.asarray(a, self.dtype) for a in (x, w1, b1, w2, b2))
    return jnp.tanh(x @ w1 + b1) @ w2 + b2


@register("sequential_net", example_shape=(2,))
def sequential_net(num_input: int = 2, num_hidden: int = 4, num_output: int = 1,
                   dtype: Any = F32, param_dtype: Any = F32) -> Sequential:
  """Seed 000 (SPEC 0.3): `nn.Sequential(nn.Linear(2, 4), nn.Tanh(), nn.Linear(4, 1))`.

  Layers are indexed as in PyTorch: `model.layers[0]`, parameters `params['layers_0']`."""
  kw = {"dtype": dtype, "param_dtype": param_dtype}
  return Sequential([Linear(num_input, num_hidden, **kw), jnp.tanh,
                     Linear(num_hidden, num_output, **kw)])


@register("module_net", example_shape=(2,))
class ModuleNet(nn.Module):
  """Seed 000 (SPEC 0.4): `module_net(num_input, num_hidden, num_output)`.

  layer1 = Linear, layer2 = Tanh, layer3 = Linear; reach a layer's weight by name,
  `params['layer1']['kernel']` (PyTorch's `mo_net.layer1.weight`, transposed)."""
  num_input: int = 2
  num_hidden: int = 4
  num_output: int = 1
  dtype: Any = F32
  param_dtype: Any = F32

  def setup(self):
    self.layer1 = Linear(self.num_input, self.num_hidden, **dtypes(self))
    self.layer2 = jnp.tanh
    self.layer3 = Linear(self.num_hidden, self.num_output, **dtypes(self))

  def __call__(self, x, *, train: bool = False):
    return self.layer3(self.layer2(self.layer1(x)))


@register("mlp", example_shape=(2,))
class MLP(nn.Module):
  """A configurable multilayer perceptron: Dense layers of `widths`, the last one linear.

  Between layers: optional BatchNorm (after the Dense, before the activation, as the book's
  chapter 3 code), the activation, optional Dropout (train mode only). Covers seed 000's deep
  2-10-10-10-1 tanh net (SPEC 0.5), FizzBuzz's 10-100-4 (SPEC 1.7) and the chapter 3 MLPs.
  """
  widths: Sequence[int] = (10, 10, 10, 1)
  activation: str = "tanh"
  use_bias: bool = True
  batchnorm: bool = False
  dropout: float = 0.0
  torch_init: bool = True  # PyTorch's default Linear init (the seeds' results depend on it)
  dtype: Any = F32
  param_dtype: Any = F32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    act = activation(self.activation)
    x = x.reshape((x.shape[0], -1))
    for i, width in enumerate(self.widths):
      if self.torch_init:
        x = Linear(x.shape[-1], width, bias=self.use_bias, name=f"fc{i + 1}", **dtypes(self))(x)
      else:
        x = nn.Dense(width, use_bias=self.use_bias, name=f"fc{i + 1}", **dtypes(self))(x)
      if i == len(self.widths) - 1:
        break
      if self.batchnorm:
        # PyTorch BatchNorm1d: momentum 0.1 (Flax 0.9), eps 1e-5.
        x = BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                      name=f"bn{i + 1}", **dtypes(self))(x)
      x = act(x)
      if self.dropout > 0:
        x = Dropout(self.dropout, deterministic=not train)(x)
    return x


@register("two_layer_net", example_shape=(1000,))
class TwoLayerNet(nn.Module):
  """Seed 001 (SPEC 1.4-1.6): `TwoLayerNet(D_in, H, D_out)`, Linear-ReLU-Linear without bias.

  The seed's Sequential version (1.4, 1.5) has the same structure and parameters."""
  num_input: int = 1000
  hidden: int = 100
  num_output: int = 10
  use_bias: bool = False
  dtype: Any = F32
  param_dtype: Any = F32

  def setup(self):
    self.linear1 = Linear(self.num_input, self.hidden, bias=self.use_bias, **dtypes(self))
    self.linear2 = Linear(self.hidden, self.num_output, bias=self.use_bias, **dtypes(self))

  def __call__(self, x, *, train: bool = False):
    return self.linear2(nn.relu(self.linear1(x)))


@register("two_layer_sequential", example_shape=(1000,))
def two_layer_sequential(num_input: int = 1000, hidden: int = 100, num_output: int = 10,
                         dtype: Any = F32, param_dtype: Any = F32) -> Sequential:
  """Seed 001 (SPEC 1.4, 1.5): `Sequential(Linear(D_in, H, bias=False), ReLU,
  Linear(H, D_out, bias=False))`."""
  kw = {"dtype": dtype, "param_dtype": param_dtype}
  return Sequential([Linear(num_input, hidden, bias=False, **kw), nn.relu,
                     Linear(hidden, num_output, bias=False, **kw)])


def flatten(x):
  """(N, ...) -> (N, features): images in, vectors out (PyTorch's `x.view(x.size(0), -1)`)."""
  return x.reshape((x.shape[0], -1))


@register("mnist_mlp", example_shape=(28, 28, 1))
def mnist_mlp(in_dim: int = 784, n_hidden_1: int = 300, n_hidden_2: int = 100,
              out_dim: int = 10, batchnorm: bool = True, dtype: Any = F32,
              param_dtype: Any = F32) -> NamedSequential:
  """SPEC 2.3.1-2.3.2: the book's chapter 3 MNIST net, `Net(784, 300, 100, 10)`: two hidden
  layers, each Linear -> BatchNorm1d -> ReLU, then Linear; built as an ordered sequence of
  named layers (the chapter's `Sequential(OrderedDict(...))`), so parameters are reached
  as `params["fc1"]`, `batch_stats["bn1"]`.

  BatchNorm follows PyTorch's BatchNorm1d (momentum 0.1, i.e. Flax's 0.9; eps 1e-5), with
  the whole batch's statistics in every mode (see `dlcore.parallel`).
  """
  kw = {"dtype": dtype, "param_dtype": param_dtype}

  def bn():
    return BatchNorm(momentum=0.9, epsilon=1e-5, **kw)

  layers = [("flatten", flatten), ("fc1", Linear(in_dim, n_hidden_1, **kw))]
  layers += [("bn1", bn())] if batchnorm else []
  layers += [("relu1", nn.relu), ("fc2", Linear(n_hidden_1, n_hidden_2, **kw))]
  layers += [("bn2", bn())] if batchnorm else []
  layers += [("relu2", nn.relu), ("fc3", Linear(n_hidden_2, out_dim, **kw))]
  return NamedSequential(tuple(layers))


@register("spiral_mlp", example_shape=(2,))
class SpiralMLP(nn.Module):
  """Seed 003 (SPEC 3.1-3.3): Made With ML's `MLP(input_dim, hidden_dim, num_classes)`,
  fc1 - ReLU - [Dropout(dropout_p)] - fc2, returning logits.

  init_scheme: "default" = PyTorch's Linear init (3.1); "xavier_relu" = fc1's kernel from
  `init.xavier_normal_(gain=calculate_gain("relu"))`, i.e. N(0, 2 * 2 / (fan_in + fan_out))
  (3.2). Dropout is active only with `train=True` (3.3)."""
  input_dim: int = 2
  hidden_dim: int = 100
  num_classes: int = 3
  dropout_p: float = 0.0
  init_scheme: str = "default"
  dtype: Any = F32
  param_dtype: Any = F32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    if self.init_scheme == "xavier_relu":
      fc1 = nn.Dense(self.hidden_dim, name="fc1",
                     kernel_init=nn.initializers.variance_scaling(2.0, "fan_avg", "normal"),
                     bias_init=torch_bias_init(self.input_dim), **dtypes(self))
    elif self.init_scheme == "default":
      fc1 = Linear(self.input_dim, self.hidden_dim, name="fc1", **dtypes(self))
    else:
      raise ValueError(f"unknown init_scheme {self.init_scheme!r}; use 'default' or "
                       "'xavier_relu'")
    z = nn.relu(fc1(x))
    if self.dropout_p > 0:
      z = Dropout(self.dropout_p, deterministic=not train)(z)
    return Linear(self.hidden_dim, self.num_classes, name="fc2", **dtypes(self))(z)
