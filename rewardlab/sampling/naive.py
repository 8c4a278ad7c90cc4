"""Naive generation: re-runs the full forward pass over the whole buffer every step.

Kept as the simple reference the KV-cache sampler is checked and benchmarked against, and
as the greedy decoder the SFT evaluation uses.
"""
from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from flax import nnx


@functools.lru_cache(maxsize=32)
def make_naive_generate(graphdef, max_new_tokens: int, eos_id: int, pad_id: int):
  """Returns jitted gen(params, tokens [B, P], valid [B, P]) -> (completion [B, N], mask [B, N]).

  Greedy (argmax) decoding; prompts left-padded; the mask covers generated tokens up to and
  including EOS; after EOS a row emits pad_id.
  """
  def generate(params, tokens, valid):
    b, p = tokens.shape
    n = max_new_tokens
    buf = jnp.concatenate([tokens, jnp.full((b, n), pad_id, tokens.dtype)], axis=1)
    vbuf = jnp.concatenate([valid.astype(bool), jnp.zeros((b, n), bool)], axis=1)
    model = nnx.merge(graphdef, params)

    def body(i, carry):
      buf, vbuf, done = carry
      logits = model(buf, valid=vbuf).logits
      nxt = jnp.argmax(jax.lax.dynamic_index_in_dim(logits, p + i - 1, 1, keepdims=False), -1)
      nxt = jnp.where(done, pad_id, nxt).astype(buf.dtype)
      buf = jax.lax.dynamic_update_index_in_dim(buf, nxt, p + i, 1)
      vbuf = jax.lax.dynamic_update_index_in_dim(vbuf, ~done, p + i, 1)
      return buf, vbuf, done | (nxt == eos_id)

    buf, vbuf, _ = jax.lax.fori_loop(0, n, body, (buf, vbuf, jnp.zeros((b,), bool)))
    return buf[:, p:], vbuf[:, p:]

  return jax.jit(generate)
