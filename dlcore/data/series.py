"""Univariate time series for the LSTM regressor (SPEC 2.7.2): sources, windows, splits."""
from __future__ import annotations

import csv

import numpy as np


def goog_daily_high():
  """Real daily highs that ship offline: Google's stock, 2004-08-19 to 2008-10-14 (1047
  trading days), from matplotlib's bundled sample data (`goog.npz`)."""
  from matplotlib import cbook
  prices = cbook.get_sample_data("goog.npz")["price_data"]
  return prices["date"].astype(str), prices["high"].astype(np.float64)


def read_csv(path: str, value_column: str | None = None, date_column: str | None = None):
  """Dates and values from a CSV with a header: the date column (default the first) and a
  value column (default `high`, else the second). Rows are sorted by date."""
  with open(path, newline="") as f:
    rows = list(csv.DictReader(f))
  if not rows:
    raise ValueError(f"{path}: no rows")
  cols = list(rows[0])
  date_column = date_column or cols[0]
  if value_column is None:
    value_column = next((c for c in cols if c.lower() == "high"), cols[1] if len(cols) > 1
                        else None)
  for c in (date_column, value_column):
    if c not in cols:
      raise ValueError(f"{path}: no column {c!r}; columns are {cols} (use --value-column)")
  try:
    pairs = sorted((r[date_column], float(r[value_column])) for r in rows)
  except ValueError as e:
    raise ValueError(f"{path}: column {value_column!r} is not numeric: {e}") from None
  dates, values = zip(*pairs)
  return np.array(dates), np.array(values, dtype=np.float64)


def windows(values: np.ndarray, window: int):
  """x[i] = values[i:i+window], y[i] = values[i+window] (the next value)."""
  if len(values) <= window:
    raise ValueError(f"series of {len(values)} values is too short for window {window}")
  idx = np.arange(window)[None, :] + np.arange(len(values) - window)[:, None]
  return values[idx], values[window:]


def chronological_split(values: np.ndarray, test_fraction: float):
  """Train = the first (1 - f) of the series, test = the rest; nothing is shuffled across."""
  cut = int(round(len(values) * (1 - test_fraction)))
  return values[:cut], values[cut:]


def sine_series(n: int = 600, period: float = 50.0, noise: float = 0.0, seed: int = 0):
  rng = np.random.default_rng(seed)
  t = np.arange(n)
  return np.sin(2 * np.pi * t / period) + noise * rng.standard_normal(n)
