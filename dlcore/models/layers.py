"""Building blocks shared by several models."""
from __future__ import annotations

import flax.linen as nn

from dlcore.models.init import torch_bias_init, torch_kernel_init


class Sequential(nn.Sequential):
  """`nn.Sequential` with dlcore's call shape `__call__(x, *, train=False)`.

  Layers are stateless here (Dense, activations), so `train` is accepted and ignored; flax's
  own Sequential would pass it on to the first layer. Parameters are named `layers_<index>`,
  matching PyTorch's `seq_net[index]`.
  """

  def __call__(self, x, *, train: bool = False):
    return super().__call__(x)


def Linear(in_features: int, out_features: int, bias: bool = True, **kwargs) -> nn.Dense:
  """`torch.nn.Linear(in_features, out_features, bias)` as an `nn.Dense` with PyTorch's
  default init: kernel and bias U(-1/sqrt(in), 1/sqrt(in)). The seeds' printed losses come
  from that init. Parameters keep Dense's names (`kernel` = PyTorch weight.T, `bias`)."""
  return nn.Dense(out_features, use_bias=bias, kernel_init=torch_kernel_init,
                  bias_init=torch_bias_init(in_features), **kwargs)


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


def Conv2d(in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
           groups: int = 1, bias: bool = True, **kwargs) -> nn.Conv:
  """`torch.nn.Conv2d(in, out, kernel_size, stride, padding, groups=...)` as an `nn.Conv`
  on NHWC inputs, with PyTorch's default init (kernel and bias U(+-1/sqrt(fan_in)),
  fan_in = in/groups * kh * kw). Integer padding pads both sides, as PyTorch does; the
  kernel is HWIO (PyTorch's OIHW weight, transposed)."""
  kh, kw = _pair(kernel_size)
  ph, pw = _pair(padding)
  return nn.Conv(out_channels, (kh, kw), strides=_pair(stride), padding=((ph, ph), (pw, pw)),
                 feature_group_count=groups, use_bias=bias, kernel_init=torch_kernel_init,
                 bias_init=torch_bias_init(in_channels // groups * kh * kw), **kwargs)


def max_pool2d(x, kernel_size, stride=None):
  """`F.max_pool2d(x, kernel_size, stride)` on NHWC: no padding, floor mode (PyTorch's
  defaults); stride defaults to the kernel size."""
  k = _pair(kernel_size)
  return nn.max_pool(x, k, strides=_pair(stride) if stride else k)


class NamedSequential(nn.Module):
  """Layers applied in order under names of your choosing, like PyTorch's
  `nn.Sequential(OrderedDict([("fc1", nn.Linear(...)), ("relu1", nn.ReLU()), ...]))`
  (book chapter 3.3, SPEC 2.3.2). Parameters live under those names:
  `params["fc1"]["kernel"]`.

  `layers` is a tuple of (name, layer) pairs; a layer is a linen module or a function.
  BatchNorm and Dropout follow the `train` flag (batch statistics and dropout in training,
  running averages and identity in evaluation).
  """
  layers: tuple

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    names = [name for name, _ in self.layers]
    if len(set(names)) != len(names):
      raise ValueError(f"layer names must be unique, got {names}")
    for name, layer in self.layers:
      if not isinstance(layer, nn.Module):
        x = layer(x)
        continue
      layer = layer.clone(name=name, parent=self)
      if isinstance(layer, nn.BatchNorm):
        x = layer(x, use_running_average=not train)
      elif isinstance(layer, nn.Dropout):
        x = layer(x, deterministic=not train)
      elif isinstance(layer, (nn.Dense, nn.Conv)):
        x = layer(x)
      else:
        x = layer(x, train=train)
    return x
