"""Decoder-only transformer (Llama / Qwen2 / Qwen3 / Gemma 1, 2, 3) in Flax NNX.

Every parameter carries logical axis names in its `axes` metadata (`embed`, `vocab`,
`heads`, `kv_heads`, `head_dim`, `mlp`, `norm`); `rewardlab.sharding` maps them to
mesh axes, so switching data / FSDP / tensor parallelism is a config change.

Attention works on *slots*: without a cache the slots are the T input positions; with a
`KVCache` they are the cache's S preallocated positions and the new tokens are written at
`cache.index`. Query i may see slot s when `s <= index + i` and slot s holds a real
token. Prompts of different lengths are therefore left-padded: padding occupies early
slots, is marked invalid, and RoPE positions count only real tokens. Local (sliding-window)
layers further drop keys `sliding_window` or more real tokens back (`attention_masks`).

Layers are one `Block` per layer (`nnx.List`), or, with `cfg.scan_layers`, one `Block` whose
parameters carry a leading `layers` axis (built by `nnx.vmap`) and run by `jax.lax.scan`, so
the program holds one layer whatever the depth. A layer's attention kind (global / local)
is an integer the scan indexes masks and RoPE tables with. KV caches follow the layers:
L-tuples of per-layer buffers, or stacked [L, ...] buffers carried through the scan and
written in place. `stack_layers` / `unstack_layers` convert parameter trees between the two.
Rematerialisation (`cfg.remat`) wraps each layer in `jax.checkpoint` with the named policy.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rewardlab.models import attention as kernels
from rewardlab.models.config import ModelConfig
from rewardlab.sharding import constrain

_MASKED = -1e30  # finite so that fully masked (padding) rows give no NaN


class KVCache(NamedTuple):
  """Preallocated keys/values for all layers.

  k:     L-tuple of [B, KV, Dh, S] cached keys (RoPE applied), slot axis minor so that the
         decode scores q.k are a plain [G, Dh] x [Dh, S] matmul per (batch, kv head): with
         Dh minor the CPU matmul repacked the whole key cache every step (2.2x slower)
  v:     L-tuple of [B, KV, S, Dh] cached values (already the [S, Dh] right operand)
         One buffer per layer, so a decode step updates each in place, never restacking.
         With scanned layers k / v are single [L, B, KV, Dh, S] / [L, B, KV, S, Dh] arrays,
         carried through the layer scan and written in place at (layer, slot). Either way
         the batch axis is axis -4 of k and v (`CACHE_BATCH_AXIS`).
  valid: [B, S] bool         slot holds a real (non-padding) token
  index: [] int32            next slot to write
  """
  k: tuple
  v: tuple
  valid: jax.Array
  index: jax.Array


class SharedPrefix(NamedTuple):
  """Cached prompt keys/values shared by the n sequences decoded from each prompt (decode
  rows are prompt-major: rows b*n .. b*n+n-1 continue prompt b). Decoding attends to one
  copy per prompt instead of n, and the n rows' queries meet it as one matrix.

  k: L-tuple of [B, KV, Dh, P]; v: L-tuple of [B, KV, P, Dh]; valid: [B, P] bool
  (scanned layers: k [L, B, KV, Dh, P], v [L, B, KV, P, Dh], as in `KVCache`)
  """
  k: tuple
  v: tuple
  valid: jax.Array


class ModelOutput(NamedTuple):
  logits: jax.Array            # [B, T, V] float32
  hidden: jax.Array            # [B, T, D] final-normed hidden states (heads attach here)
  cache: Optional[KVCache]


CACHE_BATCH_AXIS = -4  # of KVCache.k / .v and SharedPrefix.k / .v, per-layer or stacked


def init_cache(cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> KVCache:
  """An empty cache with `max_len` slots: per-layer buffers, or stacked ones for scanned layers."""
  dtype = dtype or cfg.jnp_dtype
  if cfg.scan_layers:
    zeros = lambda shape: jnp.zeros((cfg.n_layers,) + shape, dtype)
  else:
    zeros = lambda shape: tuple(jnp.zeros(shape, dtype) for _ in range(cfg.n_layers))
  return KVCache(k=zeros((batch, cfg.n_kv_heads, cfg.head_dim, max_len)),
                 v=zeros((batch, cfg.n_kv_heads, max_len, cfg.head_dim)),
                 valid=jnp.zeros((batch, max_len), bool), index=jnp.zeros((), jnp.int32))


def grow_cache(cache: KVCache, max_len: int) -> KVCache:
  """The same cache with room for `max_len` slots: new slots are empty (invalid) at the end.
  Lets a decoder start small and grow, so attention reads about the filled prefix rather
  than every preallocated slot."""
  extra = max_len - cache.valid.shape[1]
  if extra < 0:
    raise ValueError(f"grow_cache: max_len={max_len} is under the current {cache.valid.shape[1]} slots")
  pad = lambda x, axis: jnp.pad(x, [(0, extra if a == x.ndim + axis else 0) for a in range(x.ndim)])
  return KVCache(k=jax.tree.map(lambda k: pad(k, -1), cache.k), v=jax.tree.map(lambda v: pad(v, -2), cache.v),
                 valid=pad(cache.valid, -1), index=cache.index)


def positions_from_valid(valid: jax.Array) -> jax.Array:
  """RoPE positions that count only real tokens: [B, T] bool -> [B, T] int32."""
  return jnp.maximum(jnp.cumsum(valid.astype(jnp.int32), axis=-1) - 1, 0)


def _param(rngs, init, shape, axes, dtype):
  return nnx.Param(init(rngs.params(), shape, dtype), axes=axes)


def _fan_in_normal(fan_in: int):
  return jax.nn.initializers.normal(stddev=fan_in ** -0.5)


class RMSNorm(nnx.Module):
  """y = x / rms(x) * (offset + w), computed in float32 (as HF does)."""

  def __init__(self, dim: int, cfg: ModelConfig, *, rngs: nnx.Rngs):
    init = jax.nn.initializers.constant(1.0 - cfg.norm_offset)
    self.scale = _param(rngs, init, (dim,), ("norm",), cfg.jnp_param_dtype)
    self.eps, self.offset = cfg.norm_eps, cfg.norm_offset

  def __call__(self, x):
    dtype = x.dtype
    x = x.astype(jnp.float32)
    x = x * jax.lax.rsqrt(jnp.mean(x * x, axis=-1, keepdims=True) + self.eps)
    return (x * (self.offset + self.scale[...].astype(jnp.float32))).astype(dtype)


def default_inv_freq(theta: float, head_dim: int) -> np.ndarray:
  """[Dh/2] float32 theta ** -(2i / Dh), rounded as transformers computes it in torch: the
  exponent in f32, the power rounded once to f32 (as a correctly rounded f32 pow; XLA's f32
  pow was up to 18 ulp off, which moves RoPE angles at long positions), then an f32
  reciprocal. A host constant: it depends on the config only."""
  exponent = np.arange(0, head_dim, 2).astype(np.float32) / np.float32(head_dim)
  return np.float32(1.0) / (np.float64(theta) ** exponent.astype(np.float64)).astype(np.float32)


def rope_inv_freq(cfg: ModelConfig) -> np.ndarray:
  """[Dh/2] float32 inverse frequencies, with HF's "linear" and "llama3" scaling computed in
  transformers' f32 order of operations (a scalar over a tensor is torch's reciprocal times
  the scalar), so angles match theirs bit for bit where the powers do."""
  f32 = np.float32
  inv_freq = default_inv_freq(cfg.rope_theta, cfg.head_dim)
  factor = f32(cfg.rope_factor)
  if cfg.rope_scaling == "linear":
    return inv_freq / factor
  if cfg.rope_scaling == "llama3":
    old, low, high = cfg.rope_original_max_len, cfg.rope_low_freq_factor, cfg.rope_high_freq_factor
    low_wavelen, high_wavelen = f32(old / low), f32(old / high)
    wavelen = (f32(1.0) / inv_freq) * f32(2 * np.pi)
    scaled = np.where(wavelen > low_wavelen, inv_freq / factor, inv_freq)
    smooth = ((f32(1.0) / wavelen) * f32(old) - f32(low)) / f32(high - low)
    smoothed = (f32(1.0) - smooth) * scaled / factor + smooth * scaled
    medium = ~(wavelen < high_wavelen) & ~(wavelen > low_wavelen)
    return np.where(medium, smoothed, scaled).astype(f32)
  return inv_freq


def rope_tables(positions: jax.Array, inv_freq) -> tuple[jax.Array, jax.Array]:
  """(cos, sin), each [B, T, 1, Dh/2] float32, for positions [B, T]. inv_freq: [Dh/2]
  (`rope_inv_freq`). Computed once per forward and shared by every layer."""
  angles = positions[..., None].astype(jnp.float32) * inv_freq  # [B, T, half]
  return jnp.cos(angles)[:, :, None, :], jnp.sin(angles)[:, :, None, :]


def apply_rope(x: jax.Array, tables: tuple[jax.Array, jax.Array]) -> jax.Array:
  """Rotary embedding, HF "rotate_half" layout. x: [B, T, H, Dh]; tables from `rope_tables`."""
  cos, sin = tables
  half = x.shape[-1] // 2
  x1, x2 = x[..., :half].astype(jnp.float32), x[..., half:].astype(jnp.float32)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def rope(x: jax.Array, positions: jax.Array, inv_freq) -> jax.Array:
  """`apply_rope` at positions [B, T]; inv_freq: [Dh/2] or a float theta (unscaled)."""
  if isinstance(inv_freq, (int, float)):
    inv_freq = default_inv_freq(inv_freq, x.shape[-1])
  return apply_rope(x, rope_tables(positions, inv_freq))


def _softcap(x: jax.Array, cap: float) -> jax.Array:
  """cap * tanh(x / cap) (Gemma 2's soft-capping); identity when cap is 0."""
  return cap * jnp.tanh(x / cap) if cap else x


def _scores(q, k, cfg: ModelConfig, spec: str) -> jax.Array:
  """Attention logits in f32: (q . k) * query_scale, soft-capped (before any mask, as HF)."""
  s = jnp.einsum(spec, q, k, preferred_element_type=jnp.float32) * cfg.query_scale
  return _softcap(s, cfg.attn_logit_softcap)


def _attend_with_prefix(q, own_scores, own_v, prefix, cfg):
  """One softmax over a shared prompt prefix and each row's own (masked) slots.

  q: [B*n, KV, G, T, Dh]; own_scores: [B*n, KV, G, T, S] f32, scaled and masked;
  own_v: [B*n, KV, S, Dh]; prefix: (k [B, KV, Dh, P], v [B, KV, P, Dh], mask) with mask
  [B, 1, M, P], M = 1 or n*G*T (query-dependent, for a sliding window) in the grouped
  row order below. Returns [B*n, KV, G, T, Dh]."""
  k_p, v_p, mask_p = prefix
  dt = cfg.jnp_dtype
  bn, kvh, g, t, hd = q.shape
  b, n_prefix = k_p.shape[0], k_p.shape[3]
  n = bn // b
  # [B*n, KV, G, T, X] <-> [B, KV, n*G*T, X]: a prompt's n rows as one matrix per kv head
  group = lambda x: x.reshape(b, n, kvh, g, t, -1).swapaxes(1, 2).reshape(b, kvh, n * g * t, -1)
  ungroup = lambda x: x.reshape(b, kvh, n, g, t, -1).swapaxes(1, 2).reshape(bn, kvh, g, t, -1)
  prefix_scores = _scores(group(q), k_p.astype(dt), cfg, "bkmd,bkdp->bkmp")
  prefix_scores = jnp.where(mask_p, prefix_scores, _MASKED)
  probs = jax.nn.softmax(jnp.concatenate([ungroup(prefix_scores), own_scores], axis=-1), axis=-1)
  probs = probs.astype(dt)
  out = jnp.einsum("bkmp,bkpd->bkmd", group(probs[..., :n_prefix]), v_p.astype(dt))
  return ungroup(out) + jnp.einsum("bkgts,bksd->bkgtd", probs[..., n_prefix:], own_v.astype(dt))


class LayerInputs(NamedTuple):
  """What a layer needs besides the residual stream, for its attention kind.

  rope_cs: (cos, sin) each [B, T, 1, Dh/2] (`rope_tables`) at the queries' positions
  mask:    [B, T, S] bool, which slots each query sees (`attention_masks`)
  valid:   [B, S] bool, slots holding real tokens (kernels' padding)
  index:   [] int32, slot of the first query (where new keys/values are written)
  local:   sliding-window layer (for kernels): a bool, traced inside a scan over both kinds;
           None until `_layer_fn` sets a layer's static kind
  prefix:  None, or this layer's (k [Bp, KV, Dh, P], v [Bp, KV, P, Dh], mask) shared prefix
  """
  rope_cs: tuple
  mask: jax.Array
  valid: jax.Array
  index: jax.Array
  local: object = False
  prefix: Optional[tuple] = None


def _kernel_attention(q, k, v, inputs: LayerInputs, cfg: ModelConfig):
  """`cfg.attention`'s kernel on a cache-less pass: q [B, T, H, Dh], k/v [B, T, KV, Dh]."""
  if cfg.attention == "cudnn":
    impl = "cudnn" if kernels.current_platform() == "gpu" else "xla"
    return kernels.cudnn_attention(q, k, v, inputs.mask, cfg, implementation=impl)
  run = lambda local: kernels.splash_attention(q, k, v, inputs.valid, cfg, local)
  if isinstance(inputs.local, bool):
    return run(inputs.local)
  # a scanned stack of global and local layers: the kernel's mask is static, so branch
  return jax.lax.cond(inputs.local, lambda: run(True), lambda: run(False))


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, h, kv, hd, pd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.jnp_param_dtype
    self.cfg = cfg
    self.q = _param(rngs, _fan_in_normal(d), (d, h, hd), ("embed", "heads", "head_dim"), pd)
    self.k = _param(rngs, _fan_in_normal(d), (d, kv, hd), ("embed", "kv_heads", "head_dim"), pd)
    self.v = _param(rngs, _fan_in_normal(d), (d, kv, hd), ("embed", "kv_heads", "head_dim"), pd)
    self.o = _param(rngs, _fan_in_normal(h * hd), (h, hd, d), ("heads", "head_dim", "embed"), pd)
    zeros = jax.nn.initializers.zeros
    if cfg.qkv_bias:
      self.q_bias = _param(rngs, zeros, (h, hd), ("heads", "head_dim"), pd)
      self.k_bias = _param(rngs, zeros, (kv, hd), ("kv_heads", "head_dim"), pd)
      self.v_bias = _param(rngs, zeros, (kv, hd), ("kv_heads", "head_dim"), pd)
    if cfg.o_bias:
      self.o_bias = _param(rngs, zeros, (d,), ("embed",), pd)
    if cfg.qk_norm:
      self.q_norm = RMSNorm(hd, cfg, rngs=rngs)
      self.k_norm = RMSNorm(hd, cfg, rngs=rngs)

  def __call__(self, x, inputs: LayerInputs, kv_cache=None):
    """x: [B, T, D]. kv_cache: None, or (k, v, layer) buffers to write the T new keys/values
    into at slot `inputs.index` and attend over: per-layer k [B, KV, Dh, S] / v [B, KV, S, Dh]
    with layer None, or a scanned stack's [L, ...] buffers and this layer's traced index.
    Returns ([B, T, D], the updated (k, v) buffers or None)."""
    cfg, dt = self.cfg, self.cfg.jnp_dtype
    q = jnp.einsum("btd,dhk->bthk", x, self.q[...].astype(dt))
    k = jnp.einsum("btd,dhk->bthk", x, self.k[...].astype(dt))
    v = jnp.einsum("btd,dhk->bthk", x, self.v[...].astype(dt))
    if cfg.qkv_bias:
      q, k, v = q + self.q_bias[...].astype(dt), k + self.k_bias[...].astype(dt), v + self.v_bias[...].astype(dt)
    if cfg.qk_norm:
      q, k = self.q_norm(q), self.k_norm(k)
    q, k = apply_rope(q, inputs.rope_cs), apply_rope(k, inputs.rope_cs)
    q = constrain(q, ("batch", "length", "heads", "head_dim"))
    k = constrain(k, ("batch", "length", "kv_heads", "head_dim"))
    v = constrain(v, ("batch", "length", "kv_heads", "head_dim"))
    b, t, h, hd = q.shape
    if kv_cache is None and inputs.prefix is None and cfg.attention != "xla":
      out = _kernel_attention(q, k, v, inputs, cfg)                          # [B, T, H, Dh]
      new_cache = None
    else:
      out, new_cache = self._attend(q, k, v, inputs, kv_cache)
    out = constrain(out, ("batch", "length", "heads", "head_dim"))
    out = jnp.einsum("bthk,hkd->btd", out, self.o[...].astype(dt))
    if cfg.o_bias:
      out = out + self.o_bias[...].astype(dt)
    return out, new_cache

  def _attend(self, q, k, v, inputs: LayerInputs, kv_cache):
    """The reference: f32 scores, masked softmax, over the cache's slots (and a shared
    prefix). q [B, T, H, Dh], k/v [B, T, KV, Dh] -> ([B, T, H, Dh], updated buffers)."""
    cfg, dt = self.cfg, self.cfg.jnp_dtype
    # (batch, head) lead, so neither the cache update nor the attention contractions need
    # a per-step transpose of the whole cache (layouts: see KVCache)
    k, v = k.transpose(0, 2, 3, 1), v.transpose(0, 2, 1, 3)                 # [B,KV,Dh,T], [B,KV,T,Dh]
    new_cache = None
    if kv_cache is not None:
      k_buf, v_buf, layer = kv_cache
      k, v = k.astype(k_buf.dtype), v.astype(v_buf.dtype)
      if layer is None:
        k = k_buf = jax.lax.dynamic_update_slice(k_buf, k, (0, 0, 0, inputs.index))
        v = v_buf = jax.lax.dynamic_update_slice(v_buf, v, (0, 0, inputs.index, 0))
      else:  # write this layer's new slots in the stack in place, then read the layer back
        k_buf = jax.lax.dynamic_update_slice(k_buf, k[None], (layer, 0, 0, 0, inputs.index))
        v_buf = jax.lax.dynamic_update_slice(v_buf, v[None], (layer, 0, 0, inputs.index, 0))
        k = jax.lax.dynamic_index_in_dim(k_buf, layer, 0, keepdims=False)
        v = jax.lax.dynamic_index_in_dim(v_buf, layer, 0, keepdims=False)
      new_cache = (k_buf, v_buf)
    b, t, h, hd = q.shape
    kvh = k.shape[1]
    # grouped-query: G = h // kvh query heads share one kv head
    q = q.reshape(b, t, kvh, h // kvh, hd).transpose(0, 2, 3, 1, 4)          # [B, KV, G, T, Dh]
    scores = _scores(q, k.astype(dt), cfg, "bkgtd,bkds->bkgts")
    scores = jnp.where(inputs.mask[:, None, None], scores, _MASKED)
    if inputs.prefix is not None:
      out = _attend_with_prefix(q, scores, v, inputs.prefix, cfg)
    else:
      probs = jax.nn.softmax(scores, axis=-1).astype(dt)
      out = jnp.einsum("bkgts,bksd->bkgtd", probs, v.astype(dt))
    return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd), new_cache


class MLP(nnx.Module):
  """Gated MLP: down(act(gate(x)) * up(x)); SwiGLU (silu) or GeGLU (gelu_tanh)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    d, m, pd = cfg.d_model, cfg.mlp_dim, cfg.jnp_param_dtype
    self.cfg = cfg
    self.gate = _param(rngs, _fan_in_normal(d), (d, m), ("embed", "mlp"), pd)
    self.up = _param(rngs, _fan_in_normal(d), (d, m), ("embed", "mlp"), pd)
    self.down = _param(rngs, _fan_in_normal(m), (m, d), ("mlp", "embed"), pd)

  def __call__(self, x):
    dt = self.cfg.jnp_dtype
    gate = x @ self.gate[...].astype(dt)
    act = jax.nn.silu(gate) if self.cfg.activation == "silu" else jax.nn.gelu(gate, approximate=True)
    hidden = constrain(act * (x @ self.up[...].astype(dt)), ("batch", "length", "mlp"))
    return hidden @ self.down[...].astype(dt)


_RESIDUAL = ("batch", "length", "embed")


class Block(nnx.Module):
  """x + attn(norm(x)), then x + mlp(norm(x)); with `post_norms` (Gemma 2/3) each branch's
  output is normed too before the residual add."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)
    self.post_norms = cfg.post_norms
    if cfg.post_norms:
      self.attn_post_norm = RMSNorm(cfg.d_model, cfg, rngs=rngs)
      self.mlp_post_norm = RMSNorm(cfg.d_model, cfg, rngs=rngs)

  def __call__(self, x, inputs: LayerInputs, kv_cache=None):
    """x [B, T, D] -> (x [B, T, D], updated kv buffers or None); see `Attention`."""
    a, kv_cache = self.attn(self.attn_norm(x), inputs, kv_cache)
    x = constrain(x + (self.attn_post_norm(a) if self.post_norms else a), _RESIDUAL)
    m = self.mlp(self.mlp_norm(x))
    return constrain(x + (self.mlp_post_norm(m) if self.post_norms else m), _RESIDUAL), kv_cache


def stacked_blocks(cfg: ModelConfig, rngs: nnx.Rngs) -> Block:
  """One Block whose parameters have a leading [n_layers] axis (logical name "layers"),
  each layer initialised from its own split of `rngs`."""
  @nnx.split_rngs(splits=cfg.n_layers)
  @nnx.vmap(in_axes=0, out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers", "axes": "layers"})
  def make(rngs):
    return Block(cfg, rngs=rngs)
  return make(rngs)


def remat_policy(name: str):
  """jax.checkpoint policy for `ModelConfig.remat` ("full": save nothing but layer inputs)."""
  return None if name == "full" else getattr(jax.checkpoint_policies, name)


def _layer_fn(graphdef, cfg: ModelConfig, differentiable: bool, in_scan: bool, local: Optional[bool] = None):
  """pure (layer params, x, inputs, kv_cache) -> (x, kv_cache) for one layer, rematerialised
  per `cfg.remat` when gradients may flow (no cache). `local`: the layer's static kind
  (unrolled layers, or a scan over one kind; inputs.local is then None), or None inside a
  scan over both kinds, where inputs.local is traced. Inside a scan XLA cannot CSE across iterations, so `prevent_cse` (an
  optimisation barrier per layer) is only needed unrolled."""
  def run(params, x, inputs, kv_cache):
    if local is not None:
      inputs = inputs._replace(local=local)
    return nnx.merge(graphdef, params)(x, inputs, kv_cache)
  if cfg.remat == "none" or not differentiable:
    return run
  return jax.checkpoint(run, policy=remat_policy(cfg.remat), prevent_cse=not in_scan)


def stack_layers(params: dict) -> dict:
  """Parameter pure dict with per-layer trees {"layers": {0: ..., 1: ...}} -> the scanned
  layout {"layers": tree of [L, ...] arrays}; other entries unchanged."""
  layers = params["layers"]
  order = sorted(layers)
  if order != list(range(len(order))):
    raise ValueError(f"stack_layers: layer keys {order} are not 0..L-1 (already stacked?)")
  return dict(params, layers=jax.tree.map(lambda *xs: jnp.stack(xs), *(layers[i] for i in order)))


def unstack_layers(params: dict) -> dict:
  """The inverse of `stack_layers`: {"layers": tree of [L, ...]} -> {"layers": {i: tree}}."""
  layers = params["layers"]
  n = jax.tree.leaves(layers)[0].shape[0]
  return dict(params, layers={i: jax.tree.map(lambda x, i=i: x[i], layers) for i in range(n)})


def rope_inv_freqs(cfg: ModelConfig) -> np.ndarray:
  """[K, Dh/2] inverse frequencies per attention kind (`ModelConfig.attention_kinds`):
  row 0 global layers, row 1 (when there are local layers) local ones, which use
  `rope_local_theta` unscaled when it is set (Gemma 3) and the global RoPE otherwise."""
  freqs = [rope_inv_freq(cfg)]
  if any(cfg.layer_is_local):
    freqs.append(default_inv_freq(cfg.rope_local_theta, cfg.head_dim) if cfg.rope_local_theta else freqs[0])
  return np.stack(freqs)


def attention_masks(cfg: ModelConfig, key_valid, index, t: int, prefix_valid=None):
  """Which slots each of T queries (at slots index..index+T-1) may see, per attention kind.

  key_valid: [B, S] slot holds a real token; prefix_valid: [Bp, P] or None, a shared
  prefix attended before the slots by B = Bp * n rows (prompt-major).
  Returns (masks, prefix_masks): masks[kind] [B, T, S] bool; prefix_masks[kind] [Bp, 1, M, P]
  with M = 1, or n*G*T for a local kind (grouped as `_attend_with_prefix` orders rows).
  A local layer sees keys fewer than `sliding_window` real tokens back: the window counts
  tokens (positions), not slots, so padding inside or before a row never narrows it."""
  b, n_slots = key_valid.shape
  query_slot = index + jnp.arange(t)
  causal = key_valid[:, None, :] & (jnp.arange(n_slots)[None, None, :] <= query_slot[None, :, None])
  masks = [causal]
  prefix_masks = None if prefix_valid is None else [prefix_valid[:, None, None, :]]
  if any(cfg.layer_is_local):
    w = cfg.sliding_window
    seen = jnp.cumsum(key_valid.astype(jnp.int32), axis=-1)                  # real tokens in slots <= s
    q_seen = jax.lax.dynamic_slice_in_dim(seen, index, t, axis=1)             # [B, T]
    masks.append(causal & (q_seen[:, :, None] - seen[:, None, :] < w))
    if prefix_valid is not None:
      bp, p = prefix_valid.shape
      n, g = b // bp, cfg.n_heads // cfg.n_kv_heads
      p_seen = jnp.cumsum(prefix_valid.astype(jnp.int32), axis=-1)           # [Bp, P]
      # a query's tokens so far: the whole prefix + its own tokens; minus a prefix key's
      q_total = p_seen[:, -1:, None] + q_seen.reshape(bp, n, t)              # [Bp, n, T]
      near = (q_total[:, :, :, None] - p_seen[:, None, None, :]) < w         # [Bp, n, T, P]
      local = prefix_valid[:, None, None, None, :] & near[:, :, None]        # [Bp, n, 1, T, P]
      local = jnp.broadcast_to(local, (bp, n, g, t, p)).reshape(bp, 1, n * g * t, p)
      prefix_masks.append(local)
  return masks, prefix_masks


class Transformer(nnx.Module):
  """tokens [B, T] -> ModelOutput(logits [B, T, V] f32, hidden [B, T, D], cache)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    embed_init = jax.nn.initializers.normal(stddev=cfg.d_model ** -0.5)
    self.embed = _param(rngs, embed_init, (cfg.vocab_size, cfg.d_model), ("vocab", "embed"),
                        cfg.jnp_param_dtype)
    if cfg.scan_layers:
      self.layers = stacked_blocks(cfg, rngs)
    else:
      self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.final_norm = RMSNorm(cfg.d_model, cfg, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = _param(rngs, _fan_in_normal(cfg.d_model), (cfg.d_model, cfg.vocab_size),
                            ("embed", "vocab"), cfg.jnp_param_dtype)

  def _unembedding(self) -> jax.Array:
    return self.embed[...].T if self.cfg.tie_embeddings else self.lm_head[...]

  def unembedding(self) -> jax.Array:
    """[D, V] matrix mapping final hidden states to logits. A model with final-logit
    soft-capping has no such matrix (logits are cap * tanh(h W / cap)): it refuses, so no
    caller drops the cap silently; use `logits` or `token_logprobs`."""
    if self.cfg.final_logit_softcap:
      raise ValueError(f"unembedding: this model soft-caps its logits (final_logit_softcap="
                       f"{self.cfg.final_logit_softcap}), so hidden @ unembedding are not its logits; "
                       "use Transformer.logits or Transformer.token_logprobs")
    return self._unembedding()

  def token_logprobs(self, hidden, tokens, chunk_size: int = 4096, with_entropy: bool = False):
    """log p(tokens) [B, T] f32 (and entropies) from final hidden states [B, T, D], chunked
    over the vocabulary (`chunked_token_logprobs`), soft-capped where the model is."""
    from rewardlab.ops.logprobs import chunked_token_logprobs
    return chunked_token_logprobs(hidden, self._unembedding(), tokens, chunk_size, with_entropy,
                                  softcap=self.cfg.final_logit_softcap)

  def rope_table(self, n_positions: int) -> tuple[jax.Array, jax.Array]:
    """(cos, sin), each [K, n_positions, Dh/2] float32: RoPE of every attention kind for
    positions 0..n_positions-1, for decode loops to compute once and pass to every step's
    `hidden_states`."""
    angles = jnp.arange(n_positions, dtype=jnp.float32)[None, :, None] * rope_inv_freqs(self.cfg)[:, None, :]
    return jnp.cos(angles), jnp.sin(angles)

  def hidden_states(self, tokens, positions=None, valid=None, cache: Optional[KVCache] = None,
                    rope_table: Optional[tuple[jax.Array, jax.Array]] = None,
                    prefix: Optional[SharedPrefix] = None):
    """tokens/positions/valid: [B, T]. Returns (hidden [B, T, D], updated cache or None).
    rope_table: a precomputed `rope_table(n)` (n > every position) to look RoPE up in.
    prefix: prompt keys/values every row attends to before its cache (B a multiple of the
    prefix's batch; needs a cache)."""
    cfg = self.cfg
    b, t = tokens.shape
    valid = jnp.ones((b, t), bool) if valid is None else valid.astype(bool)
    if cache is None:
      index = jnp.zeros((), jnp.int32)
      key_valid = valid
    else:
      index = cache.index
      key_valid = jax.lax.dynamic_update_slice(cache.valid, valid, (0, index))
    if positions is None:
      if cache is not None:
        raise ValueError("hidden_states: positions are required when decoding with a cache")
      positions = positions_from_valid(valid)
    if prefix is not None and (cache is None or b % prefix.valid.shape[0]):
      raise ValueError(f"hidden_states: a shared prefix needs a cache and a batch ({b}) that is a "
                       f"multiple of the prefix's ({prefix.valid.shape[0]})")
    # per attention kind (0 global, 1 local): a mask and a RoPE table, computed once and
    # selected per layer by its integer kind
    masks, prefix_masks = attention_masks(cfg, key_valid, index, t, None if prefix is None else prefix.valid)
    if rope_table is not None:  # a lookup, which XLA may fuse into every consumer cheaply
      rope_cs = [(cos[positions][:, :, None, :], sin[positions][:, :, None, :]) for cos, sin in zip(*rope_table)]
    else:  # the barrier materialises cos/sin once; otherwise XLA fuses the transcendentals
      # into every consumer and recomputes them per head and per layer
      rope_cs = jax.lax.optimization_barrier([rope_tables(positions, f) for f in rope_inv_freqs(cfg)])
    x = self.embed[...].astype(cfg.jnp_dtype)[tokens]
    if cfg.embed_scale:
      x = x * jnp.asarray(cfg.d_model ** 0.5, cfg.jnp_dtype)
    x = constrain(x, _RESIDUAL)
    per_kind = [LayerInputs(rope_cs[kind], masks[kind], key_valid, index, None,
                            None if prefix is None else prefix_masks[kind]) for kind in range(len(masks))]
    run = self._scan_layers if cfg.scan_layers else self._unrolled_layers
    x, kv = run(x, per_kind, cache, prefix)
    hidden = self.final_norm(x)
    if cache is not None:
      cache = KVCache(kv[0], kv[1], key_valid, index + t)
    return hidden, cache

  def _unrolled_layers(self, x, per_kind: list, cache, prefix):
    """One call per layer; per_kind[k]: the LayerInputs of attention kind k (its `prefix` the
    kind's prefix mask). Returns (x, (k L-tuple, v L-tuple) or None)."""
    new_k, new_v = [], []
    for i, (block, kind) in enumerate(zip(self.layers, self.cfg.attention_kinds)):
      graphdef, params = nnx.split(block)
      step = _layer_fn(graphdef, self.cfg, differentiable=cache is None, in_scan=False, local=bool(kind))
      inputs = per_kind[kind]._replace(local=None)
      if prefix is not None:
        inputs = inputs._replace(prefix=(prefix.k[i], prefix.v[i], inputs.prefix))
      kv = None if cache is None else (cache.k[i], cache.v[i], None)
      x, kv = step(params, x, inputs, kv)
      if kv is not None:
        new_k.append(kv[0])
        new_v.append(kv[1])
    return x, (None if cache is None else (tuple(new_k), tuple(new_v)))

  def _scan_layers(self, x, per_kind: list, cache, prefix):
    """`jax.lax.scan` over the stacked layers: xs are each layer's parameters, kind and
    index (and shared-prefix keys/values); the carry is x and the stacked cache buffers,
    which each layer writes in place. With several attention kinds their masks / RoPE
    tables are stacked and indexed by the layer's kind. Returns (x, (k, v) stacks or None)."""
    cfg = self.cfg
    graphdef, params = nnx.split(self.layers)
    one_kind = len(per_kind) == 1
    step = _layer_fn(graphdef, cfg, differentiable=cache is None, in_scan=True, local=False if one_kind else None)
    kinds = jnp.asarray(cfg.attention_kinds, jnp.int32)
    if one_kind:
      select = lambda kind: per_kind[0]
    else:
      if prefix is not None:  # the global kind's [Bp, 1, 1, P] prefix mask to the local kind's shape
        per_kind[0] = per_kind[0]._replace(prefix=jnp.broadcast_to(per_kind[0].prefix, per_kind[1].prefix.shape))
      stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *per_kind)
      select = lambda kind: jax.tree.map(lambda a: a[kind], stacked)._replace(local=kind == 1)

    def body(carry, xs):
      x, kv = carry
      layer_params, kind, layer, prefix_kv = xs
      inputs = select(kind)
      if prefix_kv is not None:
        inputs = inputs._replace(prefix=(*prefix_kv, inputs.prefix))
      x, kv = step(layer_params, x, inputs, None if kv is None else (*kv, layer))
      return (x, kv), None

    kv = None if cache is None else (cache.k, cache.v)
    prefix_kv = None if prefix is None else (prefix.k, prefix.v)
    xs = (params, kinds, jnp.arange(cfg.n_layers, dtype=jnp.int32), prefix_kv)
    (x, kv), _ = jax.lax.scan(body, (x, kv), xs)
    return x, kv

  def logits(self, hidden: jax.Array, unembedding: Optional[jax.Array] = None) -> jax.Array:
    """[B, T, D] -> [B, T, V] float32 (soft-capped when the model is). `unembedding`: a
    precomputed `decode_unembedding()`, which decode loops materialise once."""
    w = self._unembedding() if unembedding is None else unembedding
    logits = jnp.einsum("btd,dv->btv", hidden, w.astype(hidden.dtype), preferred_element_type=jnp.float32)
    return _softcap(logits, self.cfg.final_logit_softcap)

  def decode_unembedding(self) -> jax.Array:
    """[D, V] unembedding matrix (before any soft-cap, which `logits` applies) materialised
    in that layout. With tied embeddings it is the transpose of the [V, D] table, which XLA
    otherwise folds into every decode step's logits matmul as a transposed operand
    (several times slower on CPU)."""
    return jax.lax.optimization_barrier(self._unembedding())

  def __call__(self, tokens, positions=None, valid=None, cache=None) -> ModelOutput:
    hidden, cache = self.hidden_states(tokens, positions, valid, cache)
    return ModelOutput(self.logits(hidden), hidden, cache)
