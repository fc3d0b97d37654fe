"""Building blocks shared by several models."""
from __future__ import annotations

import flax.linen as nn


class Sequential(nn.Sequential):
  """`nn.Sequential` with dlcore's call shape `__call__(x, *, train=False)`.

  Layers are stateless here (Dense, activations), so `train` is accepted and ignored; flax's
  own Sequential would pass it on to the first layer. Parameters are named `layers_<index>`,
  matching PyTorch's `seq_net[index]`.
  """

  def __call__(self, x, *, train: bool = False):
    return super().__call__(x)
