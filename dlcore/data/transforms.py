"""Image preprocessing that runs on the device, inside the compiled step.

Batches travel host -> device as uint8 (4x less than float32) and are normalised, padded or
resized by XLA. AlexNet's 224x224 inputs are made per batch: 60,000 resized images would
take 12 GB as float32.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

SCALES = ("unit", "pm1", "none")
RESIZES = ("pad", "bilinear")


@dataclasses.dataclass(frozen=True)
class ImagePipeline:
  """uint8 NHWC images -> float32 model inputs.

  scale:  "unit": x / 255 in [0, 1] (torchvision's ToTensor; the VAE's BCE needs it);
          "pm1": (x / 255 - 0.5) / 0.5 in [-1, 1] (the seed's Normalize([0.5], [0.5]);
          GANs' tanh range); "none": cast only.
  size:   square output side (None keeps the input size).
  resize: "pad": zero-pad around the image (LeNet's classic 28 -> 32; the padding is
          background, 0 before scaling); "bilinear": `jax.image.resize` (AlexNet's 224).
  flatten: reshape to (N, H*W*C) for fully connected models.
  """
  scale: str = "pm1"
  size: int | None = None
  resize: str = "pad"
  flatten: bool = False

  def __post_init__(self):
    if self.scale not in SCALES:
      raise ValueError(f"unknown scale {self.scale!r}; choose one of {SCALES}")
    if self.resize not in RESIZES:
      raise ValueError(f"unknown resize {self.resize!r}; choose one of {RESIZES}")

  def output(self, image_shape: tuple[int, ...], batch: int = 1) -> jax.ShapeDtypeStruct:
    """The shape and dtype the pipeline makes of `batch` uint8 images of `image_shape`
    (HWC), traced only: no program is compiled or run."""
    return jax.eval_shape(self, jax.ShapeDtypeStruct((batch, *image_shape), jnp.uint8))

  def __call__(self, x: jax.Array) -> jax.Array:
    if x.ndim != 4:
      raise ValueError(f"expected NHWC images, got shape {x.shape}")
    h, w = x.shape[1:3]
    if self.size and (h, w) != (self.size, self.size) and self.resize == "pad":
      if self.size < max(h, w):
        raise ValueError(f"cannot pad {h}x{w} images to {self.size}; use resize='bilinear'")
      top, left = (self.size - h) // 2, (self.size - w) // 2
      x = jnp.pad(x, ((0, 0), (top, self.size - h - top), (left, self.size - w - left),
                      (0, 0)))
    x = x.astype(jnp.float32)
    if self.scale == "unit":
      x = x / 255.0
    elif self.scale == "pm1":
      x = (x / 255.0 - 0.5) / 0.5
    if self.size and x.shape[1:3] != (self.size, self.size):
      x = jax.image.resize(x, (x.shape[0], self.size, self.size, x.shape[3]), "bilinear")
    if self.flatten:
      x = x.reshape((x.shape[0], -1))
    return x
