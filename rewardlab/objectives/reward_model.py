"""Reward-model objectives (METHODS.md sections A and B), pure functions of head outputs.

  bradley_terry        -(1-eps) log sigma(d - m) - eps log sigma(-(d - m)) + c (r_c + r_r)^2,
                       d = r_c - r_r; a tie has target 1/2: -1/2 log sigma(d) - 1/2 log sigma(-d)
  attribute_mse        mean over rated attributes of (pred - rating)^2
  ordinal_preference   -log P(c > r), P(c > r) = P(L_c > L_r) + 1/2 P(L_c = L_r) over K levels
  ordinal_ce           -log p(level) for rated responses
  general_preference   Bradley-Terry on the skew-symmetric score s(c, r) = v_c^T R v_r
  process_bce          binary cross-entropy of per-step scores against step labels

Each returns (mean loss, metrics); metrics always include the pairwise `accuracy` where a
pair is involved (ties excluded from it).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

log_sigmoid = jax.nn.log_sigmoid


def _pair_metrics(logit, tie):
  """logit of P(chosen > rejected) [B]; tie [B] bool. Accuracy over non-tied pairs."""
  decided = (~tie).astype(jnp.float32)
  correct = (logit > 0).astype(jnp.float32) * decided
  return {"accuracy": jnp.sum(correct) / jnp.maximum(jnp.sum(decided), 1.0),
          "margin": jnp.mean(logit), "prob_chosen": jnp.mean(jax.nn.sigmoid(logit))}


def preference_nll(logit, tie=None, label_smoothing: float = 0.0):
  """Per-pair cross-entropy of a preference logit against target 1 (smoothed to 1 - eps),
  or 1/2 for ties: [B] -> [B]."""
  target = jnp.full(logit.shape, 1.0 - label_smoothing)
  if tie is not None:
    target = jnp.where(tie, 0.5, target)
  return -(target * log_sigmoid(logit) + (1.0 - target) * log_sigmoid(-logit))


def bradley_terry(r_chosen, r_rejected, *, margin=None, tie=None, label_smoothing: float = 0.0,
                  center_coef: float = 0.0):
  """r_chosen, r_rejected, margin: [B] float; tie: [B] bool. A margin m asks the chosen to win
  by at least m (it is not applied to ties). The centering penalty keeps rewards near 0."""
  tie = jnp.zeros(r_chosen.shape, bool) if tie is None else tie
  d = r_chosen - r_rejected
  shifted = d if margin is None else d - jnp.where(tie, 0.0, margin)
  loss = preference_nll(shifted, tie, label_smoothing)
  center = jnp.square(r_chosen + r_rejected)
  metrics = dict(_pair_metrics(d, tie), reward_chosen=jnp.mean(r_chosen),
                 reward_rejected=jnp.mean(r_rejected), center=jnp.mean(center))
  return jnp.mean(loss + center_coef * center), metrics


def attribute_mse(pred, ratings, mask):
  """pred/ratings [N, k] float, mask [N, k] bool (which attributes are rated)."""
  err = jnp.square(pred - ratings) * mask
  loss = jnp.sum(err) / jnp.maximum(jnp.sum(mask), 1.0)
  return loss, {"attribute_mse": loss}


def ordinal_pair_prob(logits_c, logits_r):
  """P(L_c > L_r) + 1/2 P(L_c = L_r) for level logits [B, K] (levels independent given the
  responses) -> [B]."""
  pc, pr = jax.nn.softmax(logits_c, -1), jax.nn.softmax(logits_r, -1)
  cdf_r = jnp.cumsum(pr, -1) - pr            # P(L_r < k)
  return jnp.sum(pc * cdf_r, -1) + 0.5 * jnp.sum(pc * pr, -1)


def ordinal_preference(logits_c, logits_r, *, tie=None, label_smoothing: float = 0.0):
  """Cross-entropy of P(c > r) from two level distributions against the preference label."""
  tie = jnp.zeros(logits_c.shape[:1], bool) if tie is None else tie
  p = jnp.clip(ordinal_pair_prob(logits_c, logits_r), 1e-6, 1 - 1e-6)
  logit = jnp.log(p) - jnp.log1p(-p)
  return jnp.mean(preference_nll(logit, tie, label_smoothing)), _pair_metrics(logit, tie)


def ordinal_ce(logits, level, mask):
  """logits [N, K], level [N] int in [0, K), mask [N] bool -> mean -log p(level)."""
  nll = -jnp.take_along_axis(jax.nn.log_softmax(logits, -1), level[:, None], -1)[:, 0]
  loss = jnp.sum(nll * mask) / jnp.maximum(jnp.sum(mask), 1.0)
  return loss, {"ordinal_ce": loss}


def general_preference(score_cr, *, tie=None, label_smoothing: float = 0.0):
  """score_cr [B] = s(chosen, rejected) from the general-preference head."""
  tie = jnp.zeros(score_cr.shape, bool) if tie is None else tie
  return jnp.mean(preference_nll(score_cr, tie, label_smoothing)), _pair_metrics(score_cr, tie)


def process_bce(step_logits, labels, mask):
  """step_logits/labels [N, S] (labels in {0, 1}), mask [N, S] bool (real steps)."""
  nll = -(labels * log_sigmoid(step_logits) + (1 - labels) * log_sigmoid(-step_logits))
  n = jnp.maximum(jnp.sum(mask), 1.0)
  acc = jnp.sum(((step_logits > 0) == (labels > 0.5)) * mask) / n
  return jnp.sum(nll * mask) / n, {"step_accuracy": acc}


# the objective each reward-model head trains with (pipeline "rm", objective.name "reward_model")
HEAD_OBJECTIVES = {"scalar": bradley_terry, "ensemble": bradley_terry, "gated": (bradley_terry, attribute_mse),
                   "ordinal": (ordinal_preference, ordinal_ce), "general": general_preference,
                   "process": process_bce}
OBJECTIVES = {"reward_model": HEAD_OBJECTIVES}
