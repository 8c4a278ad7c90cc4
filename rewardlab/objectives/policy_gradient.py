"""Policy-gradient objectives for RL with verifiable rewards (METHODS.md section D).

Two kinds of pure functions:

* advantage estimators, from per-sequence rewards (and per-token log-probs where the KL
  is folded into the reward): `grpo_advantages`, `dr_grpo_advantages`, `rloo_advantages`,
  `reinforce_pp_advantages`, `gae_advantages`;
* one clipped-surrogate loss, `policy_gradient_loss`, whose switches (clip range, ratio
  level, KL penalty, aggregation) give GRPO, Dr.GRPO, DAPO, GSPO, RLOO and REINFORCE++;
  `ppo_loss` adds the clipped value loss.

`PG_OBJECTIVES` maps each method to its advantage estimator and default loss settings.
Shapes: B sequences (= num_prompts x group_size, prompt-major), T completion tokens.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp

from rewardlab.ops import aggregate, kl_estimate, masked_mean, masked_sum


# ----------------------------------------------------------------------------- checks
def check_rewards(rewards, group_size: int, need_groups: bool = True):
  """Host-side validation of a reward vector: clear errors instead of silent NaNs."""
  import numpy as np
  r = np.asarray(rewards)
  if r.ndim != 1:
    raise ValueError(f"rewards must be [B], got shape {r.shape}")
  if not np.all(np.isfinite(r)):
    bad = np.where(~np.isfinite(r))[0][:5].tolist()
    raise ValueError(f"rewards contain NaN/inf at rows {bad}")
  if need_groups and group_size < 2:
    raise ValueError(f"group_size={group_size}: group-normalised advantages need >= 2 samples per prompt")
  if r.shape[0] % group_size:
    raise ValueError(f"{r.shape[0]} rewards do not split into groups of {group_size}")


# ----------------------------------------------------------------------------- advantages
def _groups(rewards, group_size):
  return rewards.reshape(-1, group_size)


ADVANTAGE_STDS = ("unbiased", "population")


def grpo_advantages(rewards, group_size: int, eps: float = 1e-4, std: str = "unbiased"):
  """A_i = (r_i - mean_g r) / (std_g r + eps). rewards [B] -> [B].

  std "unbiased" divides the squared deviations by G - 1 (Bessel), as TRL
  (trl/trainer/grpo_trainer.py, GRPOTrainer._generate_and_score_completions via
  trl/trainer/utils.py nanstd; eps 1e-4), OpenRLHF (openrlhf/trainer/ppo_utils/
  experience_maker.py, compute_advantages_and_returns, "group_norm": torch std; eps 1e-9) and
  verl (verl/trainer/ppo/core_algos.py, compute_grpo_outcome_advantage: torch.std; eps 1e-6)
  all do; "population" divides by G (rewardlab before issue 21), which makes |A| larger by
  sqrt(G / (G - 1)): 6.9% at G = 8, 15% at G = 4. The defaults are TRL's; `PG_OBJECTIVES`
  sets each method's own."""
  if std not in ADVANTAGE_STDS:
    raise ValueError(f"grpo_advantages: std={std!r} is unknown; allowed: {ADVANTAGE_STDS}")
  if std == "unbiased" and group_size < 2:
    raise ValueError(f"grpo_advantages: group_size={group_size}: the unbiased std needs >= 2 samples per group")
  r = _groups(rewards, group_size)
  sd = r.std(-1, ddof=1 if std == "unbiased" else 0, keepdims=True)
  a = (r - r.mean(-1, keepdims=True)) / (sd + eps)
  return a.reshape(-1)


def dr_grpo_advantages(rewards, group_size: int):
  """A_i = r_i - mean_g r (no std division: no difficulty bias). [B] -> [B]."""
  r = _groups(rewards, group_size)
  return (r - r.mean(-1, keepdims=True)).reshape(-1)


def rloo_advantages(rewards, group_size: int):
  """A_i = r_i - mean_{j != i} r_j (leave-one-out baseline). [B] -> [B]."""
  r = _groups(rewards, group_size)
  baseline = (r.sum(-1, keepdims=True) - r) / (group_size - 1)
  return (r - baseline).reshape(-1)


def reinforce_pp_advantages(rewards, logp_old, logp_ref, mask, beta: float = 0.01,
                            kl: str = "k1", eps: float = 1e-6):
  """REINFORCE++: per-token reward -beta * KL_t plus the sequence reward at its last token;
  return-to-go; normalised over the whole batch (not per group). -> [B, T]."""
  kl_t = kl_estimate(logp_old, logp_ref, kl) * mask
  last = jnp.cumsum(mask, -1) == jnp.sum(mask, -1, keepdims=True)
  token_r = -beta * kl_t + jnp.where(last & mask, rewards[:, None], 0.0)
  returns = jnp.flip(jnp.cumsum(jnp.flip(token_r, -1), -1), -1)
  mean = masked_mean(returns, mask)
  std = jnp.sqrt(masked_mean(jnp.square(returns - mean), mask))
  return jnp.where(mask, (returns - mean) / (std + eps), 0.0)


def gae_advantages(token_rewards, values, mask, gamma: float = 1.0, lam: float = 0.95):
  """GAE(gamma, lambda) by a reverse scan. token_rewards, values, mask: [B, T].
  Returns (advantages [B, T], returns [B, T] = advantages + values)."""
  values = values * mask
  next_values = jnp.concatenate([values[:, 1:], jnp.zeros_like(values[:, :1])], -1)
  deltas = token_rewards + gamma * next_values - values

  def step(carry, xs):
    delta, m = xs
    adv = (delta + gamma * lam * carry) * m
    return adv, adv

  _, adv = jax.lax.scan(step, jnp.zeros(values.shape[0]), (deltas.T, mask.T.astype(values.dtype)),
                        reverse=True)
  adv = adv.T
  return adv, adv + values


def token_advantages(kind: str, rewards, group_size: int, logp_old, logp_ref, mask, *,
                     kl_in_reward: float = 0.01, kl: str = "k1", **estimator_kwargs):
  """Per-token advantages [B, T] for a sequence-reward estimator (ADVANTAGES, called with
  `estimator_kwargs`, e.g. grpo's std and eps: `advantage_kwargs`) broadcast over each
  completion's tokens, or REINFORCE++'s per-token returns (KL folded into the reward).
  rewards [B]; logp_old/logp_ref/mask [B, T]."""
  if kind == "reinforce_pp":
    return reinforce_pp_advantages(rewards, logp_old, logp_ref, mask, beta=kl_in_reward, kl=kl)
  adv = ADVANTAGES[kind](rewards, group_size, **estimator_kwargs)
  return jnp.broadcast_to(adv[:, None], mask.shape) * mask


def ppo_targets(rewards, logp_old, logp_ref, values, mask, *, kl_in_reward: float,
                gamma: float = 1.0, lam: float = 0.95):
  """PPO's GAE targets: per-token reward -kl_in_reward * k1 KL + the sequence reward at the
  last token -> GAE. rewards [B]; the rest [B, T]. Returns (advantages whitened over the
  batch's tokens [B, T], returns [B, T])."""
  mask = mask.astype(bool)
  last = (jnp.cumsum(mask, -1) == jnp.sum(mask, -1, keepdims=True)) & mask
  token_r = -kl_in_reward * (logp_old - logp_ref) * mask + jnp.where(last, rewards[:, None], 0.0)
  adv, returns = gae_advantages(token_r, values, mask, gamma, lam)
  mean = masked_mean(adv, mask)
  std = jnp.sqrt(masked_mean(jnp.square(adv - mean), mask))
  return jnp.where(mask, (adv - mean) / (std + 1e-6), 0.0), returns


# ----------------------------------------------------------------------------- losses
def policy_gradient_loss(logp_new, logp_old, logp_ref, mask, advantages, *,
                         clip_low: float = 0.2, clip_high: float = 0.2, beta: float = 0.0,
                         kl: str = "k3", kl_clamp: float | None = 10.0,
                         aggregation: str = "seq_mean", max_len: int | None = None,
                         ratio_level: str = "token", entropy=None):
  """Clipped surrogate + beta * KL(pi || ref), aggregated by the shared `aggregate`.

  logp_new/logp_old/logp_ref/mask: [B, T]; advantages: [B] (broadcast) or [B, T].
  ratio_level "token": rho_t = exp(logp_new - logp_old) (GRPO/DAPO/RLOO);
  "sequence": s_i = exp(mean_t(logp_new - logp_old)) for every token (GSPO).
  loss_t = -min(rho A, clip(rho, 1 - clip_low, 1 + clip_high) A) + beta * KL_t,
  KL_t = clip(kl_estimate, -kl_clamp, kl_clamp): [-10, 10] as OpenRLHF and verl clamp k3
  (see `ops.kl_estimate`); None or 0 turns the clamp off. The `kl_ref` metric is the
  clamped estimate the loss uses.
  """
  mask = mask.astype(bool)
  adv = advantages[:, None] if advantages.ndim == 1 else advantages
  adv = jnp.broadcast_to(adv, logp_new.shape)
  log_ratio = logp_new - logp_old
  if ratio_level == "sequence":
    seq = masked_mean(log_ratio, mask, axis=-1)
    # value of the sequence ratio, gradient of the token log-probs' mean (GSPO)
    log_ratio = jnp.broadcast_to(seq[:, None], log_ratio.shape)
  elif ratio_level != "token":
    raise ValueError(f"ratio_level {ratio_level!r} is unknown; allowed: ('token', 'sequence')")
  ratio = jnp.exp(log_ratio)
  clipped = jnp.clip(ratio, 1.0 - clip_low, 1.0 + clip_high)
  surrogate = jnp.minimum(ratio * adv, clipped * adv)
  per_token = -surrogate
  kl_ref = (kl_estimate(logp_new, logp_ref, kl, kl_clamp) if logp_ref is not None
            else jnp.zeros_like(logp_new))
  if beta:
    per_token = per_token + beta * kl_ref
  loss = aggregate(per_token, mask, aggregation, max_len)
  is_clipped = ((ratio < 1.0 - clip_low) & (adv < 0)) | ((ratio > 1.0 + clip_high) & (adv > 0))
  lengths = jnp.sum(mask, -1)
  metrics = {
      "clip_frac": masked_mean(is_clipped.astype(jnp.float32), mask),
      "approx_kl_old": masked_mean(kl_estimate(logp_new, logp_old, "k3"), mask),
      "kl_ref": masked_mean(kl_ref, mask),
      # per sequence: KL(pi || ref) of a whole completion, what overoptimization curves plot against
      "kl_ref_seq": jnp.mean(masked_sum(kl_ref, mask, axis=-1)),
      "ratio_mean": masked_mean(ratio, mask),
      "adv_mean": masked_mean(adv, mask),
      "adv_std": jnp.sqrt(masked_mean(jnp.square(adv - masked_mean(adv, mask)), mask)),
      "response_length": jnp.mean(lengths.astype(jnp.float32)),
  }
  if entropy is not None:
    metrics["entropy"] = masked_mean(entropy, mask)
  return loss, metrics


def ppo_loss(logp_new, logp_old, logp_ref, mask, advantages, values, old_values, returns, *,
             clip_low: float = 0.2, clip_high: float = 0.2, value_clip: float = 0.2,
             value_coef: float = 0.5, aggregation: str = "token_mean", max_len=None,
             entropy=None, **_):
  """PPO: clipped surrogate + value_coef * clipped value loss (per-token, [B, T] arrays).
  v_loss_t = 0.5 * max((V - R)^2, (clip(V, V_old +- value_clip) - R)^2).
  The KL to the reference lives in the reward (see `ppo_targets` above); logp_ref here
  only feeds the `kl_ref` metric."""
  pg, metrics = policy_gradient_loss(logp_new, logp_old, logp_ref, mask, advantages,
                                     clip_low=clip_low, clip_high=clip_high, beta=0.0,
                                     aggregation=aggregation, max_len=max_len, entropy=entropy)
  v_clipped = old_values + jnp.clip(values - old_values, -value_clip, value_clip)
  v_loss_t = 0.5 * jnp.maximum(jnp.square(values - returns), jnp.square(v_clipped - returns))
  v_loss = aggregate(v_loss_t, mask.astype(bool), aggregation, max_len)
  metrics = dict(metrics, value_loss=v_loss,
                 value_clip_frac=masked_mean((jnp.abs(values - old_values) > value_clip).astype(jnp.float32), mask))
  return pg + value_coef * v_loss, metrics


def overlong_penalty(lengths, max_len: int, buffer: int, penalty: float = 1.0):
  """DAPO soft overlong punishment: 0 up to max_len - buffer, then linearly down to
  -penalty at max_len. lengths [B] -> [B]."""
  over = (lengths - (max_len - buffer)) / max(buffer, 1)
  return -penalty * jnp.clip(over, 0.0, 1.0)


def nonuniform_groups(rewards, group_size: int):
  """DAPO dynamic sampling: True for groups whose rewards are not all equal. [B] -> [G]."""
  r = _groups(rewards, group_size)
  return jnp.any(r != r[:, :1], axis=-1)


def zero_grad_group_fraction(advantages, group_size: int):
  """Fraction of groups whose advantages are all zero (they carry no gradient)."""
  a = _groups(jnp.abs(advantages), group_size)
  return jnp.mean((a.max(-1) < 1e-8).astype(jnp.float32))


# ----------------------------------------------------------------------------- registry
# method -> (advantage estimator, default settings). Config `objective.*` overrides any key.
# Conventions follow the implementation users compare each method against:
#   advantage_std / adv_eps (group-normalised estimators): grpo as TRL (unbiased, 1e-4);
#     dapo and gspo as verl, where DAPO's and GSPO's reference recipes run (unbiased, 1e-6);
#     OpenRLHF's group_norm is adv_eps=1e-9; rewardlab before issue 21 was population, 1e-6.
#   kl_clamp: the KL penalty clamped to [-10, 10] as in OpenRLHF and verl (0 turns it off).
PG_OBJECTIVES = {
    "grpo": dict(advantage="grpo", advantage_std="unbiased", adv_eps=1e-4, clip_low=0.2, clip_high=0.2,
                 beta=0.04, kl="k3", kl_clamp=10.0, aggregation="seq_mean", ratio_level="token"),
    "dr_grpo": dict(advantage="dr_grpo", clip_low=0.2, clip_high=0.2, beta=0.0, kl="k3", kl_clamp=10.0,
                    aggregation="constant_sum", ratio_level="token"),
    "dapo": dict(advantage="grpo", advantage_std="unbiased", adv_eps=1e-6, clip_low=0.2, clip_high=0.28,
                 beta=0.0, kl="k3", kl_clamp=10.0, aggregation="token_mean", ratio_level="token",
                 dynamic_sampling=True, overlong_buffer=1, overlong_penalty=1.0),
    "gspo": dict(advantage="grpo", advantage_std="unbiased", adv_eps=1e-6, clip_low=3e-4, clip_high=4e-4,
                 beta=0.0, kl="k3", kl_clamp=10.0, aggregation="seq_mean", ratio_level="sequence"),
    "rloo": dict(advantage="rloo", clip_low=0.2, clip_high=0.2, beta=0.0, kl="k3", kl_clamp=10.0,
                 aggregation="token_mean", ratio_level="token"),
    "reinforce_pp": dict(advantage="reinforce_pp", clip_low=0.2, clip_high=0.2, beta=0.0,
                         kl="k1", kl_clamp=10.0, kl_in_reward=0.01, aggregation="token_mean",
                         ratio_level="token"),
    "ppo": dict(advantage="gae", clip_low=0.2, clip_high=0.2, beta=0.0, kl="k1",
                kl_in_reward=0.02, gamma=1.0, lam=0.95, value_clip=0.2, value_coef=0.5,
                aggregation="token_mean", ratio_level="token"),
}
ADVANTAGES = {"grpo": grpo_advantages, "dr_grpo": dr_grpo_advantages, "rloo": rloo_advantages,
              "reinforce_pp": reinforce_pp_advantages}
LOSS_KEYS = ("clip_low", "clip_high", "beta", "kl", "kl_clamp", "aggregation", "ratio_level")
# group advantage estimator -> {its keyword argument: the settings key that sets it}
ADVANTAGE_KEYS = {"grpo": {"std": "advantage_std", "eps": "adv_eps"}, "dr_grpo": {}, "rloo": {}}


def advantage_kwargs(settings: dict) -> dict:
  """Keyword arguments of `ADVANTAGES[settings["advantage"]]` taken from the method's
  settings (PG_OBJECTIVES defaults overridden by config `objective.*`), e.g.
  {"std": "unbiased", "eps": 1e-4} for grpo. Estimators without settings get {}."""
  keys = ADVANTAGE_KEYS.get(settings["advantage"], {})
  return {arg: settings[key] for arg, key in keys.items() if settings.get(key) is not None}


OBJECTIVES = {name: (ppo_loss if name == "ppo" else policy_gradient_loss) for name in PG_OBJECTIVES}
