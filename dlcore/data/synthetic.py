"""Synthetic datasets the seeds generate in code, reproduced with the seeds' own NumPy calls."""
from __future__ import annotations

import numpy as np


def planar_flower(m: int = 400, a: float = 4.0, seed: int = 1):
  """Seed 000's two-class "flower": `np.random.seed(1)`, m points, petals of radius a.

  Returns x float32 (m, 2) and y float32 (m, 1) in {0, 1}, drawn exactly as the seed draws."""
  rng = np.random.RandomState(seed)  # same stream as np.random.seed(seed)
  n = m // 2
  x = np.zeros((m, 2))
  y = np.zeros((m, 1), dtype="uint8")
  for j in range(2):
    ix = range(n * j, n * (j + 1))
    t = np.linspace(j * 3.12, (j + 1) * 3.12, n) + rng.randn(n) * 0.2
    r = a * np.sin(4 * t) + rng.randn(n) * 0.2
    x[ix] = np.c_[r * np.sin(t), r * np.cos(t)]
    y[ix] = j
  return x.astype(np.float32), y.astype(np.float32)


def random_regression(n: int = 64, d_in: int = 1000, d_out: int = 10, seed: int = 0):
  """Seed 001's data: x ~ N(0, 1) of (N, D_in), y ~ N(0, 1) of (N, D_out)."""
  rng = np.random.RandomState(seed)
  return (rng.randn(n, d_in).astype(np.float32), rng.randn(n, d_out).astype(np.float32))


FIZZBUZZ_CLASSES = ("number", "fizz", "buzz", "fizzbuzz")


def fizz_buzz_encode(i: int) -> int:
  """Seed 001: 3 for multiples of 15, 2 of 5, 1 of 3, else 0."""
  if i % 15 == 0:
    return 3
  if i % 5 == 0:
    return 2
  if i % 3 == 0:
    return 1
  return 0


def fizz_buzz_decode(i: int, prediction: int) -> str:
  return [str(i), "fizz", "buzz", "fizzbuzz"][prediction]


def binary_encode(i: int, num_digits: int = 10) -> np.ndarray:
  """Bit d of i at position d (least significant first), as the seed."""
  return np.array([i >> d & 1 for d in range(num_digits)], dtype=np.float32)


def fizzbuzz(lo: int, hi: int, num_digits: int = 10):
  """Inputs (binary encodings) and labels for i in [lo, hi)."""
  xs = np.stack([binary_encode(i, num_digits) for i in range(lo, hi)])
  ys = np.array([fizz_buzz_encode(i) for i in range(lo, hi)], dtype=np.int32)
  return xs, ys


def spiral(num_per_class: int = 500, num_classes: int = 3, noise: float = 0.2,
           seed: int = 1234) -> tuple[np.ndarray, np.ndarray]:
  """The cs231n spiral that Made With ML's notebook generated (seed 003): class j's points
  at radius r in [0, 1] and angle 4j + 4r + noise * N(0, 1)."""
  rng = np.random.RandomState(seed)
  xs, ys = [], []
  for j in range(num_classes):
    r = np.linspace(0.0, 1, num_per_class)
    t = np.linspace(j * 4, (j + 1) * 4, num_per_class) + rng.randn(num_per_class) * noise
    xs.append(np.c_[r * np.sin(t), r * np.cos(t)])
    ys.append(np.full(num_per_class, j))
  return np.concatenate(xs).astype(np.float32), np.concatenate(ys).astype(np.int32)


def read_spiral_csv(path: str) -> tuple[np.ndarray, np.ndarray, list[str]]:
  """Made With ML's spiral.csv (X1, X2, color): features, integer labels, class names."""
  import csv

  with open(path) as f:
    rows = list(csv.DictReader(f))
  if not rows or not {"X1", "X2", "color"} <= set(rows[0]):
    raise ValueError(f"{path}: expected columns X1, X2, color")
  classes = sorted({r["color"] for r in rows})
  x = np.array([[float(r["X1"]), float(r["X2"])] for r in rows], np.float32)
  y = np.array([classes.index(r["color"]) for r in rows], np.int32)
  return x, y, classes
