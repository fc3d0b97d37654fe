"""Parameter tables and counts (PyTorch's `print(net)` / `len(list(net.parameters()))`)."""
from __future__ import annotations

import jax
import numpy as np


def _path(keys) -> str:
  return ".".join(str(getattr(k, "key", getattr(k, "idx", k))) for k in keys)


def param_shapes(params) -> dict[str, tuple[int, ...]]:
  """'fc1.kernel' -> shape, in the tree's order."""
  flat, _ = jax.tree_util.tree_flatten_with_path(params)
  return {_path(p): tuple(np.shape(v)) for p, v in flat}


def count_params(params) -> int:
  """Number of scalar parameters (PyTorch's sum(p.numel() for p in net.parameters()))."""
  return int(sum(np.prod(np.shape(v)) for v in jax.tree.leaves(params)))


def param_table(params, title: str = "") -> str:
  """One line per parameter array: name, shape, size; then the totals."""
  shapes = param_shapes(params)
  width = max([len(k) for k in shapes] + [9])
  lines = [title] if title else []
  lines += [f"  {k:<{width}}  {str(s):<20} {int(np.prod(s)):>12,}" for k, s in shapes.items()]
  lines.append(f"  {len(shapes)} arrays, {count_params(params):,} parameters")
  return "\n".join(lines)
