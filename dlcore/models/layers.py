"""Building blocks shared by several models."""
from __future__ import annotations

import contextlib
import functools
import sys
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from dlcore import parallel
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


def dtypes(module: nn.Module) -> dict:
  """The `dtype` (computation) and `param_dtype` (storage) of `module`, as keyword arguments
  for the layers it builds: every dlcore model passes its precision on this way."""
  return {"dtype": module.dtype, "param_dtype": module.param_dtype}


def _pair(v) -> tuple[int, int]:
  return (v, v) if isinstance(v, int) else tuple(v)


# Up to this many input channels, `auto_conv` uses `patch_conv` on the CPU backend
# (measured: see `patch_conv`).
PATCH_CONV_MAX_CHANNELS = 1
_NHWC = ((0, 3, 1, 2), (3, 2, 0, 1), (0, 3, 1, 2))  # NHWC / HWIO / NHWC as lax spells them


def patch_conv(lhs, rhs, window_strides, padding):
  """A 2-D NHWC x HWIO convolution (no dilation, one group) as one matrix product over
  patches gathered channel-major: P[(i, j, c), (b, y, x)] = x_padded[b, s*y + i, s*x + j, c],
  then kernel(kh*kw*C, O)^T @ P. Autodiff gives the kernel gradient as P @ dy^T and the
  input gradient as a sum of padded slices, both with the long (b, y, x) axis contiguous.

  Why: XLA's CPU backend computes convolutions with few input channels poorly (LeNet's
  1->6 5x5 conv: 6.7 ms forward+backward at batch 128 against 2.4 ms this way; AlexNet's
  1->96 11x11/4: 114 -> 65 ms at batch 32), while with many channels its own kernels win
  (32->64 3x3: 21 ms against 42). In between it depends on the neighbours: LeNet's 6->16
  conv alone is faster this way (5.1 -> 3.0 ms), but the whole LeNet step got slower
  (10.5 -> 24 ms, XLA fuses the patch gather with the pooling around it), so `auto_conv`
  uses patches for 1 input channel only. Tests check this against
  `lax.conv_general_dilated`, values and gradients.
  """
  kh, kw, c, o = rhs.shape
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs.shape[1:3], (kh, kw), window_strides, padding)
  (sh, sw), ((pt, pb), (pl, pr)) = window_strides, padding
  xc = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0))).transpose(3, 0, 1, 2)  # C,B,Hp,Wp
  _, n, hp, wp = xc.shape
  ho, wo = (hp - kh) // sh + 1, (wp - kw) // sw + 1
  patches = jnp.stack([xc[:, :, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw]
                       for i in range(kh) for j in range(kw)])  # kh*kw, C, B, Ho, Wo
  y = rhs.reshape(kh * kw * c, o).T @ patches.reshape(kh * kw * c, -1)
  return y.reshape(o, n, ho, wo).transpose(1, 2, 3, 0)


def _pads(lhs_shape, kernel_hw, window_strides, padding):
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(lhs_shape[1:3], kernel_hw, window_strides, padding)
  return tuple(window_strides), tuple(map(tuple, padding))


def _taps(xp, kh, kw, strides, out_hw):
  """The kh * kw strided views of the padded NHWC input, one per kernel tap (i, j)."""
  (sh, sw), (ho, wo) = strides, out_hw
  return [xp[:, i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
          for i in range(kh) for j in range(kw)]


def _padded(lhs, kh, kw, strides, padding):
  (pt, pb), (pl, pr) = padding
  xp = jnp.pad(lhs, ((0, 0), (pt, pb), (pl, pr), (0, 0)))
  return xp, ((xp.shape[1] - kh) // strides[0] + 1, (xp.shape[2] - kw) // strides[1] + 1)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def _shift_conv(lhs, rhs, window_strides, padding):
  kh, kw, _, _ = rhs.shape
  xp, out_hw = _padded(lhs, kh, kw, window_strides, padding)
  y, f32 = None, jnp.float32  # float32 sums, rounded once, as XLA's convolution does
  for t, view in enumerate(_taps(xp, kh, kw, window_strides, out_hw)):
    # (B, Ho, Wo, 1) * (O,): NHWC out, no transpose
    term = view.astype(f32) * rhs[t // kw, t % kw, 0].astype(f32)
    y = term if y is None else y + term
  return y.astype(jnp.result_type(lhs, rhs))


def _shift_conv_fwd(lhs, rhs, window_strides, padding):
  return _shift_conv(lhs, rhs, window_strides, padding), (lhs, rhs)


def _shift_conv_bwd(window_strides, padding, residuals, g):
  lhs, rhs = residuals
  dtypes = lhs.dtype, rhs.dtype
  lhs, rhs, g = (a.astype(jnp.float32) for a in (lhs, rhs, g))  # float32 sums, as XLA's
  kh, kw, c, o = rhs.shape

  def as_product(lhs):  # the same function as one matmul over NHWC patches
    xp, out_hw = _padded(lhs, kh, kw, window_strides, padding)
    patches = jnp.concatenate(_taps(xp, kh, kw, window_strides, out_hw), axis=-1)
    return patches @ rhs.reshape(kh * kw * c, o)

  # The kernel gradient as patches (taps, B*Ho*Wo) @ dy (B*Ho*Wo, O): dy stays NHWC and the
  # one-channel patches are stacked tap-major, so neither side is transposed. The input
  # gradient (a GAN discriminator's feeds its generator) as the patch gather's transpose;
  # XLA drops it where nothing uses it.
  xp, out_hw = _padded(lhs, kh, kw, window_strides, padding)
  patches = jnp.stack([t[..., 0] for t in _taps(xp, kh, kw, window_strides, out_hw)])
  d_rhs = (patches.reshape(kh * kw, -1) @ g.reshape(-1, o)).reshape(rhs.shape)
  d_lhs = jax.vjp(as_product, lhs)[1](g)[0]
  return d_lhs.astype(dtypes[0]), d_rhs.astype(dtypes[1])


_shift_conv.defvjp(_shift_conv_fwd, _shift_conv_bwd)


def shift_conv(lhs, rhs, window_strides, padding):
  """A 2-D NHWC x HWIO convolution with ONE input channel as kh * kw shifted multiply-adds
  that write NHWC directly: y = sum over taps (i, j) of x_padded[:, s*y + i, s*x + j, :] *
  kernel[i, j, 0, :], in that order. Its gradients (custom VJP) are those of one matmul over
  NHWC patches: the kernel's patches^T @ dy, the input's the transpose of the patch gather.

  Why: inside a step XLA fuses these multiply-adds with what follows (the bias, ReLU and a
  max pool: one loop over the input), where `patch_conv` writes its product channel-major
  and transposes it to NHWC. Alone it is slower (the CNN's conv1, 1 -> 32 3x3 at 28x28,
  batch 128, forward + kernel gradient: 22.0 ms against 15.3 for `patch_conv`), but the
  CNN's jitted step went 41.8 -> 32.7 ms with it and `max_pool2d`'s custom VJP, against
  40.2 with the VJP alone (`benchmarks.conv_layers` shapes, 9 alternating rounds in one
  process). Where nothing fuses it loses: LeNet's 1 -> 6 5x5 (2x slower), the DCGAN
  discriminator's 4x4 stride-2 conv1 (9.3 vs 3.7 ms with the input gradient). So `auto_conv`
  picks it for stride 1, >= `SHIFT_CONV_MIN_FEATURES` output channels and at most
  `SHIFT_CONV_MAX_TAPS` taps. Tests check it against `lax.conv_general_dilated`.
  """
  kh, kw, c, _ = rhs.shape
  if c != 1:
    raise ValueError(f"shift_conv takes one input channel, got {c}")
  strides, padding = _pads(lhs.shape, (kh, kw), window_strides, padding)
  return _shift_conv(lhs, rhs, strides, padding)


# `auto_conv` uses `shift_conv` for 1 input channel when the output has at least this many
# channels, the kernel at most this many taps and stride 1 (measured: see `shift_conv`).
SHIFT_CONV_MIN_FEATURES = 16
SHIFT_CONV_MAX_TAPS = 9


def _xla_conv(lhs, rhs, padding):
  return jax.lax.conv_general_dilated(lhs, rhs, (1, 1), padding,
                                      dimension_numbers=("NHWC", "HWIO", "NHWC"))


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _scatter_grad_conv(lhs, rhs, padding):
  return _xla_conv(lhs, rhs, padding)


def _scatter_grad_conv_fwd(lhs, rhs, padding):
  return _xla_conv(lhs, rhs, padding), (lhs, rhs)


def _scatter_grad_conv_bwd(padding, residuals, g):
  lhs, rhs = residuals
  kh, kw, c, o = rhs.shape
  (pt, pb), (pl, pr) = padding
  n, ho, wo, _ = g.shape
  # Each output position's contribution to its kh x kw input window (one matmul over the
  # output channels), then added into the padded input tap by tap (col2im); float32 sums for
  # half-precision models, as XLA's convolution accumulates. Tap-major (kh, kw, N, Ho, Wo, C),
  # so that each tap's slice is contiguous: LeNet's jit step 10.14 -> 8.80 ms against
  # position-major (N, Ho, Wo, kh, kw, C) (`python -m benchmarks.col2im_taps`). XLA computes
  # it as kernel @ dy^T, a dot that rounds differently from dy @ kernel^T.
  cols = jnp.einsum("mo,tco->tmc", g.reshape(-1, o), rhs.reshape(kh * kw, c, o),
                    preferred_element_type=jnp.float32).reshape(kh, kw, n, ho, wo, c)
  d_lhs = jnp.zeros((n, lhs.shape[1] + pt + pb, lhs.shape[2] + pl + pr, c), jnp.float32)
  for i in range(kh):
    for j in range(kw):
      d_lhs = d_lhs.at[:, i:i + ho, j:j + wo].add(cols[i, j])
  d_lhs = d_lhs[:, pt:pt + lhs.shape[1], pl:pl + lhs.shape[2]].astype(lhs.dtype)
  # The kernel gradient exactly as autodiff of XLA's convolution gives it.
  return d_lhs, jax.vjp(lambda r: _xla_conv(lhs, r, padding), rhs)[1](g)[0]


_scatter_grad_conv.defvjp(_scatter_grad_conv_fwd, _scatter_grad_conv_bwd)


def scatter_grad_conv(lhs, rhs, window_strides, padding):
  """XLA's 2-D NHWC x HWIO stride-1 convolution and its kernel gradient, with the input
  gradient computed as col2im: one product of dy and the kernel gives each output
  position's share of its kh x kw input window, added into the padded input tap by tap.

  Why: for few input channels XLA's CPU backend computes the input gradient (a full
  correlation of dy with the flipped kernel, padded by kh - 1) slowly: LeNet's conv2
  (6 -> 16 5x5 at 14x14, batch 128) 1.95 ms against 1.15 this way. With many channels its
  own kernel wins (the CNN's 32 -> 64 3x3: 5.9 against 8.2 ms), so `auto_conv` picks this
  for at most `SCATTER_GRAD_MAX_CHANNELS` input channels (more than one: one channel goes
  to `patch_conv` / `shift_conv`). The forward and the kernel gradient are XLA's, bit for
  bit; the input gradient sums in another order (float32 rounding; tested).
  """
  kh, kw, _, _ = rhs.shape
  strides, padding = _pads(lhs.shape, (kh, kw), window_strides, padding)
  if strides != (1, 1):
    raise ValueError(f"scatter_grad_conv takes stride 1, got {strides}")
  return _scatter_grad_conv(lhs, rhs, padding)


# `auto_conv` uses `scatter_grad_conv` for stride-1 convolutions with 2 to this many input
# channels on CPU (measured: see `scatter_grad_conv`).
SCATTER_GRAD_MAX_CHANNELS = 8


# `max_pool2d` takes its custom VJP for non-overlapping windows on CPU (see there).
TILE_POOL_VJP = True


@contextlib.contextmanager
def reference_kernels():
  """Functions traced inside take the layers dlcore used before its custom-VJP kernels:
  `patch_conv` for one input channel and XLA's convolution otherwise (no `shift_conv`, no
  `scatter_grad_conv`, whose rounding differs), and `max_pool2d` as plain autodiff of its
  chain of maxima (the same bits). All of it is plain JAX, so forward-mode autodiff
  (`jax.jvp`, `jacfwd`, `hessian`), which a custom VJP refuses, works through LeNet and the
  CNN in here. Also for instruments whose numbers must not move with a speed lever: the
  scoring CNN behind every published Frechet distance (`dlcore.harness.scoring`) is trained
  and applied in here, so its weights and features stay bit for bit those of earlier runs.
  Module-wide (not per thread): trace in one thread at a time while it is held."""
  global SHIFT_CONV_MIN_FEATURES, SCATTER_GRAD_MAX_CHANNELS, TILE_POOL_VJP
  saved = SHIFT_CONV_MIN_FEATURES, SCATTER_GRAD_MAX_CHANNELS, TILE_POOL_VJP
  SHIFT_CONV_MIN_FEATURES, SCATTER_GRAD_MAX_CHANNELS, TILE_POOL_VJP = sys.maxsize, 0, False
  try:
    yield
  finally:
    SHIFT_CONV_MIN_FEATURES, SCATTER_GRAD_MAX_CHANNELS, TILE_POOL_VJP = saved


def auto_conv(lhs, rhs, window_strides, padding, lhs_dilation=None, rhs_dilation=None,
              dimension_numbers=None, feature_group_count=1, precision=None, **kwargs):
  """`lax.conv_general_dilated` with the same signature, routed to `patch_conv` when that
  is faster: on the CPU backend, for a plain NHWC/HWIO 2-D convolution with at most
  `PATCH_CONV_MAX_CHANNELS` input channels (measured in `patch_conv`'s docstring), or to
  `shift_conv` for one input channel and many output channels (its docstring). GPUs and
  everything else get XLA's convolution. `Conv2d` passes this to `nn.Conv`."""
  plain = (lhs.ndim == 4 and feature_group_count == 1 and not kwargs
           and all(d in (None, 1) for d in tuple(lhs_dilation or ()) + tuple(rhs_dilation or ()))
           and jax.default_backend() == "cpu")
  if plain:
    dn = jax.lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
    plain = tuple(map(tuple, dn)) == _NHWC
  if (plain and 1 < lhs.shape[-1] <= SCATTER_GRAD_MAX_CHANNELS and precision is None
      and tuple(window_strides) == (1, 1)):
    return scatter_grad_conv(lhs, rhs, window_strides, padding)
  if plain and lhs.shape[-1] <= PATCH_CONV_MAX_CHANNELS:
    kh, kw, c, o = rhs.shape
    if (c == 1 and o >= SHIFT_CONV_MIN_FEATURES and kh * kw <= SHIFT_CONV_MAX_TAPS
        and tuple(window_strides) == (1, 1)):
      return shift_conv(lhs, rhs, window_strides, padding)
    return patch_conv(lhs, rhs, tuple(window_strides), padding)
  return jax.lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                      rhs_dilation, dimension_numbers, feature_group_count,
                                      precision=precision, **kwargs)


def Conv2d(in_channels: int, out_channels: int, kernel_size, stride=1, padding=0,
           groups: int = 1, bias: bool = True, **kwargs) -> nn.Conv:
  """`torch.nn.Conv2d(in, out, kernel_size, stride, padding, groups=...)` as an `nn.Conv`
  on NHWC inputs, with PyTorch's default init (kernel and bias U(+-1/sqrt(fan_in)),
  fan_in = in/groups * kh * kw). Integer padding pads both sides, as PyTorch does; the
  kernel is HWIO (PyTorch's OIHW weight, transposed). The convolution is `auto_conv`
  (the same function as `lax.conv_general_dilated`, faster for few input channels on CPU);
  pass `conv_general_dilated=jax.lax.conv_general_dilated` to force XLA's."""
  kh, kw = _pair(kernel_size)
  ph, pw = _pair(padding)
  kwargs.setdefault("conv_general_dilated", auto_conv)
  return nn.Conv(out_channels, (kh, kw), strides=_pair(stride), padding=((ph, ph), (pw, pw)),
                 feature_group_count=groups, use_bias=bias, kernel_init=torch_kernel_init,
                 bias_init=torch_bias_init(in_channels // groups * kh * kw), **kwargs)


def _pool_views(x, kh, kw, sh, sw, ho, wo):
  """The kh * kw strided views of `x` (..., H, W, C), in the order (0, 0), (0, 1), ..."""
  return [x[..., i:i + sh * (ho - 1) + 1:sh, j:j + sw * (wo - 1) + 1:sw, :]
          for i in range(kh) for j in range(kw)]


def _chain_max(views):
  out = views[0]
  for v in views[1:]:
    out = jnp.maximum(out, v)
  return out


@functools.partial(jax.custom_vjp, nondiff_argnums=(1, 2))
def _tile_max_pool(x, kh, kw):
  h, w = x.shape[-3], x.shape[-2]
  return _chain_max(_pool_views(x, kh, kw, kh, kw, h // kh, w // kw))


def _tile_max_pool_fwd(x, kh, kw):
  return _tile_max_pool(x, kh, kw), x


def _tile_max_pool_bwd(kh, kw, x, g):
  """Autodiff's gradient of `_chain_max`, bit for bit, assembled without scatters: JAX's
  `max(a, b)` sends g * (a == m) / (1 + (b == m)) to a (the same with a and b swapped), so
  each view's share is g times a chain of such factors (0, 1/2 or 1). The windows do not
  overlap, so the shares are interleaved into the input's layout by stack + reshape (one
  loop fusion) instead of autodiff's strided pads summed (4-12x slower on XLA's CPU)."""
  h, w = x.shape[-3], x.shape[-2]
  ho, wo = h // kh, w // kw
  views = _pool_views(x, kh, kw, kh, kw, ho, wo)
  partial_max = [views[0]]
  for v in views[1:]:
    partial_max.append(jnp.maximum(partial_max[-1], v))
  one, two, zero = (jnp.array(v, x.dtype) for v in (1, 2, 0))

  def share(a, m, b):  # jax.lax's _balanced_eq
    return jnp.where(a == m, one, zero) / jnp.where(b == m, two, one)

  shares = [None] * len(views)
  for k in range(len(views) - 1, 0, -1):
    shares[k] = g * share(views[k], partial_max[k], partial_max[k - 1])
    g = g * share(partial_max[k - 1], partial_max[k], views[k])
  shares[0] = g
  rows = [jnp.stack(shares[i * kw:(i + 1) * kw], axis=-2) for i in range(kh)]  # ho, wo, kw, c
  gx = jnp.stack(rows, axis=-4)  # ..., ho, kh, wo, kw, c
  gx = gx.reshape(gx.shape[:-5] + (ho * kh, wo * kw, gx.shape[-1]))
  gx = jnp.where(gx == 0, zero, gx)  # -0.0 -> +0.0, as autodiff's sum of zero-padded shares
  pad = [(0, 0)] * (x.ndim - 3) + [(0, h - ho * kh), (0, w - wo * kw), (0, 0)]
  return (jnp.pad(gx, pad),)


_tile_max_pool.defvjp(_tile_max_pool_fwd, _tile_max_pool_bwd)


def max_pool2d(x, kernel_size, stride=None):
  """`F.max_pool2d(x, kernel_size, stride)` on NHWC: no padding, floor mode (PyTorch's
  defaults); stride defaults to the kernel size.

  Computed as the elementwise maximum of the kh * kw strided views of `x`, not as
  `nn.max_pool` (`lax.reduce_window`): the outputs are identical, but reduce_window's
  gradient is XLA's select-and-scatter, which the CPU backend runs 4-12x slower than the
  gradient of a chain of maxima (benchmarks: LeNet's and the CNN's 2x2 pools, AlexNet's
  overlapping 3/2 pools). Gradients are identical too, except at exact ties inside a
  window, where this form splits the gradient among the tied inputs and PyTorch gives it to
  one; after a ReLU the usual ties are zeros, whose gradient the ReLU discards anyway.
  Non-overlapping windows (stride = kernel: LeNet, the CNN) take that same gradient, bit for
  bit, from a custom VJP that lays it out without strided pads (`_tile_max_pool_bwd`; the
  CNN's jitted step 41.8 -> 40.2 ms alone, 32.7 ms with `shift_conv`; LeNet 7.8 -> 7.4), on
  CPU, where it was measured. A custom VJP has no forward mode: `jax.jvp` / `hessian` through
  such a pool need `reference_kernels()`. `tests/test_image_models.py` checks both against
  `nn.max_pool` and the custom VJP against autodiff's.
  """
  kh, kw = _pair(kernel_size)
  sh, sw = _pair(stride) if stride else (kh, kw)
  h, w = x.shape[-3], x.shape[-2]
  ho, wo = (h - kh) // sh + 1, (w - kw) // sw + 1
  if ho < 1 or wo < 1:
    raise ValueError(f"max_pool2d: window {(kh, kw)} larger than the input {(h, w)}")
  if ((sh, sw) == (kh, kw) and kh * kw > 1 and TILE_POOL_VJP
      and jax.default_backend() == "cpu"):
    return _tile_max_pool(x, kh, kw)
  return _chain_max(_pool_views(x, kh, kw, sh, sw, ho, wo))


class BatchNorm(nn.Module):
  """PyTorch's `BatchNorm1d` / `BatchNorm2d` over the last (feature) axis.

  Training normalises with the batch mean and the biased batch variance, as both PyTorch and
  Flax do, but updates the running variance with the *unbiased* batch variance
  (n / (n - 1) times the biased one), as PyTorch does; `flax.linen.BatchNorm` keeps the
  biased one, so its running variance, and every evaluation-mode output, drifts from
  PyTorch's by a factor (n - 1) / n per update (1.6% on the parity test's batch of 8).
  Variables keep Flax's names (params `scale`, `bias`; batch_stats `mean`, `var`).

  `momentum` is Flax's convention: running = momentum * running + (1 - momentum) * batch,
  so PyTorch's default momentum 0.1 is 0.9 here.

  Batch statistics are those of the whole batch in every mode: under the Runner's pmap the
  mean, variance and n are taken over all devices (`dlcore.parallel`), so no axis name is
  passed. `axis_name` is only for your own `jax.pmap` code outside a Runner.

  Mixed precision: statistics, running averages and the normalisation are float32 whatever
  the input's dtype; the output is `dtype`, `scale` and `bias` are stored as `param_dtype`.
  """
  use_running_average: bool | None = None
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: str | None = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, use_running_average: bool | None = None):
    use_running_average = nn.merge_param("use_running_average", self.use_running_average,
                                         use_running_average)
    features = x.shape[-1]
    axes = tuple(range(x.ndim - 1))
    scale = self.param("scale", nn.initializers.ones, (features,), self.param_dtype)
    bias = self.param("bias", nn.initializers.zeros, (features,), self.param_dtype)
    ra_mean = self.variable("batch_stats", "mean", jnp.zeros, (features,), jnp.float32)
    ra_var = self.variable("batch_stats", "var", jnp.ones, (features,), jnp.float32)
    x = jnp.asarray(x, jnp.float32)  # statistics and normalisation in float32 at any dtype
    if use_running_average:
      mean, var = ra_mean.value, ra_var.value
    else:
      with parallel.data_axis_context(self.axis_name or parallel.data_axis()):
        mean, n = parallel.batch_mean(x, axes)
        var, _ = parallel.batch_mean(jnp.square(x - mean), axes)  # two passes: exact
      if not self.is_initializing():
        m = self.momentum
        unbiased = var * n / jnp.maximum(n - 1, 1)
        ra_mean.value = m * ra_mean.value + (1 - m) * mean
        ra_var.value = m * ra_var.value + (1 - m) * unbiased
    y = (x - mean) * jax.lax.rsqrt(var + self.epsilon) * scale.astype(jnp.float32) + bias
    return y.astype(self.dtype)


class Dropout(nn.Dropout):
  """`flax.linen.Dropout` whose mask is the same in every mode: under the Runner's pmap each
  device takes its slice of the whole batch's mask (`parallel.global_draw`) instead of
  drawing its own, so dropout drops the units it drops on one device."""

  @nn.compact
  def __call__(self, inputs, deterministic: bool | None = None, rng=None):
    deterministic = nn.merge_param("deterministic", self.deterministic, deterministic)
    if self.rate == 0.0 or deterministic:
      return inputs
    if self.rate == 1.0:  # as flax: no division by zero, no NaN gradients
      return jnp.zeros_like(inputs)
    keep_prob = 1.0 - self.rate
    if rng is None:
      rng = self.make_rng(self.rng_collection)
    shape = [1 if d in self.broadcast_dims else s for d, s in enumerate(inputs.shape)]
    if 0 in self.broadcast_dims:  # one mask for every example: nothing to slice
      mask = jax.random.bernoulli(rng, keep_prob, shape)
    else:
      mask = parallel.global_draw(lambda k, s: jax.random.bernoulli(k, keep_prob, s), rng,
                                  shape)
    mask = jnp.broadcast_to(mask, inputs.shape)
    return jax.lax.select(mask, inputs / keep_prob, jnp.zeros_like(inputs))


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
      if isinstance(layer, (nn.BatchNorm, BatchNorm)):
        x = layer(x, use_running_average=not train)
      elif isinstance(layer, nn.Dropout):
        x = layer(x, deterministic=not train)
      elif isinstance(layer, (nn.Dense, nn.Conv)):
        x = layer(x)
      else:
        x = layer(x, train=train)
    return x


class UpConv2x(nn.Module):
  """`nn.ConvTranspose(features, (4, 4), strides=(2, 2), padding="SAME")` (doubles H and
  W), computed as one stride-1 3x3 convolution to 4 * features channels followed by a
  depth-to-space shuffle. Same parameters (kernel (4, 4, in, features), bias) and the same
  outputs as the transposed convolution (tests/test_generative.py checks it against
  `nn.ConvTranspose`), but XLA's CPU backend runs the transposed convolution's kernel
  gradient as a slow input-dilated convolution: this form trains ~4x faster there.

  Why it is the same function: the transposed convolution zero-stuffs the input and
  correlates with the 4x4 kernel; along each axis, even outputs then see input offsets
  (-1, 0) through kernel taps (0, 2) and odd outputs offsets (0, +1) through taps (1, 3).
  The 3x3 kernel below places those taps for each of the 2x2 output phases.
  """
  features: int
  use_bias: bool = True
  kernel_init: Callable = nn.initializers.lecun_normal()
  bias_init: Callable = nn.initializers.zeros
  dtype: Any = jnp.float32  # computation
  param_dtype: Any = jnp.float32  # storage

  @nn.compact
  def __call__(self, x):
    cin = x.shape[-1]
    x = jnp.asarray(x, self.dtype)
    kernel = self.param("kernel", self.kernel_init, (4, 4, cin, self.features),
                        self.param_dtype)
    # _PHASE_TAPS[phase, window position, kernel tap] = 1 where the tap is used.
    w = jnp.einsum("pra,qsb,abio->rsipqo", _PHASE_TAPS, _PHASE_TAPS, kernel)
    w = w.reshape(3, 3, cin, 4 * self.features)
    y = jax.lax.conv_general_dilated(x, w.astype(self.dtype), (1, 1), ((1, 1), (1, 1)),
                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    n, h, wd, _ = y.shape
    y = y.reshape(n, h, wd, 2, 2, self.features).transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(n, 2 * h, 2 * wd, self.features)
    if self.use_bias:
      y = y + self.param("bias", self.bias_init, (self.features,), self.param_dtype).astype(
          self.dtype)
    return y


_PHASE_TAPS = np.zeros((2, 3, 4), np.float32)
_PHASE_TAPS[0, 0, 0] = _PHASE_TAPS[0, 1, 2] = 1  # even outputs: offsets -1, 0 <- taps 0, 2
_PHASE_TAPS[1, 1, 1] = _PHASE_TAPS[1, 2, 3] = 1  # odd outputs: offsets 0, +1 <- taps 1, 3
