"""Initialisers shared by the models."""
import jax
import jax.numpy as jnp
from flax import linen as nn

# PyTorch's nn.Linear / nn.Conv default kernel init: kaiming_uniform(a=sqrt(5)), which is
# U(-1/sqrt(fan_in), 1/sqrt(fan_in)), i.e. variance 1/(3 fan_in). Used where the seed relied
# on PyTorch's defaults (its printed losses depend on them). Biases stay at Flax's zeros.
torch_kernel_init = nn.initializers.variance_scaling(1.0 / 3.0, "fan_in", "uniform")


def scaled_normal(scale: float):
  """N(0, 1) * scale, as the seeds' `torch.randn(...) * scale` raw parameters."""

  def init(key, shape, dtype=jnp.float32):
    return scale * jax.random.normal(key, shape, dtype)

  return init


def torch_bias_init(fan_in: int):
  """PyTorch's Linear/Conv bias init: U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / float(fan_in) ** 0.5

  def init(key, shape, dtype=jnp.float32):
    return jax.random.uniform(key, shape, dtype, -bound, bound)

  return init
