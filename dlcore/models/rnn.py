"""LSTMs of the book's chapter 7 (seed 002): a part-of-speech tagger and a time-series
regressor, built on Flax's `nn.RNN(nn.LSTMCell)`.

Axes are batch-major: inputs (batch, time, ...). The initial state (c, h) is zeros, as
PyTorch's default. Flax's LSTMCell keeps one Dense per gate: input kernels `ii, if, ig, io`
(no bias) and hidden kernels `hi, hf, hg, ho` (with the gate biases), gates in the order
input, forget, cell (g), output; PyTorch packs the same four as rows of `weight_ih_l0` /
`weight_hh_l0` in order i, f, g, o and keeps two bias vectors (b_ih + b_hh = Flax's bias).
"""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax.numpy as jnp

from dlcore.models.registry import register


@register("lstm_tagger", example_shape=(5,), dtype="int32")
class LSTMTagger(nn.Module):
  """SPEC 2.7.1: Embedding -> LSTM -> Linear -> log_softmax over tags, for every word.

  Input: word indices (batch, time), int. Output: log-probabilities (batch, time, tags).
  The seed's EMBEDDING_DIM / HIDDEN_DIM are not shown; 6 and 6 are PyTorch's tutorial values.
  """
  vocab_size: int = 10
  tagset_size: int = 3
  embedding_dim: int = 6
  hidden_dim: int = 6
  dtype: Any = jnp.float32  # computation
  param_dtype: Any = jnp.float32  # storage

  def setup(self):
    kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    self.word_embeddings = nn.Embed(self.vocab_size, self.embedding_dim,
                                    embedding_init=nn.initializers.normal(1.0), **kw)  # as torch
    self.lstm = nn.RNN(nn.LSTMCell(self.hidden_dim, **kw))
    self.hidden2tag = nn.Dense(self.tagset_size, **kw)

  def __call__(self, x, *, train: bool = False):
    h = self.lstm(self.word_embeddings(x.astype(jnp.int32)))
    # The output is what the NLL loss reads: log-probabilities in float32 at any computation
    # dtype (losses are float32), not rounded back to bfloat16.
    logits = self.hidden2tag(h)
    return nn.log_softmax(logits.astype(jnp.float32), axis=-1)


@register("lstm_regressor", example_shape=(30, 1))
class LSTMRegressor(nn.Module):
  """SPEC 2.7.2: LSTM over a window of past values, Linear on the last step's output.

  Input (batch, window, features); output (batch, 1): the next value."""
  hidden_dim: int = 32
  num_layers: int = 1
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, *, train: bool = False):
    kw = {"dtype": self.dtype, "param_dtype": self.param_dtype}
    if x.ndim == 2:  # (batch, window) of a univariate series
      x = x[..., None]
    for i in range(self.num_layers):
      # Cells made inline attach to this module: name the cell, not the RNN wrapper.
      x = nn.RNN(nn.LSTMCell(self.hidden_dim, name=f"lstm{i + 1}", **kw))(x)
    return nn.Dense(1, name="fc", **kw)(x[:, -1])
