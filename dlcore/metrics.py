"""Sample-quality numbers for generative models, from a classifier's view of the images.

`frechet_distance` is the FID formula (Heusel et al., "GANs Trained by a Two Time-Scale
Update Rule Converge to a Local Nash Equilibrium", NeurIPS 2017) applied to features of
dlcore's chapter 6 CNN (its 128-d penultimate layer) instead of Inception-v3's: numbers are
comparable between models scored by the same classifier, not with published FIDs.
"""
from __future__ import annotations

import numpy as np
import scipy.linalg


def gaussian_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Mean and covariance (rows are samples), in float64."""
  f = np.asarray(features, np.float64)
  if f.ndim != 2 or len(f) < 2:
    raise ValueError(f"need a (samples, features) array with >= 2 samples, got {f.shape}")
  return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(a: np.ndarray, b: np.ndarray, ridge: float = 1e-6) -> float:
  """Frechet distance between Gaussians fitted to feature sets `a` and `b`:
  |mu_a - mu_b|^2 + Tr(S_a + S_b - 2 (S_a S_b)^(1/2)).

  ReLU features have dead units, so covariances are often singular; `ridge` * I is added to
  both (the reference FID code does so when the square root fails), so the result is the
  distance between the regularised Gaussians: exactly 0 for identical sets."""
  (mu1, s1), (mu2, s2) = gaussian_stats(a), gaussian_stats(b)
  eye = ridge * np.eye(len(s1))
  s1, s2 = s1 + eye, s2 + eye
  covmean = np.real(scipy.linalg.sqrtm(s1 @ s2))
  return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean))
