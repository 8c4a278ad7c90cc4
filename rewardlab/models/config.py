"""Policy-model configuration: one dataclass covers Llama, Qwen2, Qwen3 and Gemma 1/2/3.

The families differ only in switches (qkv / output-projection bias, q/k norm, tied
embeddings, Gemma's embedding scale and `(1 + w)` norm, GeGLU vs SwiGLU, and Gemma 2/3's
post-norms, soft-capping, query scale and alternating sliding-window layers), so one
module implements all.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}
ACTIVATIONS = ("silu", "gelu_tanh")
ROPE_SCALINGS = ("default", "linear", "llama3")
ATTENTION_IMPLS = ("xla", "cudnn", "splash")
# jax.checkpoint_policies that are policies themselves (the rest are factories needing names)
REMAT_POLICIES = ("everything_saveable", "nothing_saveable", "dots_saveable", "checkpoint_dots",
                  "dots_with_no_batch_dims_saveable", "checkpoint_dots_with_no_batch_dims")
REMATS = ("none", "full") + REMAT_POLICIES


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int = 264
  d_model: int = 256
  n_layers: int = 4
  n_heads: int = 4
  n_kv_heads: int = 2
  head_dim: int = 64
  mlp_dim: int = 768
  max_seq_len: int = 256
  rope_theta: float = 10_000.0
  rope_scaling: str = "default"   # "default" | "linear" | "llama3"
  rope_factor: float = 1.0
  rope_low_freq_factor: float = 1.0     # llama3 only
  rope_high_freq_factor: float = 4.0    # llama3 only
  rope_original_max_len: int = 8192     # llama3 only
  norm_eps: float = 1e-6
  qkv_bias: bool = False          # Qwen2; `attention_bias` of Llama / Qwen3 / Gemma
  o_bias: bool = False            # output-projection bias: `attention_bias` of Llama / Qwen3 / Gemma
  qk_norm: bool = False           # Qwen3, Gemma 3
  tie_embeddings: bool = True
  embed_scale: bool = False       # Gemma multiplies embeddings by sqrt(d_model)
  norm_offset: float = 0.0        # Gemma stores RMSNorm weight w and applies (1 + w)
  activation: str = "silu"        # "silu" (SwiGLU) or "gelu_tanh" (Gemma's GeGLU)
  post_norms: bool = False        # Gemma 2/3: RMSNorm on the attention and MLP outputs too
  query_pre_attn_scalar: float = 0.0   # scores scaled by this ** -0.5 (0: head_dim, the usual)
  attn_logit_softcap: float = 0.0      # Gemma 2: scores -> cap * tanh(scores / cap) (0: off)
  final_logit_softcap: float = 0.0     # Gemma 2: logits -> cap * tanh(logits / cap) (0: off)
  sliding_window: int = 0         # local layers attend to the last W tokens (0: no local layers)
  sliding_window_pattern: int = 0  # with a window: layer i is global iff (i + 1) % k == 0, the
                                   # rest local (Gemma 2: 2, Gemma 3: 6); 0: every layer local
  rope_local_theta: float = 0.0   # Gemma 3: RoPE base of local layers, unscaled (0: as global)
  param_dtype: str = "float32"
  dtype: str = "float32"          # compute dtype of activations and matmuls
  remat: str = "none"             # per-layer rematerialisation: "none", "full" (save only each
                                  # layer's input), or a jax.checkpoint_policies name (REMAT_POLICIES);
                                  # True / False mean "full" / "none"
  scan_layers: bool = False       # layers as one stacked parameter tree run by lax.scan (HLO size and
                                  # compile time independent of depth); False: one tree per layer.
                                  # On for presets and HF checkpoints; off for the tiny embedded
                                  # default, whose unrolled step is ~1.4x faster on CPU
  attention: str = "xla"          # "xla" (einsum reference), "cudnn" (GPU), "splash" (Pallas, TPU):
                                  # the kernels serve passes without a KV cache (train, scoring)

  def __post_init__(self):
    if isinstance(self.remat, bool):  # the old switch: True = remat every layer fully
      object.__setattr__(self, "remat", "full" if self.remat else "none")
    problems = []
    if self.remat not in REMATS:
      problems.append(f"remat={self.remat!r} not in {REMATS}")
    if self.attention not in ATTENTION_IMPLS:
      problems.append(f"attention={self.attention!r} not in {ATTENTION_IMPLS}")
    if self.attention == "cudnn" and self.attn_logit_softcap:
      problems.append(f"attention='cudnn' cannot soft-cap attention logits (attn_logit_softcap="
                      f"{self.attn_logit_softcap}); use 'xla' (or 'splash' on TPU)")
    if self.n_heads % self.n_kv_heads:
      problems.append(f"n_heads={self.n_heads} must be a multiple of n_kv_heads={self.n_kv_heads}")
    if self.head_dim % 2:
      problems.append(f"head_dim={self.head_dim} must be even for RoPE")
    if self.rope_scaling not in ROPE_SCALINGS:
      problems.append(f"rope_scaling={self.rope_scaling!r} not in {ROPE_SCALINGS}")
    if self.activation not in ACTIVATIONS:
      problems.append(f"activation={self.activation!r} not in {ACTIVATIONS}")
    for name in ("param_dtype", "dtype"):
      if getattr(self, name) not in _DTYPES:
        problems.append(f"{name}={getattr(self, name)!r} not in {tuple(_DTYPES)}")
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "n_kv_heads", "mlp_dim",
                 "max_seq_len"):
      if getattr(self, name) < 1:
        problems.append(f"{name}={getattr(self, name)} must be >= 1")
    for name in ("query_pre_attn_scalar", "attn_logit_softcap", "final_logit_softcap",
                 "sliding_window", "sliding_window_pattern", "rope_local_theta"):
      if getattr(self, name) < 0:
        problems.append(f"{name}={getattr(self, name)} must be >= 0 (0 = off / default)")
    if self.rope_local_theta and not self.sliding_window:
      problems.append(f"rope_local_theta={self.rope_local_theta} needs local layers (sliding_window > 0)")
    if problems:
      raise ValueError("model config: " + "; ".join(problems))

  @property
  def jnp_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def jnp_param_dtype(self):
    return _DTYPES[self.param_dtype]

  @property
  def layer_is_local(self) -> tuple[bool, ...]:
    """Per layer: True where attention is limited to the last `sliding_window` tokens."""
    if not self.sliding_window:
      return (False,) * self.n_layers
    k = self.sliding_window_pattern
    return tuple(k == 0 or (i + 1) % k != 0 for i in range(self.n_layers))

  @property
  def attention_kinds(self) -> tuple[int, ...]:
    """Per layer: index of its (mask, RoPE) kind, 0 global, 1 local; a per-layer integer
    so a scanned layer stack can select its kind with an index, not a Python branch."""
    return tuple(int(x) for x in self.layer_is_local)

  @property
  def query_scale(self) -> float:
    return (self.query_pre_attn_scalar or self.head_dim) ** -0.5

  @classmethod
  def from_mapping(cls, fields: Mapping[str, Any]) -> "ModelConfig":
    """Builds from a dict/ConfigDict, naming any unknown field."""
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(fields) - known)
    if unknown:
      raise ValueError(f"model config: unknown field(s) {unknown}; allowed: {sorted(known)}")
    return cls(**dict(fields))

  def num_params(self) -> int:
    """Parameter count (embedding counted once when tied)."""
    d, h, kv, hd = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim
    attn = d * h * hd * 2 + d * kv * hd * 2
    if self.qkv_bias:
      attn += (h + 2 * kv) * hd
    if self.o_bias:
      attn += d
    if self.qk_norm:
      attn += 2 * hd
    layer = attn + 3 * d * self.mlp_dim + (4 if self.post_norms else 2) * d
    emb = self.vocab_size * d * (1 if self.tie_embeddings else 2)
    return self.n_layers * layer + emb + d

  def flops_per_token(self, seq_len: int) -> float:
    """Forward FLOPs per token: 2 x non-embedding matmul params + attention scores."""
    d, h, kv, hd = self.d_model, self.n_heads, self.n_kv_heads, self.head_dim
    matmul = self.n_layers * (d * h * hd * 2 + d * kv * hd * 2 + 3 * d * self.mlp_dim)
    matmul += self.vocab_size * d  # unembedding
    # QK^T and AV, causal average ~ seq_len/2 x2; a local layer sees at most its window
    span = lambda local: min(seq_len, self.sliding_window) if local else seq_len
    attn = sum(2 * h * hd * span(local) for local in self.layer_is_local)
    return 2.0 * matmul + attn


# Families as switches; sizes are filled in by the experiment config.
FAMILIES: dict[str, dict[str, Any]] = {
    "llama": dict(qkv_bias=False, qk_norm=False, activation="silu"),
    "qwen2": dict(qkv_bias=True, qk_norm=False, activation="silu", rope_theta=1_000_000.0),
    "qwen3": dict(qkv_bias=False, qk_norm=True, activation="silu", rope_theta=1_000_000.0),
    "gemma": dict(qkv_bias=False, qk_norm=False, activation="gelu_tanh", embed_scale=True,
                  norm_offset=1.0, tie_embeddings=True),
    "gemma2": dict(qkv_bias=False, qk_norm=False, activation="gelu_tanh", embed_scale=True,
                   norm_offset=1.0, tie_embeddings=True, post_norms=True, attn_logit_softcap=50.0,
                   final_logit_softcap=30.0, sliding_window=4096, sliding_window_pattern=2),
    "gemma3": dict(qkv_bias=False, qk_norm=True, activation="gelu_tanh", embed_scale=True,
                   norm_offset=1.0, tie_embeddings=True, post_norms=True, sliding_window=512,
                   sliding_window_pattern=6, rope_theta=1_000_000.0, rope_local_theta=10_000.0),
}
