"""Figures as PNG files (matplotlib's Agg backend: no display needed)."""
from __future__ import annotations

from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def decision_boundary(predict: Callable[[np.ndarray], np.ndarray], x: np.ndarray,
                      y: np.ndarray, path: str, *, title: str = "", h: float = 0.02) -> str:
  """The seed's `plot_decision_boundary`: predicted class over a grid, data on top.

  `predict` maps (n, 2) points to integer classes (n,)."""
  x_min, x_max = x[:, 0].min() - 1, x[:, 0].max() + 1
  y_min, y_max = x[:, 1].min() - 1, x[:, 1].max() + 1
  xx, yy = np.meshgrid(np.arange(x_min, x_max, h), np.arange(y_min, y_max, h))
  z = np.asarray(predict(np.c_[xx.ravel(), yy.ravel()].astype(np.float32))).reshape(xx.shape)
  fig, ax = plt.subplots(figsize=(5, 4.5))
  ax.contourf(xx, yy, z, cmap=plt.cm.Spectral, alpha=0.8)
  ax.scatter(x[:, 0], x[:, 1], c=np.asarray(y).reshape(-1), s=14, cmap=plt.cm.Spectral,
             edgecolors="k", linewidths=0.3)
  ax.set_xlabel("x1")
  ax.set_ylabel("x2")
  ax.set_title(title)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def curves(series: dict[str, Sequence[float]], path: str, *, xs: dict | None = None,
           title: str = "", xlabel: str = "step", ylabel: str = "loss",
           logy: bool = False) -> str:
  """Several named curves on one axis (loss curves, optimizer comparisons)."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, ys in series.items():
    x = (xs or {}).get(name, np.arange(1, len(ys) + 1))
    ax.plot(x, ys, label=name)
  if logy:
    ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  ax.legend()
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def prediction(dates, series: dict[str, Sequence[float]], path: str, *, title: str = "") -> str:
  """Predicted vs actual values over dates (string or datetime64)."""
  x = np.asarray(dates).astype("datetime64[D]")
  fig, ax = plt.subplots(figsize=(8, 4))
  for name, ys in series.items():
    ax.plot(x, ys, label=name, lw=1.2 if name == "actual" else 1.0)
  ax.set_title(title)
  ax.legend()
  ax.grid(alpha=0.3)
  fig.autofmt_xdate()
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
