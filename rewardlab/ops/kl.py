"""Per-token KL estimators of KL(pi || ref) from samples of pi (Schulman's k1/k2/k3)."""
from __future__ import annotations

import jax.numpy as jnp


def kl_estimate(logp, logp_ref, kind: str = "k3"):
  """logp, logp_ref: [...] log-probs of the sampled tokens under pi and ref.

  k1 = log r^-1 = logp - logp_ref (unbiased, high variance, can be negative)
  k2 = 0.5 (logp - logp_ref)^2 (biased, low variance)
  k3 = exp(logp_ref - logp) - (logp_ref - logp) - 1 (unbiased, >= 0)
  """
  diff = logp_ref - logp
  if kind == "k1":
    return -diff
  if kind == "k2":
    return 0.5 * jnp.square(diff)
  if kind == "k3":
    return jnp.exp(diff) - diff - 1.0
  raise ValueError(f"kl_estimate: unknown kind {kind!r}; allowed: ('k1', 'k2', 'k3')")
