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
