"""Book chapter 6 (SPEC 2.6.1-2.6.2): convolution arithmetic, and a small CNN classifier.

    python -m experiments.cnn                              # MNIST (needs the files or network)
    python -m experiments.cnn --dataset fashion_mnist      # offline with the Debian files

2.6.1  output shapes of `nn.Conv` for stride, padding ("same", "valid", explicit), several
       channels and groups, checked against the formula floor((n + 2p - k) / s) + 1; and the
       transposed convolution as the transpose of the convolution written as a matrix C:
       conv(x) = C x, and conv_transpose(y) = C^T y, for `jax.lax.conv_transpose` and
       `nn.ConvTranspose(transpose_kernel=True)`. (Flax's default `transpose_kernel=False`
       does not flip the kernel, so it equals C^T only for a flipped kernel: see the output.)
2.6.2  the chapter's CNN (conv-pool-conv-pool-fc-fc; the seed's code is missing, so the
       architecture is dlcore's, see `dlcore.models.CNN`): Adam 1e-3, batch 128, 10 epochs.
       The trained model is saved to <run>/model, where chapter 8 loads it to score samples.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import Annotated, ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlcore import optim
from dlcore.data.transforms import ImagePipeline
from dlcore.harness import cli
from dlcore.harness.classify import classifier_experiment
from dlcore.harness.rundir import start_run
from dlcore.harness.writers import say
from dlcore.models.custom import conv_matrix, conv_output_size


@dataclasses.dataclass
class Config:
  SWEEPABLE: ClassVar = ("lr",)  # --sweep: numbers in the step
  SWEEP_SHAPES: ClassVar = ("hidden", "batch_size")  # --sweep: one program per value
  common: cli.Shared = cli.shared()
  data: cli.ImageOptions = cli.image_data()
  epochs: cli.Positive[int] = 10
  """Training epochs."""
  batch_size: cli.Positive[int] = 128
  """Training batch size."""
  lr: Annotated[float, cli.Between(0.0)] = 1e-3
  """Adam learning rate."""
  channels: tuple[cli.Positive[int], ...] = (32, 64)
  """Output channels of the conv blocks."""
  hidden: cli.Positive[int] = 128
  """Width of the hidden fully connected layer."""
  dropout: cli.Fraction[float] = 0.5
  """Dropout rate before the classifier."""
  demos: bool = True
  """Run the 2.6.1 convolution shape demos."""
  train: bool = True
  """Train the 2.6.2 CNN."""

  def check(self):
    if self.common.sweep and not self.train:
      raise cli.ConfigError("--sweep trains the 2.6.2 CNN: drop --no-train")


SHAPE_CASES = [  # (description, nn.Conv keyword arguments) on an 8x8 single-channel input
    ("k3 p1 (same size)", dict(features=1, kernel_size=(3, 3), padding=((1, 1), (1, 1)))),
    ("k(5,3) p(2,1)", dict(features=1, kernel_size=(5, 3), padding=((2, 2), (1, 1)))),
    ("k(3,5) p(0,1) s(3,4)", dict(features=1, kernel_size=(3, 5), padding=((0, 0), (1, 1)),
                                  strides=(3, 4))),
    ("k3 'SAME' s2", dict(features=1, kernel_size=(3, 3), padding="SAME", strides=(2, 2))),
    ("k3 'VALID'", dict(features=1, kernel_size=(3, 3), padding="VALID")),
]


def _formula(n, k, p, s):
  return conv_output_size(n, k, p, s)


@functools.partial(jax.jit, static_argnums=(1, 2))
def _transposed(key, stride: int, oh: int):
  """A 3x3 kernel, an oh x oh input and three transposed convolutions of it (VALID, 5x5 out):
  lax's, flax's with transpose_kernel and flax's default (the kernel not flipped)."""
  kernel = jax.random.normal(key, (3, 3))
  y = jax.random.normal(jax.random.fold_in(key, stride), (oh, oh))
  k, yb = {"params": {"kernel": kernel[:, :, None, None]}}, y[None, :, :, None]
  by_lax = jax.lax.conv_transpose(yb, k["params"]["kernel"], (stride, stride), "VALID",
                                  transpose_kernel=True)[0, ..., 0]
  convt = functools.partial(nn.ConvTranspose, 1, (3, 3), strides=(stride, stride),
                            padding="VALID", use_bias=False)
  by_flax = convt(transpose_kernel=True).apply(k, yb)[0, ..., 0]
  return kernel, y, by_lax, by_flax, convt().apply(k, yb)[0, ..., 0]


def conv_demos(seed: int = 0) -> dict:
  # Shapes and kernel sizes come from abstract evaluation (`jax.eval_shape`: nothing is
  # compiled or run) and the transposed convolutions from one compiled program per stride;
  # op by op they took ~7 s of compilation on a 2-core CPU, the same numbers.
  key = jax.random.PRNGKey(seed)
  x = jax.ShapeDtypeStruct((1, 8, 8, 1), jnp.float32)
  shapes = {}
  say("2.6.1 output shapes on an 8x8 input:")
  for name, kw in SHAPE_CASES:
    conv = nn.Conv(**kw)
    y, _ = jax.eval_shape(lambda x, conv=conv: conv.init_with_output(key, x), x)
    pad = kw.get("padding")
    if isinstance(pad, tuple):
      stride = kw.get("strides", (1, 1))
      expect = tuple(_formula(8, k, p[0], s) for k, p, s in zip(kw["kernel_size"], pad, stride))
    elif pad == "SAME":  # ceil(n / s)
      expect = tuple(-(-8 // s) for s in kw["strides"])
    else:
      expect = tuple(_formula(8, k, 0, 1) for k in kw["kernel_size"])
    shapes[name] = list(y.shape[1:3])
    say(f"  {name:<22} -> {y.shape[1]}x{y.shape[2]} (formula {expect[0]}x{expect[1]})")
    assert tuple(y.shape[1:3]) == expect, (name, y.shape, expect)
  channels = {}
  for groups in (1, 2, 4):
    conv = nn.Conv(features=8, kernel_size=(3, 3), feature_group_count=groups)
    params = jax.eval_shape(conv.init, key, jax.ShapeDtypeStruct((1, 8, 8, 4), jnp.float32))[
        "params"]
    channels[f"groups={groups}"] = {"kernel": list(params["kernel"].shape),
                                    "weights": int(np.prod(params["kernel"].shape))}
    say(f"  4 -> 8 channels, 3x3, groups={groups}: kernel {params['kernel'].shape} "
          f"({np.prod(params['kernel'].shape)} weights: each output sees 4/{groups} input "
          "channels)")
  # Transposed convolution as C^T, for stride 1 and stride 2.
  errors = {}
  for stride in (1, 2):
    oh = conv_output_size(5, 3, 0, stride)
    kernel, y, by_lax, by_flax, unflipped = map(np.asarray, _transposed(key, stride, oh))
    c = conv_matrix(kernel, (5, 5), stride=stride)
    by_matrix = (c.T @ y.ravel()).reshape(5, 5)
    errors[f"stride {stride}"] = {
        "lax.conv_transpose": float(np.abs(by_lax - by_matrix).max()),
        "nn.ConvTranspose(transpose_kernel=True)": float(np.abs(by_flax - by_matrix).max()),
        "nn.ConvTranspose default (kernel not flipped)":
            float(np.abs(unflipped - by_matrix).max())}
    say(f"  stride {stride}: C is {c.shape}; |conv_transpose(y) - C^T y| max: "
          + ", ".join(f"{k} {v:.2e}" for k, v in errors[f'stride {stride}'].items()))
  return {"2.6.1": {"output_shapes_8x8": shapes, "groups_4_to_8": channels,
                    "transposed_conv_vs_matrix_max_error": errors}}


def main(argv=None) -> dict:
  cfg = cli.parse(Config, argv, __doc__.split("\n\n")[0])
  data = cli.load_image_data(cfg.data) if cfg.train else None  # fail fast, before any work
  run, runner = start_run(cfg, "cnn")
  summary = conv_demos(cfg.common.seed) if cfg.demos else {}
  if cfg.train:
    c, h, w = data.image_shape[2], *data.image_shape[:2]
    size = None if (h, w) == (28, 28) else 28  # the CNN is built for 28x28 inputs
    pipeline = ImagePipeline("pm1", size=size, resize="bilinear")
    adam = lambda lr: optim.make_optimizer("adam", lr)  # noqa: E731 (--sweep lr: an array)

    def setup(cfg):  # again for each value of a swept shape option (--sweep hidden=...)
      return dict(in_channels=c, num_classes=data.num_classes, channels=tuple(cfg.channels),
                  hidden=cfg.hidden, dropout=cfg.dropout), adam
    kwargs, _ = setup(cfg)
    entry, _ = classifier_experiment(
        cfg, run, runner, spec_id="2.6.2", model_name="cnn", model_kwargs=kwargs, data=data,
        pipeline=pipeline, tx=optim.make_optimizer("adam", cfg.lr), title="chapter 6 CNN",
        extra={"architecture": "conv-pool-conv-pool-fc-fc (dlcore's design; seed code missing)"},
        tx_factory=adam, setup=setup)
    summary |= entry
  run.update_summary(summary)
  run.close()
  return summary


if __name__ == "__main__":
  cli.entry(main)
