"""Best-of-n selection by a (proxy) reward and its gold outcome (METHODS.md G).

Completions come in groups of n consecutive rows per prompt. Selecting the highest proxy
score per group is the best-of-n policy, whose KL to the sampling policy is
`log n - (n - 1) / n`; comparing its gold reward against a random pick (the group mean)
and the oracle pick (the group max) measures how much the proxy helps, or overoptimises.
"""
from __future__ import annotations

import numpy as np


def best_of_n_kl(n: int) -> float:
  """KL(best-of-n || base) = log n - (n - 1) / n (analytic, for distinct samples)."""
  return float(np.log(n) - (n - 1) / n)


def select_best(scores: np.ndarray, n: int) -> np.ndarray:
  """scores [P * n] -> row index [P] of each group's highest score (first on ties)."""
  scores = np.asarray(scores)
  if scores.size % n:
    raise ValueError(f"select_best: {scores.size} scores are not whole groups of n={n}")
  return np.arange(0, scores.size, n) + np.argmax(scores.reshape(-1, n), axis=1)


def best_of_n_gold(proxy: np.ndarray, gold: np.ndarray, n: int) -> dict:
  """Gold reward of the proxy's pick vs a random pick and the oracle, per prompt averaged."""
  gold = np.asarray(gold, np.float64)
  picked = gold[select_best(proxy, n)]
  groups = gold.reshape(-1, n)
  return {"n": n, "kl_bon": best_of_n_kl(n), "gold_best_of_n": float(picked.mean()),
          "gold_random": float(groups.mean()), "gold_oracle": float(groups.max(1).mean())}
