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


# --- ensembles (A2) ---------------------------------------------------------------------

def ensemble_mean(scores: jax.Array, lam: float = 0.0) -> jax.Array:
  return jnp.mean(scores, -1)


def ensemble_min(scores: jax.Array, lam: float = 0.0) -> jax.Array:
  """Worst-case optimisation (WCO): the most pessimistic member."""
  return jnp.min(scores, -1)


def ensemble_uwo(scores: jax.Array, lam: float = 1.0) -> jax.Array:
  """Uncertainty-weighted optimisation: mean - lam * variance across members."""
  return jnp.mean(scores, -1) - lam * jnp.var(scores, -1)


# scores [..., K] from K members -> [...] reward
ENSEMBLE_AGGREGATIONS = {"mean": ensemble_mean, "min": ensemble_min, "uwo": ensemble_uwo}


# --- multi-objective regression with a prompt-conditioned gate (A3) -----------------------

class GatedAttributeHead(nnx.Module):
  """k attribute scores at the last token, mixed by softmax gate weights computed from the
  prompt's last hidden state: r = sum_i g_i(x) r_i(x, y)."""

  def __init__(self, d_model: int, num_attributes: int, gate_hidden: int = 64, *,
               rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.attributes = ScalarHead(d_model, num_attributes, rngs=rngs, param_dtype=param_dtype)
    self.gate_in = nnx.Linear(d_model, gate_hidden, rngs=rngs, param_dtype=param_dtype,
                              kernel_metadata={"axes": ("embed", None)}, bias_metadata={"axes": (None,)})
    self.gate_out = nnx.Linear(gate_hidden, num_attributes, rngs=rngs, param_dtype=param_dtype,
                               kernel_metadata={"axes": (None, None)}, bias_metadata={"axes": (None,)})

  def __call__(self, hidden, valid, prompt_last):
    """hidden [B, T, D], valid [B, T], prompt_last [B] -> (attributes [B, k], gate [B, k])."""
    attrs = self.attributes(hidden, valid)
    h_prompt = jnp.take_along_axis(hidden, prompt_last[:, None, None], axis=1)[:, 0]
    gate = jax.nn.softmax(self.gate_out(jax.nn.gelu(self.gate_in(h_prompt.astype(jnp.float32)))), -1)
    return attrs, gate


# --- ordinal / distributional head (A4) ---------------------------------------------------

class OrdinalHead(nnx.Module):
  """Logits over K ordered quality levels at the last token; reward = E[level]."""

  def __init__(self, d_model: int, levels: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    self.logits = ScalarHead(d_model, levels, rngs=rngs, param_dtype=param_dtype)

  def __call__(self, hidden, valid):
    """-> level logits [B, K]."""
    return self.logits(hidden, valid)


def expected_level(level_logits: jax.Array) -> jax.Array:
  """[..., K] -> E[level] in [0, K-1]."""
  k = level_logits.shape[-1]
  return jnp.sum(jax.nn.softmax(level_logits, -1) * jnp.arange(k, dtype=jnp.float32), -1)


# --- general preference model (A5) -------------------------------------------------------

class PreferenceEmbeddingHead(nnx.Module):
  """Each response embeds to v in R^{2k}; preferences come from `general_preference_score`."""

  def __init__(self, d_model: int, dim: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    if dim % 2:
      raise ValueError(f"PreferenceEmbeddingHead: dim={dim} must be even (2k)")
    self.embed = ScalarHead(d_model, dim, rngs=rngs, param_dtype=param_dtype)

  def __call__(self, hidden, valid):
    """-> embeddings [B, 2k]."""
    return self.embed(hidden, valid)


def general_preference_score(v1: jax.Array, v2: jax.Array) -> jax.Array:
  """s(y1 > y2) = v1^T R v2 with R block-diagonal [[0, -1], [1, 0]]: [..., 2k] x2 -> [...].
  Skew-symmetric R makes s(a, b) = -s(b, a) and s(a, a) = 0 exactly."""
  a1, b1 = v1[..., 0::2], v1[..., 1::2]
  a2, b2 = v2[..., 0::2], v2[..., 1::2]
  return jnp.sum(b1 * a2 - a1 * b2, -1)


# --- process reward head (A7) -------------------------------------------------------------

def separator_positions(tokens: jax.Array, valid: jax.Array, completion_start: jax.Array,
                        sep_id: int, max_steps: int):
  """Positions of the step separators inside each completion, in order.

  tokens/valid [B, T], completion_start [B] -> (positions [B, S] int32, step_mask [B, S]).
  Rows with fewer than S separators are padded with position 0 and mask False."""
  t = tokens.shape[1]
  pos = jnp.arange(t)[None, :]
  is_sep = (tokens == sep_id) & valid.astype(bool) & (pos >= completion_start[:, None])
  key = jnp.where(is_sep, pos, t + pos)            # separators first, in order
  order = jnp.argsort(key, axis=1)[:, :max_steps].astype(jnp.int32)
  mask = jnp.take_along_axis(is_sep, order, axis=1)
  return jnp.where(mask, order, 0), mask


class ProcessHead(nnx.Module):
  """A per-token score read only at step-separator tokens: -> step logits [B, S]."""

  def __init__(self, d_model: int, *, rngs: nnx.Rngs, param_dtype=jnp.float32):
    init = jax.nn.initializers.normal(stddev=d_model ** -0.5)
    self.kernel = nnx.Param(init(rngs.params(), (d_model,), param_dtype), axes=("embed",))
    self.bias = nnx.Param(jnp.zeros((), param_dtype), axes=())

  def __call__(self, hidden, positions):
    """hidden [B, T, D], positions [B, S] -> logits [B, S] (only those rows of hidden)."""
    h = jnp.take_along_axis(hidden, positions[:, :, None], axis=1).astype(jnp.float32)
    return h @ self.kernel[...].astype(jnp.float32) + self.bias[...].astype(jnp.float32)


def aggregate_steps(step_logits: jax.Array, step_mask: jax.Array, how: str = "min") -> jax.Array:
  """Outcome score from step probabilities: min / last / product (as a log-prob sum)."""
  logp = jax.nn.log_sigmoid(step_logits)
  if how == "min":
    return jnp.min(jnp.where(step_mask, jax.nn.sigmoid(step_logits), 1.0), -1)
  if how == "product":
    return jnp.sum(jnp.where(step_mask, logp, 0.0), -1)
  if how == "last":
    last = jnp.maximum(jnp.sum(step_mask, -1) - 1, 0)
    return jax.nn.sigmoid(jnp.take_along_axis(step_logits, last[:, None], -1)[:, 0])
  raise ValueError(f"aggregate_steps: how={how!r}; allowed: min, last, product")


class ActorCritic(nnx.Module):
  """PPO's trainable pair: the policy transformer and a per-token value head on its trunk."""

  def __init__(self, policy: nnx.Module, value_head: nnx.Module):
    self.policy = policy
    self.value_head = value_head
