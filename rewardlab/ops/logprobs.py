"""Per-token log-probabilities and entropies.

`chunked_token_logprobs` works from final hidden states and the unembedding matrix,
scanning over vocabulary chunks with a running logsumexp, so the [B, T, V] logits tensor
is never materialised (it dominates memory at real vocabulary sizes).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp


def token_logprobs_from_logits(logits, tokens):
  """log softmax(logits)[tokens]. logits: [B, T, V]; tokens: [B, T] -> [B, T] float32."""
  logits = logits.astype(jnp.float32)
  picked = jnp.take_along_axis(logits, tokens[..., None], axis=-1)[..., 0]
  return picked - jax.nn.logsumexp(logits, axis=-1)


def token_entropy_from_logits(logits):
  """Entropy of softmax(logits) per position: [B, T, V] -> [B, T] float32."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return -jnp.sum(jnp.exp(logp) * logp, axis=-1)


def chunked_token_logprobs(hidden, unembedding, tokens, chunk_size: int = 4096,
                           with_entropy: bool = False, softcap: float = 0.0):
  """Token log-probs (and optionally entropies) without materialising full logits.

  hidden: [B, T, D]; unembedding: [D, V]; tokens: [B, T] int. softcap > 0: the logits are
  softcap * tanh(hidden @ unembedding / softcap) (Gemma 2's final-logit soft-capping).
  Returns logps [B, T] float32 (and entropy [B, T] float32 if with_entropy).
  Entropy uses H = logZ - E_p[logit], accumulated with the same running max.
  """
  d, v = unembedding.shape
  chunk = min(chunk_size, v)
  n_chunks = -(-v // chunk)
  pad = n_chunks * chunk - v
  w = jnp.pad(unembedding, ((0, 0), (0, pad))).reshape(d, n_chunks, chunk).transpose(1, 0, 2)
  h = hidden.astype(unembedding.dtype)
  b, t = tokens.shape

  def body(carry, xs):
    run_max, run_sum, run_wsum, picked = carry
    w_c, c = xs
    logits = jnp.einsum("btd,dv->btv", h, w_c, preferred_element_type=jnp.float32)
    if softcap:
      logits = softcap * jnp.tanh(logits / softcap)
    ids = c * chunk + jnp.arange(chunk)
    logits = jnp.where(ids < v, logits, -jnp.inf)
    new_max = jnp.maximum(run_max, jnp.max(logits, axis=-1))
    scale = jnp.exp(run_max - new_max)
    e = jnp.exp(logits - new_max[..., None])
    safe_logits = jnp.where(ids < v, logits, 0.0)
    run_sum = run_sum * scale + jnp.sum(e, axis=-1)
    run_wsum = run_wsum * scale + jnp.sum(e * safe_logits, axis=-1)
    local = tokens - c * chunk
    in_chunk = (local >= 0) & (local < chunk)
    got = jnp.take_along_axis(logits, jnp.clip(local, 0, chunk - 1)[..., None], -1)[..., 0]
    picked = jnp.where(in_chunk, got, picked)
    return (new_max, run_sum, run_wsum, picked), None

  init = (jnp.full((b, t), -jnp.inf, jnp.float32), jnp.zeros((b, t), jnp.float32),
          jnp.zeros((b, t), jnp.float32), jnp.zeros((b, t), jnp.float32))
  (m, s, ws, picked), _ = jax.lax.scan(body, init, (w, jnp.arange(n_chunks)))
  log_z = m + jnp.log(s)
  logps = picked - log_z
  if not with_entropy:
    return logps
  return logps, log_z - ws / s
