"""Chapter 8 generative models (SPEC 2.8.1-2.8.4): VAE, fully connected GAN, conditional GAN
and DCGAN for 28x28 single-channel images.

Images are NHWC in [0, 1] for the VAE (its decoder ends in a sigmoid and its loss is BCE)
and in [-1, 1] for the GANs (their generators end in tanh). Discriminators return logits;
the seed's final Sigmoid is folded into the loss (`optax.sigmoid_binary_cross_entropy`),
which is the same function computed stably.
"""
from __future__ import annotations

import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from dlcore import parallel
from dlcore.losses import vae_loss  # noqa: F401  (moved to dlcore.losses; old import path)
from dlcore.models.layers import BatchNorm, Linear, UpConv2x, auto_conv, dtypes

F32 = jnp.float32
from dlcore.models.registry import register


def _flat(x):
  return x.reshape((x.shape[0], -1))


@register("vae", example_shape=(28, 28, 1))
class VAE(nn.Module):
  """SPEC 2.8.1: the book's fully connected VAE (after Kingma & Welling, "Auto-Encoding
  Variational Bayes", ICLR 2014): fc1 784-400 ReLU -> fc2 (mu, 20) and fc3 (log_var, 20);
  decoder fc4 20-400 ReLU -> fc5 400-784 -> sigmoid.

  Reparameterisation: z = mu + exp(log_var / 2) * eps, eps ~ N(0, I). The seed's formula 8.1
  writes exp(log_var), which would use the variance where the standard deviation belongs;
  exp(log_var / 2) is the standard deviation, so this is the correct form.

  `__call__` returns (reconstruction logits (N, 784), mu, log_var); it samples z with the
  "noise" RNG stream when `sample` (default: in training) and uses z = mu otherwise.
  """
  image_size: int = 784
  h_dim: int = 400
  z_dim: int = 20
  image_shape: tuple[int, ...] = (28, 28, 1)
  dtype: Any = F32  # computation
  param_dtype: Any = F32  # storage

  def setup(self):
    kw = dtypes(self)
    self.fc1 = Linear(self.image_size, self.h_dim, **kw)
    self.fc2 = Linear(self.h_dim, self.z_dim, **kw)
    self.fc3 = Linear(self.h_dim, self.z_dim, **kw)
    self.fc4 = Linear(self.z_dim, self.h_dim, **kw)
    self.fc5 = Linear(self.h_dim, self.image_size, **kw)

  def encode(self, x):
    h = nn.relu(self.fc1(_flat(x)))
    return self.fc2(h), self.fc3(h)

  def reparameterize(self, mu, log_var, key):
    # The noise of the whole batch, sliced under pmap: the same draw in every mode. Drawn
    # and combined in float32 at any dtype (the same noise in every precision).
    mu, log_var = mu.astype(F32), log_var.astype(F32)
    z = mu + jnp.exp(log_var / 2) * parallel.global_draw(jax.random.normal, key, mu.shape, F32)
    return z.astype(self.dtype)

  def decode_logits(self, z):
    return self.fc5(nn.relu(self.fc4(z)))

  def decode(self, z):
    """Images (N, H, W, C) in [0, 1] from latent codes (N, z_dim)."""
    return nn.sigmoid(self.decode_logits(z).astype(F32)).reshape((z.shape[0], *self.image_shape))

  def __call__(self, x, *, train: bool = False, sample: bool | None = None):
    mu, log_var = self.encode(x)
    if train if sample is None else sample:
      z = self.reparameterize(mu, log_var, self.make_rng("noise"))
    else:
      z = mu
    return self.decode_logits(z), mu, log_var


@register("gan_discriminator", example_shape=(28, 28, 1))
class Discriminator(nn.Module):
  """SPEC 2.8.2 D: Linear(784, 256) - LeakyReLU(0.2) - Linear(256, 256) - LeakyReLU(0.2) -
  Linear(256, 1) (- Sigmoid, folded into the loss). Goodfellow et al., "Generative
  Adversarial Nets", NeurIPS 2014. Layers named as the seed's Sequential indices."""
  image_size: int = 784
  hidden: int = 256
  dtype: Any = F32
  param_dtype: Any = F32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    kw = dtypes(self)
    x = nn.leaky_relu(Linear(self.image_size, self.hidden, name="layers_0", **kw)(_flat(x)), 0.2)
    x = nn.leaky_relu(Linear(self.hidden, self.hidden, name="layers_2", **kw)(x), 0.2)
    return Linear(self.hidden, 1, name="layers_4", **kw)(x)[:, 0]


@register("gan_generator", example_shape=(64,))
class Generator(nn.Module):
  """SPEC 2.8.2 G: Linear(64, 256) - ReLU - Linear(256, 256) - ReLU - Linear(256, 784) -
  Tanh; returns (N, 28, 28, 1) images in [-1, 1]."""
  latent_size: int = 64
  hidden: int = 256
  image_shape: tuple[int, ...] = (28, 28, 1)
  dtype: Any = F32
  param_dtype: Any = F32

  @nn.compact
  def __call__(self, z, *, train: bool = False):
    kw = dtypes(self)
    size = math.prod(self.image_shape)
    x = nn.relu(Linear(self.latent_size, self.hidden, name="layers_0", **kw)(z))
    x = nn.relu(Linear(self.hidden, self.hidden, name="layers_2", **kw)(x))
    x = jnp.tanh(Linear(self.hidden, size, name="layers_4", **kw)(x))
    return x.reshape((z.shape[0], *self.image_shape))


@register("cgan_discriminator", example_shape=(28, 28, 1), labels=True)
class ConditionalDiscriminator(nn.Module):
  """SPEC 2.8.3 D(x, y): the GAN discriminator on the image concatenated with an embedding of
  its label (Mirza & Osindero, "Conditional Generative Adversarial Nets", 2014), plus a
  projection term <embed(y), phi(x)> on the last hidden layer (Miyato & Koyama, "cGANs with
  Projection Discriminator", ICLR 2018; `projection=False` drops it). The projection makes
  D score image-label agreement directly, which the small concatenated embedding alone did
  weakly (Fashion-MNIST, 30 epochs: label accuracy of samples 0.775 without it)."""
  image_size: int = 784
  hidden: int = 256
  num_classes: int = 10
  embed_dim: int = 10
  projection: bool = True
  dtype: Any = F32
  param_dtype: Any = F32

  @nn.compact
  def __call__(self, x, y=None, *, train: bool = False):
    kw = dtypes(self)
    if y is None:
      y = jnp.zeros((x.shape[0],), jnp.int32)  # only for init without labels
    e = nn.Embed(self.num_classes, self.embed_dim, name="label_embed", **kw)(y)
    h = jnp.concatenate([_flat(x).astype(self.dtype), e], -1)
    h = nn.leaky_relu(Linear(h.shape[-1], self.hidden, name="layers_0", **kw)(h), 0.2)
    h = nn.leaky_relu(Linear(self.hidden, self.hidden, name="layers_2", **kw)(h), 0.2)
    out = Linear(self.hidden, 1, name="layers_4", **kw)(h)[:, 0]
    if self.projection:
      proj = nn.Embed(self.num_classes, self.hidden, embedding_init=nn.initializers.normal(0.02),
                      name="projection", **kw)(y)
      out = out + jnp.sum(proj * h, -1)
    return out


@register("cgan_generator", example_shape=(64,), labels=True)
class ConditionalGenerator(nn.Module):
  """SPEC 2.8.3 G(z, y): the GAN generator on z concatenated with a label embedding."""
  latent_size: int = 64
  hidden: int = 256
  num_classes: int = 10
  embed_dim: int = 10
  image_shape: tuple[int, ...] = (28, 28, 1)
  dtype: Any = F32
  param_dtype: Any = F32

  @nn.compact
  def __call__(self, z, y=None, *, train: bool = False):
    kw = dtypes(self)
    if y is None:
      y = jnp.zeros((z.shape[0],), jnp.int32)
    e = nn.Embed(self.num_classes, self.embed_dim, name="label_embed", **kw)(y)
    h = jnp.concatenate([z.astype(self.dtype), e], -1)
    h = nn.relu(Linear(h.shape[-1], self.hidden, name="layers_0", **kw)(h))
    h = nn.relu(Linear(self.hidden, self.hidden, name="layers_2", **kw)(h))
    h = jnp.tanh(Linear(self.hidden, math.prod(self.image_shape), name="layers_4", **kw)(h))
    return h.reshape((z.shape[0], *self.image_shape))


def _bn(name, kw):
  # PyTorch BatchNorm2d defaults: momentum 0.1 (0.9 in Flax's convention), eps 1e-5, the
  # unbiased running variance; whole-batch statistics in every mode (dlcore.parallel).
  return BatchNorm(momentum=0.9, epsilon=1e-5, name=name, **kw)


def _dcgan_init():
  # Radford et al.: weights N(0, 0.02).
  return nn.initializers.normal(0.02)


@register("dcgan_generator", example_shape=(100,))
class DCGANGenerator(nn.Module):
  """SPEC 2.8.4 G for 28x28: z (100) -> Dense 7*7*2c -> BN -> ReLU -> ConvTranspose c
  (4x4, stride 2) -> BN -> ReLU -> ConvTranspose channels (4x4, stride 2) -> tanh.
  Radford, Metz, Chintala, "Unsupervised Representation Learning with Deep Convolutional
  Generative Adversarial Networks", ICLR 2016: transposed convolutions instead of pooling,
  batch norm in G and D, ReLU in G, LeakyReLU(0.2) in D, N(0, 0.02) init, Adam 2e-4 b1 0.5.
  The 7 -> 14 -> 28 stack is the usual adaptation of their 64x64 design to 28x28.

  The transposed convolutions are `UpConv2x`: nn.ConvTranspose(4x4, stride 2, SAME) computed
  as a convolution plus depth-to-space (same parameters, same outputs, faster on CPU).
  `base` 32 by default keeps a CPU epoch under a minute; the common width is 64."""
  latent_size: int = 100
  base: int = 32
  channels: int = 1
  dtype: Any = F32
  param_dtype: Any = F32

  @nn.compact
  def __call__(self, z, *, train: bool = False):
    kw = dtypes(self)
    x = nn.Dense(7 * 7 * 2 * self.base, kernel_init=_dcgan_init(), name="fc", **kw)(z)
    x = nn.relu(_bn("bn0", kw)(x.reshape((-1, 7, 7, 2 * self.base)),
                               use_running_average=not train))
    x = UpConv2x(self.base, kernel_init=_dcgan_init(), name="deconv1", **kw)(x)
    x = nn.relu(_bn("bn1", kw)(x, use_running_average=not train))
    x = UpConv2x(self.channels, kernel_init=_dcgan_init(), name="deconv2", **kw)(x)
    return jnp.tanh(x)


@register("dcgan_discriminator", example_shape=(28, 28, 1))
class DCGANDiscriminator(nn.Module):
  """SPEC 2.8.4 D for 28x28: conv c (4x4, stride 2) -> LeakyReLU(0.2) -> conv 2c (4x4,
  stride 2) -> BN -> LeakyReLU(0.2) -> Dense 1 (logit). No BN on the input layer, as in
  Radford et al."""
  base: int = 32
  dtype: Any = F32
  param_dtype: Any = F32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    kw = dtypes(self)
    x = nn.Conv(self.base, (4, 4), strides=(2, 2), padding="SAME", kernel_init=_dcgan_init(),
                conv_general_dilated=auto_conv, name="conv1", **kw)(x)  # 1 channel: patches
    x = nn.leaky_relu(x, 0.2)
    x = nn.Conv(2 * self.base, (4, 4), strides=(2, 2), padding="SAME",
                kernel_init=_dcgan_init(), name="conv2", **kw)(x)
    x = nn.leaky_relu(_bn("bn2", kw)(x, use_running_average=not train), 0.2)
    return nn.Dense(1, kernel_init=_dcgan_init(), name="fc", **kw)(_flat(x))[:, 0]
