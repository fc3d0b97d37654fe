"""Datasets as NumPy arrays and deterministic batch iterators."""
from __future__ import annotations

from typing import Iterator

import numpy as np

from dlcore.data import synthetic  # noqa: F401


class DataError(ValueError):
  """Data that cannot be trained on as it is: labels out of range, NaN/inf, a constant
  series. Raised before training, so it is not mistaken for divergence."""


def check_labels(labels, num_classes: int, where: str) -> None:
  labels = np.asarray(labels)
  if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
    raise DataError(f"{where}: labels must lie in 0..{num_classes - 1}, found "
                    f"{int(labels.min())}..{int(labels.max())}")


def check_finite(values, where: str) -> None:
  values = np.asarray(values)
  if np.issubdtype(values.dtype, np.floating) and not np.all(np.isfinite(values)):
    raise DataError(f"{where}: {int(np.sum(~np.isfinite(values)))} NaN or infinite values")


class Batches:
  """An epoch's batches of `arrays`: iterating yields dicts of aligned slices, the examples
  `selections[i]` for batch i. `fit`'s fused steps read `arrays` and `selections` instead,
  to gather the batches inside the compiled loop from one copy of `arrays` on the device
  (the same values, without a host copy of every batch): change an epoch's data by giving
  it other arrays, not by writing into these in place."""

  def __init__(self, arrays: dict, selections: list[np.ndarray]):
    self.arrays, self.selections = arrays, selections

  def __iter__(self) -> Iterator[dict]:
    return map(self.take, self.selections)

  def take(self, sel) -> dict:
    """The batch of examples `sel`."""
    return {k: v[sel] for k, v in self.arrays.items()}

  def __len__(self) -> int:
    return len(self.selections)


def batches(arrays: dict, batch_size: int, *, shuffle: bool = False, seed: int = 0,
            epoch: int = 0, drop_remainder: bool = False) -> Batches:
  """The batches of `arrays` (iterate for dicts of aligned slices; see `Batches`).

  The order depends only on (seed, epoch), so a resumed run sees the same batches."""
  if not arrays:
    raise ValueError("batches: no arrays to batch")
  n = len(next(iter(arrays.values())))
  if any(len(v) != n for v in arrays.values()):
    raise ValueError(f"arrays differ in length: { {k: len(v) for k, v in arrays.items()} }")
  return Batches(arrays, list(batch_indices(n, batch_size, shuffle=shuffle, seed=seed,
                                            epoch=epoch, drop_remainder=drop_remainder)))


def batch_indices(n: int, batch_size: int, *, shuffle: bool = False, seed: int = 0,
                  epoch: int = 0, drop_remainder: bool = False) -> Iterator[np.ndarray]:
  """The example indices of each batch `batches` yields for `n` examples."""
  idx = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
  stop = n - n % batch_size if drop_remainder else n
  for start in range(0, stop, batch_size):
    yield idx[start:start + batch_size]


def stacked_epoch(arrays: dict, batch_size: int) -> dict:
  """An in-order epoch laid out for `dlcore.train.steps.fused_epoch`: the full batches
  stacked on a leading axis, and the remainder (or None)."""
  n = len(next(iter(arrays.values())))
  k = n // batch_size
  if k == 0:
    raise ValueError(f"{n} examples make no full batch of {batch_size}")
  full = {name: v[:k * batch_size].reshape((k, batch_size) + v.shape[1:])
          for name, v in arrays.items()}
  rest = {name: v[k * batch_size:] for name, v in arrays.items()} if n % batch_size else None
  return {"full": full, "rest": rest}
