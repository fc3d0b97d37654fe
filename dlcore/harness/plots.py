"""Figures as PNG files (matplotlib's Agg backend: no display needed)."""
from __future__ import annotations

import os
from typing import Callable, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from dlcore import files, timing  # noqa: E402


# Every figure function's time counts as "figures" in the run's timings.
FIGURES = "figures"


def _write(fig, path: str, dpi: int) -> str:
  """Writes the figure all or nothing (a stop mid-write leaves no half PNG) and closes it."""
  try:
    with files.replacing(path, suffix=os.path.splitext(path)[1]) as tmp:
      fig.savefig(tmp, dpi=dpi)
  finally:
    plt.close(fig)
  return path


def _save(fig, path: str, *, dpi: int = 110) -> str:
  fig.tight_layout()
  return _write(fig, path, dpi)


def _legend_grid(ax) -> None:
  ax.legend()
  ax.grid(alpha=0.3)


@timing.section(FIGURES)
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
  return _save(fig, path)


def _line(ax, x, ys, label: str, **kw) -> None:
  """One curve; 2-D `ys` (members x points, from `--seeds N`) is drawn as the mean over
  members with a band from their minimum to their maximum."""
  ys = np.asarray(ys, dtype=float)
  if ys.ndim == 1:
    ax.plot(x, ys, label=label, **kw)
    return
  (line,) = ax.plot(x, ys.mean(0), label=f"{label} (mean of {len(ys)} seeds, band min-max)",
                    **kw)
  ax.fill_between(x, ys.min(0), ys.max(0), color=line.get_color(), alpha=0.2, lw=0)


@timing.section(FIGURES)
def curves(series: dict[str, Sequence[float]], path: str, *, xs: dict | None = None,
           title: str = "", xlabel: str = "step", ylabel: str = "loss",
           logy: bool = False) -> str:
  """Several named curves on one axis (loss curves, optimizer comparisons); a curve given
  per seed (members x points) is drawn as a mean with a band."""
  fig, ax = plt.subplots(figsize=(6, 4))
  for name, ys in series.items():
    x = (xs or {}).get(name, np.arange(1, np.shape(ys)[-1] + 1))
    _line(ax, x, ys, name)
  if logy:
    ax.set_yscale("log")
  ax.set_xlabel(xlabel)
  ax.set_ylabel(ylabel)
  ax.set_title(title)
  _legend_grid(ax)
  return _save(fig, path)


@timing.section(FIGURES)
def prediction(dates, series: dict[str, Sequence[float]], path: str, *, title: str = "") -> str:
  """Predicted vs actual values over dates (string or datetime64)."""
  x = np.asarray(dates).astype("datetime64[D]")
  fig, ax = plt.subplots(figsize=(8, 4))
  for name, ys in series.items():
    ax.plot(x, ys, label=name, lw=1.2 if name == "actual" else 1.0)
  ax.set_title(title)
  _legend_grid(ax)
  fig.autofmt_xdate()
  return _save(fig, path)


@timing.section(FIGURES)
def panels(groups: dict[str, dict[str, Sequence[float]]], path: str, *, x=None,
           xlabel: str = "epoch", title: str = "", logy: Sequence[str] = ()) -> str:
  """One subplot per group (e.g. "loss", "accuracy"), several named curves in each."""
  fig, axes = plt.subplots(1, len(groups), figsize=(5 * len(groups), 3.8), squeeze=False)
  for ax, (ylabel, series) in zip(axes[0], groups.items()):
    for name, ys in series.items():
      _line(ax, x if x is not None else np.arange(1, np.shape(ys)[-1] + 1), ys, name,
            marker=".")
    if ylabel in logy:
      ax.set_yscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.legend()
    ax.grid(alpha=0.3)
  if title:
    fig.suptitle(title)
  return _save(fig, path)


def make_grid(images: np.ndarray, nrow: int | None = None, *, padding: int = 2,
              pad_value: float = 1.0) -> np.ndarray:
  """NHWC images in [0, 1] as one (H, W, C) array: `nrow` images a row, `padding` pixels of
  `pad_value` around each (torchvision's `make_grid`). Image i sits in row i // nrow."""
  n, h, w, c = images.shape
  nrow = nrow or int(np.ceil(np.sqrt(n)))
  rows = int(np.ceil(n / nrow))
  grid = np.full((rows * (h + padding) + padding, nrow * (w + padding) + padding, c),
                 pad_value, np.float32)
  for i, img in enumerate(images):
    y, x = padding + (i // nrow) * (h + padding), padding + (i % nrow) * (w + padding)
    grid[y:y + h, x:x + w] = img
  return grid


TITLED_SCALE = 3  # a titled grid's pixels per image pixel (28 px images: 84 px cells)
TITLE_BAR = 28    # pixels above a titled grid


def _with_title(picture, title: str):
  """`picture` enlarged TITLED_SCALE times (nearest) under a bar with `title`, centred."""
  from PIL import Image, ImageDraw, ImageFont
  big = picture.resize((picture.width * TITLED_SCALE, picture.height * TITLED_SCALE),
                       Image.NEAREST)
  white = 255 if big.mode == "L" else (255, 255, 255)
  canvas = Image.new(big.mode, (big.width, big.height + TITLE_BAR), white)
  canvas.paste(big, (0, TITLE_BAR))
  ImageDraw.Draw(canvas).text((canvas.width / 2, TITLE_BAR / 2), title,
                              fill=0 if big.mode == "L" else (0, 0, 0),
                              font=ImageFont.load_default(size=15), anchor="mm")
  return canvas


@timing.section(FIGURES)
def image_grid(images: np.ndarray, path: str, *, nrow: int | None = None, title: str = "",
               labels: Sequence[str] | None = None, value_range=(0.0, 1.0)) -> str:
  """A grid of NHWC images (grey or RGB) as one PNG, like torchvision's `save_image`: the
  images are composed into one array (`make_grid`) and written as one picture. A title goes
  in a bar above the grid, drawn with PIL and the grid enlarged `TITLED_SCALE` times (no
  plot axes: an axis per image took ~1 s a grid, one matplotlib figure ~0.06 s); labels
  over the images take one plot axis.

  `value_range` maps pixel values to black..white (use (-1, 1) for tanh outputs)."""
  images = np.asarray(images, np.float32)
  if images.ndim == 2:  # flat vectors of square grey images
    side = int(round(np.sqrt(images.shape[1])))
    images = images.reshape(-1, side, side, 1)
  lo, hi = value_range
  images = np.clip((images - lo) / (hi - lo), 0, 1)
  n, h, w, _ = images.shape
  nrow = nrow or int(np.ceil(np.sqrt(n)))
  grid = make_grid(images, nrow)
  pixels = np.round(grid * 255).astype(np.uint8)
  if labels is None:
    from PIL import Image
    picture = Image.fromarray(pixels[..., 0] if pixels.shape[-1] == 1 else pixels)
    if title:
      picture = _with_title(picture, title)
    with files.replacing(path, suffix=".png") as tmp:
      picture.save(tmp, format="PNG")
    return path
  rows = int(np.ceil(n / nrow))
  fig = plt.figure(figsize=(nrow * 0.9, rows * 0.9 + (0.4 if title else 0)))
  ax = fig.add_axes((0, 0, 1, 1 - (0.4 / fig.get_figheight() if title else 0)))
  ax.axis("off")
  ax.imshow(pixels[..., 0] if pixels.shape[-1] == 1 else pixels, cmap="gray", vmin=0,
            vmax=255, interpolation="nearest")
  if labels is not None:
    for i, label in enumerate(labels[:n]):
      ax.text(2 + (i % nrow) * (w + 2) + w / 2, 2 + (i // nrow) * (h + 2), label,
              ha="center", va="bottom", fontsize=6)
  if title:
    fig.suptitle(title, fontsize=9)
  return _write(fig, path, 100)


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
  """Row-normalised confusion matrix (rows = true class), as scikit-learn's
  `confusion_matrix(..., normalize="true")` gives it (a class with no examples: a row of
  zeros). Written here because importing sklearn.metrics costs ~1 s, a twentieth of a short
  classifier run."""
  y_true, y_pred = np.asarray(y_true, np.int64), np.asarray(y_pred, np.int64)
  for name, y in (("true", y_true), ("predicted", y_pred)):
    if y.size and (y.min() < 0 or y.max() >= num_classes):
      raise ValueError(f"{name} labels must lie in 0..{num_classes - 1}, found "
                       f"{y.min()}..{y.max()}")
  counts = np.bincount(y_true * num_classes + y_pred,
                       minlength=num_classes * num_classes).reshape(num_classes, num_classes)
  with np.errstate(all="ignore"):
    return np.nan_to_num(counts / counts.sum(axis=1, keepdims=True))


@timing.section(FIGURES)
def confusion(y_true, y_pred, class_names: Sequence[str], path: str, *, title: str = "") -> str:
  """Confusion matrix, rows = true class, normalised per row (drawn as scikit-learn's
  `ConfusionMatrixDisplay` draws it)."""
  k = len(class_names)
  cm = confusion_matrix(y_true, y_pred, k)
  fig, ax = plt.subplots(figsize=(7, 6))
  ax.imshow(cm, interpolation="nearest", cmap="viridis", vmin=0.0, vmax=max(cm.max(), 1e-12))
  middle = (cm.max() + cm.min()) / 2.0
  for i in range(k):
    for j in range(k):
      ax.text(j, i, f"{cm[i, j]:.2f}", ha="center", va="center", fontsize=8,
              color=plt.cm.viridis(0.0 if cm[i, j] >= middle else 1.0))
  ax.set(xticks=range(k), yticks=range(k), xticklabels=class_names, yticklabels=class_names,
         xlabel="Predicted label", ylabel="True label", title=title)
  plt.setp(ax.get_xticklabels(), rotation=45, ha="right")
  return _save(fig, path)


@timing.section(FIGURES)
def scatter_fit(x, y, fits: dict[str, tuple], path: str, *, title: str = "") -> str:
  """Data points and fitted curves {name: (xs, ys)}."""
  fig, ax = plt.subplots(figsize=(6, 4))
  ax.scatter(x, y, s=10, color="0.5", label="data")
  for i, (name, (xs, ys)) in enumerate(fits.items()):
    ax.plot(xs, ys, label=name, lw=1.5, ls=("-", "--", ":", "-.")[i % 4])
  ax.set_title(title)
  _legend_grid(ax)
  return _save(fig, path)


@timing.section(FIGURES)
def sweep(rows: Sequence[dict], names: Sequence[str], key: str, path: str, *, seeds: int = 1,
          title: str = "") -> str:
  """A sweep's final `key` against each swept name (one panel per name; the other names'
  values as separate lines), the seeds' sample standard deviation as error bars; a log axis
  where the values span more than a decade."""
  fig, axes = plt.subplots(1, len(names), figsize=(5 * len(names), 4), squeeze=False)
  for ax, name in zip(axes[0], names):
    others = [n for n in names if n != name]
    groups: dict[tuple, list] = {}
    for row in rows:
      groups.setdefault(tuple(row["point"][n] for n in others), []).append(row)
    for values, group in groups.items():
      group = sorted(group, key=lambda r: r["point"][name])
      x = [r["point"][name] for r in group]
      y = [r[key] for r in group]
      err = [r.get(f"{key}_std", 0.0) for r in group] if seeds > 1 else None
      label = " ".join(f"{n}={v:g}" for n, v in zip(others, values)) or None
      ax.errorbar(x, y, yerr=err, marker="o", capsize=3, label=label)
    xs = [r["point"][name] for r in rows]
    if min(xs) > 0 and max(xs) / min(xs) > 10:
      ax.set_xscale("log")
    ax.set_xlabel(name)
    ax.set_ylabel(key + (f" (mean of {seeds} seeds, bars: std)" if seeds > 1 else ""))
    if others:
      ax.legend()
    ax.grid(alpha=0.3)
  fig.suptitle(title)
  return _save(fig, path)
