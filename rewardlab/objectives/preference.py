"""Preference optimization: the DPO family (METHODS.md section C), pure functions.

Inputs are summed completion log-probs `[B]` of the policy and the frozen reference on the
chosen (w) and rejected (l) responses, plus lengths where an objective normalises by
them. With `delta_w = logp_w - ref_w`, `delta_l = logp_l - ref_l` and
`h = beta * (delta_w - delta_l)`:

  dpo      -log sigma(h)
  cdpo     -(1-eps) log sigma(h) - eps log sigma(-h)              (label smoothing)
  robust   [-(1-eps) log sigma(h) + eps log sigma(-h)] / (1 - 2 eps)
  ipo      (delta_w/|w| - delta_l/|l| - 1/(2 beta))^2                (summed with length_normalize=False)
  hinge    max(0, 1 - h)                                          (SLiC)
  simpo    -log sigma(beta logp_w/|w| - beta logp_l/|l| - gamma)  (no reference)
  orpo     NLL(w)/|w| - lam log sigma(log odds_w - log odds_l),  odds = p/(1-p), p = exp(mean logp)
  rpo      dpo + alpha NLL(w)/|w|
  kto      unpaired: desirable lam_D (1 - sigma(beta (delta - z))), undesirable lam_U (1 - sigma(beta (z - delta)))
  tgdpo    dpo with per-token weights inside each sum (token-level guidance)
  sppo     (delta_y - eta (P(y > pi) - 1/2))^2 per sampled y

Every loss returns (mean loss, metrics): implicit rewards of chosen/rejected
(beta * delta), their margin, reward accuracy, and chosen/rejected log-probs.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

log_sigmoid = jax.nn.log_sigmoid


def _metrics(beta, logp_w, logp_l, ref_w, ref_l):
  rw = beta * (logp_w - ref_w)
  rl = beta * (logp_l - ref_l)
  return {"reward_chosen": jnp.mean(rw), "reward_rejected": jnp.mean(rl),
          "reward_margin": jnp.mean(rw - rl), "reward_accuracy": jnp.mean((rw > rl).astype(jnp.float32)),
          "logp_chosen": jnp.mean(logp_w), "logp_rejected": jnp.mean(logp_l)}


def _h(beta, logp_w, logp_l, ref_w, ref_l):
  return beta * ((logp_w - ref_w) - (logp_l - ref_l))


def dpo_loss(logp_w, logp_l, ref_w, ref_l, *, beta: float = 0.1, **_):
  """-log sigma(beta ((logp_w - ref_w) - (logp_l - ref_l))). All inputs [B]."""
  h = _h(beta, logp_w, logp_l, ref_w, ref_l)
  return jnp.mean(-log_sigmoid(h)), _metrics(beta, logp_w, logp_l, ref_w, ref_l)


def cdpo_loss(logp_w, logp_l, ref_w, ref_l, *, beta: float = 0.1, label_smoothing: float = 0.1, **_):
  """Conservative DPO: the preference label is wrong with probability eps."""
  h = _h(beta, logp_w, logp_l, ref_w, ref_l)
  eps = label_smoothing
  loss = -(1 - eps) * log_sigmoid(h) - eps * log_sigmoid(-h)
  return jnp.mean(loss), _metrics(beta, logp_w, logp_l, ref_w, ref_l)


def robust_dpo_loss(logp_w, logp_l, ref_w, ref_l, *, beta: float = 0.1, label_smoothing: float = 0.1, **_):
  """Robust DPO (Chowdhury et al.): unbiased under labels flipped with probability eps."""
  eps = label_smoothing
  if not 0.0 <= eps < 0.5:
    raise ValueError(f"robust DPO: label_smoothing={eps} must be in [0, 0.5)")
  h = _h(beta, logp_w, logp_l, ref_w, ref_l)
  loss = (-(1 - eps) * log_sigmoid(h) + eps * log_sigmoid(-h)) / (1 - 2 * eps)
  return jnp.mean(loss), _metrics(beta, logp_w, logp_l, ref_w, ref_l)


def ipo_loss(logp_w, logp_l, ref_w, ref_l, *, beta: float = 0.1, len_w=None, len_l=None,
             length_normalize: bool = True, **_):
  """IPO: regress the log-ratio gap to 1/(2 beta). All inputs [B].

  length_normalize (default, as TRL: trl/trainer/dpo_trainer.py, DPOTrainer._compute_loss,
  loss_type "ipo", whose comment says the IPO authors confirmed it and their reported results
  use it): each log-ratio is averaged over its completion's tokens, lengths clamped to >= 1,
  gap = (logp_w - ref_w) / |w| - (logp_l - ref_l) / |l|. False: summed log-ratios, the
  paper's sequence-level form (rewardlab before issue 21). Metrics stay beta * summed
  log-ratios, as TRL logs them."""
  dw, dl = logp_w - ref_w, logp_l - ref_l
  if length_normalize:
    if len_w is None or len_l is None:
      raise ValueError("ipo_loss: length_normalize=True needs len_w and len_l (completion token counts)")
    dw, dl = dw / jnp.maximum(len_w, 1), dl / jnp.maximum(len_l, 1)
  gap = dw - dl
  return jnp.mean(jnp.square(gap - 1.0 / (2.0 * beta))), _metrics(beta, logp_w, logp_l, ref_w, ref_l)


def hinge_loss(logp_w, logp_l, ref_w, ref_l, *, beta: float = 0.1, **_):
  """SLiC / hinge: max(0, 1 - h)."""
  h = _h(beta, logp_w, logp_l, ref_w, ref_l)
  return jnp.mean(jax.nn.relu(1.0 - h)), _metrics(beta, logp_w, logp_l, ref_w, ref_l)


def simpo_loss(logp_w, logp_l, ref_w, ref_l, *, len_w, len_l, beta: float = 2.0,
               gamma: float = 1.0, **_):
  """SimPO: reference-free, length-normalised rewards with a target margin gamma.
  ref_w / ref_l are ignored (may be None)."""
  rw = beta * logp_w / jnp.maximum(len_w, 1)
  rl = beta * logp_l / jnp.maximum(len_l, 1)
  loss = -log_sigmoid(rw - rl - gamma)
  zeros = jnp.zeros_like(logp_w)
  m = _metrics(beta, logp_w, logp_l, zeros, zeros)
  m.update(reward_chosen=jnp.mean(rw), reward_rejected=jnp.mean(rl), reward_margin=jnp.mean(rw - rl),
           reward_accuracy=jnp.mean((rw > rl).astype(jnp.float32)))
  return jnp.mean(loss), m


def _log_odds(mean_logp):
  """log(p / (1 - p)) for p = exp(mean_logp) < 1, computed stably."""
  return mean_logp - jnp.log(-jnp.expm1(jnp.minimum(mean_logp, -1e-6)))


def orpo_loss(logp_w, logp_l, ref_w, ref_l, *, len_w, len_l, lam: float = 0.1, **_):
  """ORPO: NLL of chosen (per token) - lam * log sigma(log odds_w - log odds_l). No reference."""
  mean_w = logp_w / jnp.maximum(len_w, 1)
  mean_l = logp_l / jnp.maximum(len_l, 1)
  ratio = _log_odds(mean_w) - _log_odds(mean_l)
  loss = -mean_w - lam * log_sigmoid(ratio)
  zeros = jnp.zeros_like(logp_w)
  m = _metrics(1.0, logp_w, logp_l, zeros, zeros)
  m.update(log_odds_ratio=jnp.mean(ratio), nll_chosen=-jnp.mean(mean_w),
           reward_accuracy=jnp.mean((ratio > 0).astype(jnp.float32)))
  return jnp.mean(loss), m


def rpo_loss(logp_w, logp_l, ref_w, ref_l, *, len_w, beta: float = 0.1, alpha: float = 1.0, **_):
  """DPO + alpha * per-token NLL of the chosen response (counters over-optimisation)."""
  dpo, m = dpo_loss(logp_w, logp_l, ref_w, ref_l, beta=beta)
  nll = jnp.mean(-logp_w / jnp.maximum(len_w, 1))
  return dpo + alpha * nll, dict(m, nll_chosen=nll)


def kto_loss(logp, ref, desirable, *, beta: float = 0.1, lambda_d: float = 1.0,
             lambda_u: float = 1.0, kl_logp=None, kl_ref=None, **_):
  """KTO on unpaired examples. logp/ref: [B] summed log-probs; desirable: [B] bool.

  The reference point z = max(0, mean(kl_logp - kl_ref)) is a batch estimate of
  KL(pi || ref) from mismatched (prompt, completion) pairs when given, else from the batch
  itself; it carries no gradient."""
  delta = logp - ref
  kl_src = delta if kl_logp is None else kl_logp - kl_ref
  z = jax.lax.stop_gradient(jnp.maximum(jnp.mean(kl_src), 0.0))
  good = lambda_d * (1 - jax.nn.sigmoid(beta * (delta - z)))
  bad = lambda_u * (1 - jax.nn.sigmoid(beta * (z - delta)))
  loss = jnp.where(desirable, good, bad)
  d = desirable.astype(jnp.float32)
  n_d, n_u = jnp.maximum(d.sum(), 1), jnp.maximum((1 - d).sum(), 1)
  metrics = {"kl_reference_point": z,
             "reward_chosen": jnp.sum(beta * delta * d) / n_d,
             "reward_rejected": jnp.sum(beta * delta * (1 - d)) / n_u}
  metrics["reward_margin"] = metrics["reward_chosen"] - metrics["reward_rejected"]
  return jnp.mean(loss), metrics


def tgdpo_loss(tok_w, tok_l, tok_ref_w, tok_ref_l, mask_w, mask_l, weight_w, weight_l, *,
               beta: float = 0.1, **_):
  """Token-level guided DPO: per-token weights (from a token-level reward) inside each sum.

  tok_*: [B, T] per-token log-probs; mask_*: [B, T]; weight_*: [B, T] (all ones = DPO).
  h = beta * (sum_t w_t (logp_t - ref_t) over chosen - same over rejected)."""
  dw = jnp.sum(weight_w * (tok_w - tok_ref_w) * mask_w, -1)
  dl = jnp.sum(weight_l * (tok_l - tok_ref_l) * mask_l, -1)
  h = beta * (dw - dl)
  logp_w, logp_l = jnp.sum(tok_w * mask_w, -1), jnp.sum(tok_l * mask_l, -1)
  ref_w, ref_l = jnp.sum(tok_ref_w * mask_w, -1), jnp.sum(tok_ref_l * mask_l, -1)
  return jnp.mean(-log_sigmoid(h)), _metrics(beta, logp_w, logp_l, ref_w, ref_l)


def sppo_loss(logp, ref, win_prob, *, eta: float = 1.0, **_):
  """SPPO: (logp - ref - eta (P(y > pi) - 1/2))^2 for each sampled y. Inputs [B]."""
  target = eta * (win_prob - 0.5)
  delta = logp - ref
  return jnp.mean(jnp.square(delta - target)), {"delta_mean": jnp.mean(delta),
                                                "target_mean": jnp.mean(target)}


# Paired objectives share one signature (logp_w, logp_l, ref_w, ref_l, len_w=, len_l=, **hp).
PAIRED = {"dpo": dpo_loss, "cdpo": cdpo_loss, "robust_dpo": robust_dpo_loss, "ipo": ipo_loss,
          "hinge": hinge_loss, "simpo": simpo_loss, "orpo": orpo_loss, "rpo": rpo_loss}
REFERENCE_FREE = ("simpo", "orpo")
OBJECTIVES = {**PAIRED, "kto": kto_loss, "tgdpo": tgdpo_loss, "sppo": sppo_loss}
