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
