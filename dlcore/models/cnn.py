"""Convolutional classifiers: LeNet and AlexNet (seed 004, SPEC 4.5-4.6) and the chapter 6
CNN (SPEC 2.6.2). Inputs are NHWC; layer names and sizes follow the PyTorch originals.

Flattening before the first fully connected layer happens in NHWC order (H, W, C), where
PyTorch flattens (C, H, W): the networks are the same up to a permutation of fc1's input
rows, which `dlcore.interop` applies when it converts PyTorch weights. Keeping Flax's
native layout avoids a transpose per step.
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dlcore.models.layers import Conv2d, Dropout, Linear, dtypes, max_pool2d
from dlcore.models.registry import register


def _flatten(x):
  return x.reshape((x.shape[0], -1))


@register("lenet", example_shape=(32, 32, 1))
class LeNet(nn.Module):
  """SPEC 4.5: the seed's `Net` (PyTorch's 60-minute-blitz LeNet): conv1 1->6 5x5, ReLU,
  max-pool 2; conv2 6->16 5x5, ReLU, max-pool 2; fc1 400-120, fc2 120-84 (ReLU), fc3 84-10.
  Expects 32x32 inputs (pad or resize 28x28 images). 10 parameter arrays, 61,706 values.

  LeCun et al., "Gradient-based learning applied to document recognition", Proc. IEEE 1998.
  """
  in_channels: int = 1
  num_classes: int = 10
  dtype: Any = jnp.float32  # computation
  param_dtype: Any = jnp.float32  # storage

  def setup(self):
    kw = dtypes(self)
    self.conv1 = Conv2d(self.in_channels, 6, 5, **kw)
    self.conv2 = Conv2d(6, 16, 5, **kw)
    self.fc1 = Linear(16 * 5 * 5, 120, **kw)
    self.fc2 = Linear(120, 84, **kw)
    self.fc3 = Linear(84, self.num_classes, **kw)

  def __call__(self, x, *, train: bool = False):
    if x.shape[1:3] != (32, 32):
      raise ValueError(f"LeNet expects 32x32 images, got {x.shape[1:3]}; pad 28x28 images "
                       "to 32x32 (ImagePipeline(size=32)) as the seed says")
    x = max_pool2d(nn.relu(self.conv1(x)), 2)
    x = max_pool2d(nn.relu(self.conv2(x)), 2)
    x = nn.relu(self.fc1(_flatten(x)))
    x = nn.relu(self.fc2(x))
    return self.fc3(x)


@register("alexnet", example_shape=(224, 224, 1))
class AlexNet(nn.Module):
  """SPEC 4.6: the seed's AlexNet for 1-channel 224x224 images and 10 classes (the d2l
  Fashion-MNIST variant): conv 96 k11 s4, max-pool 3/2; conv 256 k5 p2, max-pool 3/2;
  conv 384 k3 p1, conv 384 k3 p1, conv 256 k3 p1, max-pool 3/2 (ReLU after every conv);
  fc 6400-4096-4096-10 with ReLU and Dropout(0.5). 46,764,746 parameters.

  Submodules are named after the seed's `conv` / `fc` Sequential indices (conv_0, conv_3,
  ..., fc_0, fc_3, fc_6), so PyTorch's `conv.0.weight` maps to `conv_0`.

  Krizhevsky, Sutskever, Hinton, "ImageNet classification with deep convolutional neural
  networks", NeurIPS 2012.
  """
  in_channels: int = 1
  num_classes: int = 10
  dropout: float = 0.5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    kw = dtypes(self)
    if x.shape[1:3] != (224, 224):
      raise ValueError(f"AlexNet expects 224x224 images, got {x.shape[1:3]}; resize them "
                       "(ImagePipeline(size=224, resize='bilinear'), --image-size 224)")
    x = nn.relu(Conv2d(self.in_channels, 96, 11, 4, name="conv_0", **kw)(x))
    x = max_pool2d(x, 3, 2)
    x = nn.relu(Conv2d(96, 256, 5, 1, 2, name="conv_3", **kw)(x))
    x = max_pool2d(x, 3, 2)
    x = nn.relu(Conv2d(256, 384, 3, 1, 1, name="conv_6", **kw)(x))
    x = nn.relu(Conv2d(384, 384, 3, 1, 1, name="conv_8", **kw)(x))
    x = nn.relu(Conv2d(384, 256, 3, 1, 1, name="conv_10", **kw)(x))
    x = _flatten(max_pool2d(x, 3, 2))
    x = nn.relu(Linear(256 * 5 * 5, 4096, name="fc_0", **kw)(x))
    x = Dropout(self.dropout, deterministic=not train)(x)
    x = nn.relu(Linear(4096, 4096, name="fc_3", **kw)(x))
    x = Dropout(self.dropout, deterministic=not train)(x)
    return Linear(4096, self.num_classes, name="fc_6", **kw)(x)


@register("cnn", example_shape=(28, 28, 1))
class CNN(nn.Module):
  """SPEC 2.6.2: the chapter 6 digit classifier. The seed's code for it is missing; this is
  dlcore's design of the conv-pool-conv-pool-fc-fc stack the chapter describes:
  conv1 1->32 3x3 pad 1, ReLU, max-pool 2 (28 -> 14); conv2 32->64 3x3 pad 1, ReLU,
  max-pool 2 (14 -> 7); fc1 3136-128, ReLU, Dropout; fc2 128-10.

  `features(x)` returns fc1's activations (the penultimate layer), used by
  `dlcore.metrics` for Frechet distances between image sets.
  """
  in_channels: int = 1
  num_classes: int = 10
  channels: tuple[int, int] = (32, 64)
  hidden: int = 128
  dropout: float = 0.5
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  def setup(self):
    c1, c2 = self.channels
    kw = dtypes(self)
    self.conv1 = Conv2d(self.in_channels, c1, 3, padding=1, **kw)
    self.conv2 = Conv2d(c1, c2, 3, padding=1, **kw)
    self.fc1 = Linear(c2 * 7 * 7, self.hidden, **kw)
    self.drop = Dropout(self.dropout)
    self.fc2 = Linear(self.hidden, self.num_classes, **kw)

  def features(self, x, *, train: bool = False):
    if x.shape[1:3] != (28, 28):
      raise ValueError(f"the chapter 6 CNN expects 28x28 images, got {x.shape[1:3]}")
    x = max_pool2d(nn.relu(self.conv1(x)), 2)
    x = max_pool2d(nn.relu(self.conv2(x)), 2)
    return nn.relu(self.fc1(_flatten(x)))

  def __call__(self, x, *, train: bool = False):
    return self.fc2(self.drop(self.features(x, train=train), deterministic=not train))
