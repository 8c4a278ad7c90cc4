"""Supervised fine-tuning: negative log-likelihood of completion tokens."""
from __future__ import annotations

import jax.numpy as jnp

from rewardlab.ops import aggregate, masked_sum


def sft_loss(logps, mask, aggregation: str = "token_mean"):
  """loss = -aggregate(logps over completion tokens).

  logps: [B, T] float32 log pi(y_t | x, y_<t) of the target tokens.
  mask:  [B, T] bool, True on completion tokens (the loss positions).
  Returns (loss [], metrics dict of scalars).
  """
  loss = -aggregate(logps, mask, aggregation)
  n_tokens = jnp.sum(mask)
  nll_per_token = -masked_sum(logps, mask) / jnp.maximum(n_tokens, 1)
  return loss, {"nll_per_token": nll_per_token, "ppl": jnp.exp(nll_per_token),
                "loss_tokens": n_tokens.astype(jnp.float32)}


OBJECTIVES = {"sft": sft_loss}
