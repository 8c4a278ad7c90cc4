"""Overoptimization curves: the functional forms of Gao et al. 2022 ("Scaling Laws for Reward
Model Overoptimization", arXiv:2210.10760), fitted per seed with t-intervals over seeds.

With d = sqrt(KL(pi || pi_init)) and R(d) the gold reward gain over the initial policy:
  best-of-n   R_bon(d) = d (alpha - beta d)        peak at d* = alpha / (2 beta)
  RL          R_rl(d)  = d (alpha - beta log d)    peak at d* = exp(alpha / beta - 1)
Both are linear in (alpha, beta), so each seed's fit is an ordinary least-squares solve
through the origin (R(0) = 0 by construction). A peak exists when beta > 0.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

FORMS = ("bon", "rl")


def _basis(d: np.ndarray, form: str) -> np.ndarray:
  """[N] -> [N, 2] with R = basis @ (alpha, beta)."""
  if form == "bon":
    return np.stack([d, -d * d], 1)
  if form == "rl":
    d_log_d = np.where(d > 0, d * np.log(np.where(d > 0, d, 1.0)), 0.0)   # d log d -> 0 at 0
    return np.stack([d, -d_log_d], 1)
  raise ValueError(f"functional form {form!r} is unknown; allowed: {FORMS}")


def functional_form(d, alpha: float, beta: float, form: str) -> np.ndarray:
  """R(d) for the given coefficients: d [N] -> [N]."""
  d = np.asarray(d, np.float64)
  return _basis(d, form) @ np.array([alpha, beta])


def fit_form(d, gains, form: str) -> tuple[float, float]:
  """Least-squares (alpha, beta) of R(d) = d (alpha - beta d) ("bon") or d (alpha - beta log d)
  ("rl"). d, gains [N] (gains = gold reward minus the initial policy's). NaN points are dropped."""
  d, g = np.asarray(d, np.float64), np.asarray(gains, np.float64)
  if d.shape != g.shape or d.ndim != 1:
    raise ValueError(f"fit_form: d {d.shape} and gains {g.shape} must be the same [N]")
  keep = np.isfinite(d) & np.isfinite(g)
  if (d[keep] < 0).any():
    raise ValueError("fit_form: d = sqrt(KL) must be >= 0")
  basis = _basis(d[keep], form)
  if np.linalg.matrix_rank(basis) < 2:
    raise ValueError(f"fit_form: {int(keep.sum())} usable points do not determine two coefficients")
  (alpha, beta), *_ = np.linalg.lstsq(basis, g[keep], rcond=None)
  return float(alpha), float(beta)


def peak(alpha: float, beta: float, form: str) -> float:
  """d at which R(d) is largest: alpha / (2 beta) (bon), exp(alpha / beta - 1) (rl); inf if
  beta <= 0 (no peak: the gold reward never turns down)."""
  if beta <= 0:
    return float("inf")
  if form == "bon":
    return alpha / (2 * beta)
  if form == "rl":
    return float(np.exp(min(alpha / beta - 1.0, 700.0)))
  raise ValueError(f"functional form {form!r} is unknown; allowed: {FORMS}")


def t_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
  """(mean, low, high): Student-t interval for the mean of independent per-seed values;
  (value, nan, nan) for a single value."""
  from scipy import stats
  v = np.asarray(values, np.float64)
  v = v[np.isfinite(v)]
  if v.size == 0:
    return float("nan"), float("nan"), float("nan")
  mean = float(v.mean())
  if v.size == 1:
    return mean, float("nan"), float("nan")
  half = float(stats.t.ppf(0.5 + level / 2, v.size - 1) * v.std(ddof=1) / np.sqrt(v.size))
  return mean, mean - half, mean + half


def fit_over_seeds(curves: Sequence[tuple], form: str, level: float = 0.95) -> dict:
  """curves: one (d [N], gains [N]) per seed -> {"alpha", "beta", "peak_d": (mean, low, high),
  "per_seed": [(alpha, beta, peak_d)]}. Infinite peaks (beta <= 0) are left out of peak_d's
  interval and counted in "no_peak"."""
  fits = [fit_form(d, g, form) for d, g in curves]
  peaks = [peak(a, b, form) for a, b in fits]
  return {"alpha": t_interval([a for a, _ in fits], level),
          "beta": t_interval([b for _, b in fits], level),
          "peak_d": t_interval([p for p in peaks if np.isfinite(p)], level),
          "no_peak": int(sum(not np.isfinite(p) for p in peaks)),
          "per_seed": [(a, b, p) for (a, b), p in zip(fits, peaks)]}


def binned(x, y, edges) -> np.ndarray:
  """Mean of y over x in each bin [edges_i, edges_i+1): [N], [N], [E] -> [E - 1] (NaN if empty)."""
  x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
  which = np.digitize(x, edges) - 1
  out = np.full(len(edges) - 1, np.nan)
  for b in range(len(edges) - 1):
    sel = (which == b) & np.isfinite(y)
    if sel.any():
      out[b] = y[sel].mean()
  return out


def empirical_peak(d, gold) -> float:
  """d at the highest gold value of a measured curve (NaNs ignored)."""
  d, g = np.asarray(d, np.float64), np.asarray(gold, np.float64)
  ok = np.isfinite(g) & np.isfinite(d)
  if not ok.any():
    return float("nan")
  return float(d[ok][np.argmax(g[ok])])
