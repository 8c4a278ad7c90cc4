"""Heads that attach to the policy trunk's final hidden states."""
from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def last_token_index(valid: jax.Array) -> jax.Array:
  """Index of the last real token per row: valid [B, T] bool -> [B] int32 (0 if none)."""
  t = valid.shape[-1]
  idx = jnp.where(valid, jnp.arange(t)[None, :], -1)
  return jnp.maximum(jnp.max(idx, axis=-1), 0).astype(jnp.int32)


def gather_last(hidden: jax.Array, valid: jax.Array) -> jax.Array:
  """hidden [B, T, D] at each row's last real token -> [B, D]."""
  idx = last_token_index(valid)
  return jnp.take_along_axis(hidden, idx[:, None, None], axis=1)[:, 0]


class ScalarHead(nnx.Module):
  """r = w . h_last (+ b): a scalar reward at the last non-pad token (A1).

  `num_outputs` > 1 gives k scores (e.g. a sequence-classification checkpoint's labels)."""

  def __init__(self, d_model: int, num_outputs: int = 1, use_bias: bool = True, *,
               rngs: nnx.Rngs, param_dtype=jnp.float32):
    init = jax.nn.initializers.normal(stddev=d_model ** -0.5)
    self.kernel = nnx.Param(init(rngs.params(), (d_model, num_outputs), param_dtype),
                            axes=("embed", None))
    self.bias = (nnx.Param(jnp.zeros((num_outputs,), param_dtype), axes=(None,))
                 if use_bias else None)

  def __call__(self, hidden: jax.Array, valid: jax.Array) -> jax.Array:
    """hidden [B, T, D], valid [B, T] -> scores [B, num_outputs] float32."""
    h = gather_last(hidden, valid).astype(jnp.float32)
    out = h @ self.kernel[...].astype(jnp.float32)
    return out if self.bias is None else out + self.bias[...].astype(jnp.float32)


class ValueHead(nnx.Module):
  """Per-token value V(s_t) = w . h_t + b (A10): hidden [B, T, D] -> [B, T] float32."""

  def __init__(self, d_model: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    init = jax.nn.initializers.normal(stddev=0.01 * d_model ** -0.5)
    self.kernel = nnx.Param(init(rngs.params(), (d_model,), param_dtype), axes=("embed",))
    self.bias = nnx.Param(jnp.zeros((), param_dtype), axes=())

  def __call__(self, hidden: jax.Array) -> jax.Array:
    return (hidden.astype(jnp.float32) @ self.kernel[...].astype(jnp.float32)
            + self.bias[...].astype(jnp.float32))
