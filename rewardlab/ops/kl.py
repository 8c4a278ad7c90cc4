"""Per-token KL estimators of KL(pi || ref) from samples of pi (Schulman's k1/k2/k3)."""
from __future__ import annotations

import jax.numpy as jnp

KL_KINDS = ("k1", "k2", "k3")


def kl_estimate(logp, logp_ref, kind: str = "k3", clamp: float | None = None):
  """logp, logp_ref: [...] log-probs of the sampled tokens under pi and ref -> [...].

  k1 = log r^-1 = logp - logp_ref (unbiased, high variance, can be negative)
  k2 = 0.5 (logp - logp_ref)^2 (biased, low variance)
  k3 = exp(logp_ref - logp) - (logp_ref - logp) - 1 (unbiased, >= 0)

  clamp c > 0 returns clip(estimate, -c, c), as OpenRLHF (openrlhf/models/utils.py,
  compute_approx_kl: every estimator, [-10, 10]) and verl (verl/trainer/ppo/core_algos.py,
  kl_penalty_forward: k3, [-10, 10]) do; tokens past the bound carry no gradient. None or 0:
  no clamp. For k3 the log-ratio is first limited to +-(c + 1), which changes no clamped
  value (k3 >= c there) but keeps exp() finite, so an extreme token cannot turn the gradient
  into inf * 0 = NaN (verl limits it to +-20 for the same reason).
  """
  if kind not in KL_KINDS:
    raise ValueError(f"kl_estimate: unknown kind {kind!r}; allowed: {KL_KINDS}")
  if clamp is not None and clamp < 0:
    raise ValueError(f"kl_estimate: clamp={clamp} must be >= 0 (0 or None: no clamp)")
  diff = logp_ref - logp
  if kind == "k1":
    est = -diff
  elif kind == "k2":
    est = 0.5 * jnp.square(diff)
  else:
    if clamp:
      diff = jnp.clip(diff, -(clamp + 1.0), clamp + 1.0)
    est = jnp.exp(diff) - diff - 1.0
  return jnp.clip(est, -clamp, clamp) if clamp else est
