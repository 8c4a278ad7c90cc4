"""Label-free and self-generated rewards (METHODS.md E, A9, H): self-certainty, majority
vote, vote-based selection, and the LaSeR last-token self-reward.

Groups are n consecutive rows (the sampler's prompt-major order).
"""
from __future__ import annotations

import collections
import math
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from rewardlab.data.tasks import extract_answer


# --- self-certainty -------------------------------------------------------------------------

def self_certainty(vocab_mean_logp, mask, vocab_size: int):
  """SC(y) = mean_t KL(U || p_t) = mean_t [-(1/V) sum_v log p_t(v)] - log V.

  vocab_mean_logp [N, T] ((1/V) sum_v log p_t(v), returned by the sampler), mask [N, T]
  -> [N]. 0 for uniform predictions; grows without bound as p_t approaches one-hot."""
  per_token = -vocab_mean_logp - math.log(vocab_size)
  m = mask.astype(per_token.dtype)
  return jnp.sum(per_token * m, -1) / jnp.maximum(jnp.sum(m, -1), 1.0)


def self_certainty_from_logits(logits, mask):
  """The same from full logits [N, T, V] (reference implementation for tests)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), -1)
  return self_certainty(jnp.mean(logp, -1), mask, logits.shape[-1])


# --- voting ---------------------------------------------------------------------------------

def _group_winner(answers: Sequence[str], weights: Sequence[float]) -> str | None:
  """Highest total weight; ties go to the answer that appears first in the group. Empty
  answers never win (None if every answer is empty)."""
  totals = collections.OrderedDict()
  for a, w in zip(answers, weights):
    if a:
      totals[a] = totals.get(a, 0.0) + float(w)
  if not totals:
    return None
  best = max(totals.values())
  return next(a for a, t in totals.items() if t == best)


def majority_answers(answers: Sequence[str], n: int, weights=None) -> list[str | None]:
  """Per group of n: the (weighted) majority answer."""
  if len(answers) % n:
    raise ValueError(f"majority_answers: {len(answers)} answers are not whole groups of n={n}")
  w = np.ones(len(answers)) if weights is None else np.asarray(weights, np.float64)
  return [_group_winner(answers[g:g + n], w[g:g + n]) for g in range(0, len(answers), n)]


def majority_vote_reward(completions: Sequence[str], n: int) -> np.ndarray:
  """Label-free reward: 1 if a completion's extracted answer equals its group's majority
  answer, else 0. -> float32 [N]."""
  answers = [extract_answer(c) for c in completions]
  winners = majority_answers(answers, n)
  return np.array([float(a == winners[i // n] and a != "") for i, a in enumerate(answers)], np.float32)


def borda_weights(scores, n: int, power: float = 1.0) -> np.ndarray:
  """Within each group, the completion ranked r-th (0 = highest score) by `scores` gets
  (n - r)^power points: Borda voting with self-certainty or any score. -> [N]."""
  s = np.asarray(scores, np.float64).reshape(-1, n)
  ranks = np.argsort(np.argsort(-s, axis=1, kind="stable"), axis=1)
  return ((n - ranks) ** power).reshape(-1)


def select_by_vote(completions: Sequence[str], n: int, weights=None) -> list[str | None]:
  """Test-time selection: each group's answer by plain (weights None), score-weighted or
  Borda-weighted majority voting."""
  return majority_answers([extract_answer(c) for c in completions], n, weights)


# --- LaSeR: last-token self-reward ----------------------------------------------------------

def last_token_logprob(model, hidden, valid, token_id: int):
  """log pi(z | x, y) read at each row's last real token: hidden [N, T, D] -> [N].
  Only one row of the unembedding per sequence is computed (one token position of work)."""
  from rewardlab.models.heads import gather_last
  h = gather_last(hidden, valid)                                         # [N, D]
  logits = model.logits(h[:, None])[:, 0]                                # [N, V] f32
  return jax.nn.log_softmax(logits, -1)[:, token_id]


def laser_score(logp_z, beta: float, c: float):
  """s = beta * (log pi(z | x, y) - c), with c the reference's log-prob of z. [N] -> [N]."""
  return beta * (logp_z - c)


def laser_loss(score, verifier_reward):
  """Auxiliary MSE pulling the self-reward toward the verifier's: mean (s - r)^2."""
  return jnp.mean(jnp.square(score - verifier_reward))


def auc(scores, labels) -> float:
  """Area under the ROC curve: P(score of a positive > score of a negative), ties 1/2."""
  scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
  pos, neg = scores[labels], scores[~labels]
  if not len(pos) or not len(neg):
    return float("nan")
  greater = (pos[:, None] > neg[None, :]).mean()
  ties = (pos[:, None] == neg[None, :]).mean()
  return float(greater + 0.5 * ties)
