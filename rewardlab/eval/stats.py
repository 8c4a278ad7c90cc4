"""Confidence intervals over seeds, and the difference between two configurations.

Why Student's t and not the bootstrap: a sweep has 3-5 seeds per configuration. With n = 3
the percentile bootstrap can only return one of 10 distinct resample means, and its 95%
interval covers the true mean far less than 95% of the time (it ignores the uncertainty of
the standard deviation itself); the t interval mean +- t_{0.975, n-1} s / sqrt(n) is exact for
normal seed-to-seed noise and widens correctly when n is small (t_{0.975, 2} = 4.30).

Why paired differences when the seeds match: in a sweep, seed s of configuration A and seed
s of B share their initialisation, data order and SFT warm-up, so much of the seed noise
(e.g. the warm-up's end point) is common to both. The paired interval on d_s = A_s - B_s
removes that shared part; Welch's interval (unequal variances) is used when the two seed
sets differ, e.g. across sweeps.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from scipy import stats


class Interval(NamedTuple):
  """mean and [low, high], a `level` confidence interval over n values (NaN bounds if n < 2)."""
  mean: float
  low: float
  high: float
  n: int

  def contains_zero(self) -> bool:
    return not (self.low > 0 or self.high < 0)

  def __str__(self) -> str:
    if math.isnan(self.low):
      return f"{self.mean:.3f} (n={self.n}, no interval)"
    return f"{self.mean:.3f} [{self.low:.3f}, {self.high:.3f}]"


def _values(values: Sequence[float], what: str) -> np.ndarray:
  x = np.asarray(values, np.float64)
  if x.ndim != 1 or x.size == 0:
    raise ValueError(f"{what}: expected a non-empty list of numbers, got shape {x.shape}")
  return x


def mean_ci(values: Sequence[float], level: float = 0.95) -> Interval:
  """Student-t interval of the mean: mean +- t_{(1+level)/2, n-1} * s / sqrt(n), s the sample
  standard deviation (ddof=1). values: [n]. n = 1 gives NaN bounds; a NaN value (a diverged
  run) gives a NaN mean, so it shows in the table instead of vanishing."""
  x = _values(values, "mean_ci")
  mean, n = float(np.mean(x)), x.size
  if n < 2 or not np.all(np.isfinite(x)):
    return Interval(mean, math.nan, math.nan, n)
  sem = float(stats.sem(x))
  if sem == 0.0:   # identical values: scipy's interval is undefined for scale 0
    return Interval(mean, mean, mean, n)
  low, high = stats.t.interval(level, n - 1, loc=mean, scale=sem)
  return Interval(mean, float(low), float(high), n)


def diff_ci(a: Sequence[float], b: Sequence[float], paired: bool, level: float = 0.95) -> Interval:
  """Interval of mean(A) - mean(B). paired: a[i] and b[i] come from the same seed, and the
  interval is the t interval of the differences (scipy's ttest_rel); else Welch's
  (ttest_ind, equal_var=False). n reports the pairs (paired) or min(len(a), len(b))."""
  x, y = _values(a, "diff_ci a"), _values(b, "diff_ci b")
  if paired:
    if x.size != y.size:
      raise ValueError(f"diff_ci: paired needs as many values in a ({x.size}) as in b ({y.size})")
    return mean_ci(x - y, level)
  mean, n = float(np.mean(x) - np.mean(y)), min(x.size, y.size)
  if n < 2 or not (np.all(np.isfinite(x)) and np.all(np.isfinite(y))):
    return Interval(mean, math.nan, math.nan, n)
  if np.var(x) == 0 and np.var(y) == 0:
    return Interval(mean, mean, mean, n)
  low, high = stats.ttest_ind(x, y, equal_var=False).confidence_interval(level)
  return Interval(mean, float(low), float(high), n)


def describe_difference(diff: Interval, a: str, b: str, metric: str) -> str:
  """"A > B on metric: +0.10 [0.04, 0.16]" (B > A: restated with B first, so the difference
  is positive), or "no difference detected ..." when the interval contains 0."""
  if math.isnan(diff.low):
    return f"no interval for {a} vs {b} on {metric}: {diff.mean:+.3f} from n={diff.n}"
  if diff.low > 0:
    return f"{a} > {b} on {metric}: {diff.mean:+.3f} [{diff.low:.3f}, {diff.high:.3f}]"
  if diff.high < 0:
    return f"{b} > {a} on {metric}: {-diff.mean:+.3f} [{-diff.high:.3f}, {-diff.low:.3f}]"
  return (f"no difference detected between {a} and {b} on {metric}: "
          f"{diff.mean:+.3f} [{diff.low:.3f}, {diff.high:.3f}]")
