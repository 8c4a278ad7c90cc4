"""Masked reductions that never divide by zero."""
from __future__ import annotations

import jax.numpy as jnp


def masked_sum(x, mask, axis=None):
  """sum(x * mask) over `axis`; mask is broadcast to x."""
  return jnp.sum(jnp.where(mask, x, 0.0), axis=axis)


def masked_mean(x, mask, axis=None):
  """sum(x * mask) / max(sum(mask), 1): 0 (not NaN) where the mask is empty."""
  mask = jnp.broadcast_to(mask, x.shape)
  return masked_sum(x, mask, axis) / jnp.maximum(jnp.sum(mask, axis=axis), 1)


def masked_var(x, mask, axis=None):
  """Population variance of the unmasked entries (0 where empty)."""
  mean = masked_mean(x, mask, axis)
  if axis is not None:
    mean = jnp.expand_dims(mean, axis)
  return masked_mean(jnp.square(x - mean), mask, axis)


AGGREGATIONS = ("seq_mean", "token_mean", "constant_sum")


def aggregate(per_token, mask, mode: str = "token_mean", max_len: int | None = None):
  """Reduces a per-token loss [B, T] to a scalar, the choice every objective shares.

  seq_mean:     mean over each sequence's tokens, then over sequences (GRPO): every
                sequence weighs the same, so a long sequence's tokens weigh less.
  token_mean:   sum over all tokens / number of tokens in the batch (DAPO): every token
                weighs the same.
  constant_sum: sum over all tokens / (B * max_len) (Dr.GRPO): a constant normaliser,
                no length bias; max_len defaults to T.
  """
  if mode == "seq_mean":
    return jnp.mean(masked_mean(per_token, mask, axis=-1))
  if mode == "token_mean":
    return masked_mean(per_token, mask)
  if mode == "constant_sum":
    denom = per_token.shape[0] * (per_token.shape[-1] if max_len is None else max_len)
    return masked_sum(per_token, mask) / denom
  raise ValueError(f"aggregation {mode!r} is unknown; allowed: {AGGREGATIONS}")


def aggregation_weight(mask, mode: str = "token_mean"):
  """What `aggregate(..., mask, mode)` divides by, up to a factor equal batches share: the
  tokens (token_mean) or the rows (seq_mean, constant_sum). Micro-batch losses weighted by
  it combine into the whole batch's loss. mask [B, T] -> [] float32."""
  if mode == "token_mean":
    return jnp.sum(mask).astype(jnp.float32)
  if mode in ("seq_mean", "constant_sum"):
    return jnp.float32(mask.shape[0])
  raise ValueError(f"aggregation {mode!r} is unknown; allowed: {AGGREGATIONS}")
