"""Reward transforms that blunt reward hacking (METHODS.md F), as pure numpy functions.

Each transform maps a proxy reward vector (plus what it needs: reference rewards, lengths,
group structure) to a new reward vector of the same shape:

  log_sigmoid_centred   r' = log sigmoid(r - r_ref(x))               (Wang et al. 2024)
  preference_as_reward  r' = mean_m sigmoid(r - r_ref_m(x))          (PAR, Fu et al. 2025)
  length_controlled     r' = r - b (len - mean_group(len)), b the within-group OLS slope
                        of r on len over the batch                    (see its docstring)

`r_ref(x)` is the proxy reward of a reference response to the same prompt (here: responses
of the initial policy). Both centred transforms are increasing in r for a fixed prompt, so
they never change which of a prompt's samples best-of-n picks; they change RL, where the
advantage depends on reward differences. `transformed_reward` adapts any REWARDS-signature
function `fn(completions, problems, lengths) -> [B]` to its transformed version.

References: Z. Wang et al. 2024, "Transforming and Combining Rewards for Aligning Large
Language Models" (arXiv:2402.00742); J. Fu et al. 2025, "Reward Shaping to Mitigate Reward
Hacking in RLHF" (arXiv:2502.18770); Y. Dubois et al. 2024, "Length-Controlled AlpacaEval"
(arXiv:2404.04475); P. Singhal et al. 2023, "A Long Way to Go: Investigating Length
Correlations in RLHF" (arXiv:2310.03716).
"""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def _check_same(name: str, a: np.ndarray, b: np.ndarray, what: str):
  if a.shape != b.shape:
    raise ValueError(f"{name}: rewards {a.shape} and {what} {b.shape} must have the same shape")


def _log_sigmoid(x: np.ndarray) -> np.ndarray:
  """log(1 / (1 + e^-x)) without overflow: -log1p(e^-|x|) + min(x, 0)."""
  return np.minimum(x, 0.0) - np.log1p(np.exp(-np.abs(x)))


def _sigmoid(x: np.ndarray) -> np.ndarray:
  return np.exp(_log_sigmoid(x))


def log_sigmoid_centred(rewards: np.ndarray, ref_rewards: np.ndarray) -> np.ndarray:
  """r' = log sigmoid(r - r_ref): rewards/ref_rewards [B] -> [B] float64, always < 0.

  Diminishing returns above the reference (r' -> 0), close to r - r_ref far below it: a
  response already better than the reference gains little from a higher proxy score."""
  r, ref = np.asarray(rewards, np.float64), np.asarray(ref_rewards, np.float64)
  _check_same("log_sigmoid_centred", r, ref, "ref_rewards")
  return _log_sigmoid(r - ref)


def preference_as_reward(rewards: np.ndarray, ref_rewards: np.ndarray) -> np.ndarray:
  """PAR: r' = (1/M) sum_m sigmoid(r - r_ref_m), the Bradley-Terry probability that the
  response beats the reference responses. rewards [B], ref_rewards [B] or [B, M] -> [B] in (0, 1)."""
  r, ref = np.asarray(rewards, np.float64), np.asarray(ref_rewards, np.float64)
  if ref.ndim == r.ndim:
    ref = ref[..., None]
  if ref.shape[:-1] != r.shape:
    raise ValueError(f"preference_as_reward: ref_rewards {ref.shape} must be [B] or [B, M] for rewards {r.shape}")
  return np.mean(_sigmoid(r[..., None] - ref), -1)


def length_controlled(rewards: np.ndarray, lengths: np.ndarray, group_size: int) -> np.ndarray:
  """Removes the part of the reward linearly explained by length, within prompt groups.

  rewards/lengths [B] with B = groups x group_size (consecutive rows share a prompt) -> [B].
  b = sum_i (r_i - rbar_g)(l_i - lbar_g) / sum_i (l_i - lbar_g)^2 over all rows (the
  pooled within-group, "fixed effects", OLS slope); r' = r - b (l - lbar_g). Afterwards the
  rewards are uncorrelated with length inside the groups, and each group's mean reward is
  unchanged. b = 0 when no group has length variation.

  This is the regression idea of length-controlled AlpacaEval (Dubois et al. 2024: fit the
  judge's preference with a length term, report it with that term zeroed) applied to a
  reward instead of a win rate; a fixed penalty r - c len (Singhal et al. 2023) is the
  REWARDS entry `length_penalty` combined by weight."""
  r, ln = np.asarray(rewards, np.float64), np.asarray(lengths, np.float64)
  _check_same("length_controlled", r, ln, "lengths")
  if group_size < 1 or r.ndim != 1 or r.size % group_size:
    raise ValueError(f"length_controlled: {r.shape} rewards are not whole groups of group_size={group_size}")
  rg, lg = r.reshape(-1, group_size), ln.reshape(-1, group_size)
  dr, dl = rg - rg.mean(1, keepdims=True), lg - lg.mean(1, keepdims=True)
  denom = float(np.sum(dl * dl))
  slope = float(np.sum(dr * dl)) / denom if denom > 0 else 0.0
  return (rg - slope * dl).reshape(-1)


TRANSFORMS = {"log_sigmoid": log_sigmoid_centred, "par": preference_as_reward}


def transformed_reward(reward_fn: Callable, transform: str,
                       reference: Callable[[Sequence], np.ndarray] | None = None,
                       group_size: int = 1) -> Callable:
  """A REWARDS-signature function fn(completions, problems, lengths) -> [B] float32 that
  applies `transform` to `reward_fn`'s output.

  transform: "log_sigmoid" | "par" (need `reference(problems) -> r_ref [B] or [B, M]`) or
  "length_controlled" (needs `group_size`, the rows per prompt)."""
  if transform in TRANSFORMS:
    if reference is None:
      raise ValueError(f"transformed_reward: transform {transform!r} needs reference rewards")
    fn = TRANSFORMS[transform]

    def reward(completions, problems, lengths=None):
      return fn(reward_fn(completions, problems, lengths), reference(problems)).astype(np.float32)
  elif transform == "length_controlled":
    def reward(completions, problems, lengths=None):
      if lengths is None:
        raise ValueError("transformed_reward: length_controlled needs the completion lengths")
      return length_controlled(reward_fn(completions, problems, lengths), lengths, group_size).astype(np.float32)
  else:
    raise ValueError(f"transformed_reward: unknown transform {transform!r}; allowed: "
                     f"{sorted(TRANSFORMS) + ['length_controlled']}")
  return reward
