"""Best-of-n selection by a (proxy) reward and its gold outcome (METHODS.md G).

Completions come in groups of n consecutive rows per prompt. Selecting the highest proxy
score per group is the best-of-n policy, whose KL to the sampling policy is
`log n - (n - 1) / n`; comparing its gold reward against a random pick (the group mean)
and the oracle pick (the group max) measures how much the proxy helps, or overoptimises.

`best_of_n_curve` turns K >= n scored samples per prompt into the expected gold and proxy
reward of best-of-n for every n <= K at once (the unbiased order-statistics estimator of
Gao et al. 2022, appendix); `best_of_n_probs` / `best_of_n_kl_exact` give the exact
best-of-n distribution and its KL for a discrete base distribution, where the analytic
KL is only an upper bound (Beirami et al. 2024, "Theoretical guarantees on the best-of-n
alignment policy"): repeated samples make the pick less concentrated.
"""
from __future__ import annotations

import numpy as np


def best_of_n_kl(n: int) -> float:
  """KL(best-of-n || base) = log n - (n - 1) / n: exact when samples never tie (a
  continuous proxy over a continuous base), an upper bound otherwise."""
  if n < 1:
    raise ValueError(f"best_of_n_kl: n={n} must be >= 1")
  return float(np.log(n) - (n - 1) / n)


def best_of_n_probs(probs: np.ndarray, proxy: np.ndarray, n: int) -> np.ndarray:
  """Exact best-of-n distribution over a discrete base: probs [K] (sums to 1), proxy [K]
  (distinct values) -> [K]. With items sorted by proxy and F the base CDF in that order,
  P(pick = item j) = F_j^n - F_{j-1}^n (all n draws at or below j, not all below j)."""
  probs, proxy = np.asarray(probs, np.float64), np.asarray(proxy, np.float64)
  if probs.shape != proxy.shape or probs.ndim != 1:
    raise ValueError(f"best_of_n_probs: probs {probs.shape} and proxy {proxy.shape} must be the same [K]")
  if abs(probs.sum() - 1.0) > 1e-6 or (probs < 0).any():
    raise ValueError(f"best_of_n_probs: probs must be a distribution (sum {probs.sum():.6g})")
  if len(np.unique(proxy)) != len(proxy):
    raise ValueError("best_of_n_probs: proxy has ties; the pick among tied items is not defined")
  order = np.argsort(proxy)
  cdf = np.cumsum(probs[order])
  below = np.concatenate([[0.0], cdf[:-1]])
  out = np.empty_like(probs)
  out[order] = cdf ** n - below ** n
  return out


def best_of_n_kl_exact(probs: np.ndarray, proxy: np.ndarray, n: int) -> float:
  """KL(best-of-n || base) of `best_of_n_probs` (<= best_of_n_kl(n))."""
  bon, probs = best_of_n_probs(probs, proxy, n), np.asarray(probs, np.float64)
  keep = bon > 0
  return float(np.sum(bon[keep] * (np.log(bon[keep]) - np.log(probs[keep]))))


def best_of_n_curve(proxy: np.ndarray, gold: np.ndarray, ns) -> dict:
  """Expected proxy and gold reward of best-of-n, for each n in `ns`, from K samples per prompt.

  proxy/gold [P, K] (K samples of the base policy per prompt) -> {"n", "kl_bon", "proxy",
  "gold"}, each [len(ns)] (averaged over prompts). Estimator: the pick of a uniformly random
  n-subset of the K samples is the j-th lowest-proxy sample (1-based) with probability
  C(j-1, n-1) / C(K, n), so the expectation is exact over all C(K, n) subsets rather than
  one draw (unbiased for the best-of-n of the base policy). Equal proxy scores are
  ordered by position, i.e. ties resolve as one fixed order.
  """
  from scipy.special import gammaln
  proxy, gold = np.asarray(proxy, np.float64), np.asarray(gold, np.float64)
  if proxy.shape != gold.shape or proxy.ndim != 2:
    raise ValueError(f"best_of_n_curve: proxy {proxy.shape} and gold {gold.shape} must be the same [P, K]")
  k = proxy.shape[1]
  order = np.argsort(proxy, axis=1, kind="stable")
  sorted_proxy = np.take_along_axis(proxy, order, 1)
  sorted_gold = np.take_along_axis(gold, order, 1)
  j = np.arange(1, k + 1, dtype=np.float64)
  log_choose = lambda a, b: gammaln(a + 1) - gammaln(b + 1) - gammaln(a - b + 1)  # noqa: E731
  out = {"n": [], "kl_bon": [], "proxy": [], "gold": []}
  for n in ns:
    if not 1 <= n <= k:
      raise ValueError(f"best_of_n_curve: n={n} needs 1 <= n <= K={k} samples per prompt")
    w = np.where(j >= n, np.exp(log_choose(np.maximum(j - 1, n - 1), n - 1) - log_choose(k, n)), 0.0)
    out["n"].append(int(n))
    out["kl_bon"].append(best_of_n_kl(int(n)))
    out["proxy"].append(float(np.mean(sorted_proxy @ w)))
    out["gold"].append(float(np.mean(sorted_gold @ w)))
  return {key: np.asarray(v) for key, v in out.items()}


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


def policy_best_of_n(graphdef, params, tokenizer, mesh, problems, score_fn, n: int,
                     max_new_tokens: int, max_prompt_len: int, seed: int = 0) -> dict:
  """Samples n completions per problem (temperature 1) from a policy, picks the best by
  `score_fn(prompts, completions) -> [N]`, and reports gold rewards (`gold_reward`)."""
  import jax
  from rewardlab.data import prompt_batch
  from rewardlab.data.preference import gold_reward
  from rewardlab.sampling import SamplingParams, make_sample_fn
  from rewardlab.sharding import shard_batch
  pb = prompt_batch([p.prompt for p in problems], tokenizer, max_prompt_len)
  sample = make_sample_fn(graphdef, SamplingParams(max_new_tokens, n=n, temperature=1.0,
                                                   stop_ids=(tokenizer.eos_id,)), tokenizer.pad_id, mesh)
  out = jax.device_get(sample(params, *shard_batch((pb.tokens, pb.valid), mesh), jax.random.PRNGKey(seed)))
  texts = tokenizer.decode_batch(out.tokens)
  expanded = [p for p in problems for _ in range(n)]
  gold = np.array([gold_reward(t, p.answer) for t, p in zip(texts, expanded)])
  proxy = score_fn([p.prompt for p in expanded], texts)
  return best_of_n_gold(proxy, gold, n)
