"""Unbiased pass@k (Chen et al. 2021): 1 - C(n - c, k) / C(n, k)."""
from __future__ import annotations

import numpy as np


def pass_at_k(n: int, c: int, k: int) -> float:
  """Probability that at least one of k draws (without replacement) from n samples, c of
  them correct, is correct."""
  if k > n:
    raise ValueError(f"pass@k: k={k} is larger than n={n}")
  if n - c < k:
    return 1.0
  return float(1.0 - np.prod(1.0 - k / np.arange(n - c + 1, n + 1)))
