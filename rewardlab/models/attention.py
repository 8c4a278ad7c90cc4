"""Attention kernels behind `ModelConfig.attention`, for passes without a KV cache (training,
scoring, log-probs): the reference is the einsum in `transformer.Attention` ("xla").

- "cudnn": `jax.nn.dot_product_attention(implementation="cudnn")`, cuDNN's fused flash
  attention on NVIDIA GPUs (bf16/fp16 activations; GQA native; no logit soft-cap).
- "splash": Pallas splash attention from `jax.experimental.pallas.ops.tpu` (block-sparse
  flash attention for TPU; GQA as one multi-query kernel per kv head; soft-cap supported).
  Shipped with jax itself, so it moves in lockstep with jaxlib/libtpu; tokamax (the other
  maintained package, 0.0.x) wraps the same kernel but pins typeguard 2.x and pulls
  qwix/pydantic, for nothing this model needs.

Both see the same [B, T, S] boolean masks as the reference, except at padding queries: a
padding query attends to itself (cuDNN) or to padding (splash) instead of to nothing, so no
row is empty (an empty row is NaN in a fused kernel, and NaN values at padding slots would
poison real rows through 0 * NaN). Real queries get exactly the reference's keys.
The splash kernel's sliding window counts slots, the reference's counts real tokens: equal
whenever each row's real tokens are contiguous (left or right padding, as every batch
builder here makes them).

Off their platform the same wrappers run for tests: "cudnn" on jax's XLA implementation of
`dot_product_attention`, "splash" in Pallas interpret mode (slow). Runs never reach those:
`check_attention_platform` refuses them at start-up.
"""
from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp

from rewardlab.models.config import ModelConfig
from rewardlab.sharding import LOGICAL_RULES, logical_to_spec

IMPL_PLATFORMS = {"xla": None, "cudnn": "gpu", "splash": "tpu"}
SPLASH_BLOCK = 512  # q/kv tile; sequences are padded up to a multiple of the tile in use


def current_platform() -> str:
  """The platform being traced for: the context mesh's devices (`jax.set_mesh`, e.g. an
  abstract TPU topology compiled on a CPU host), else the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty:
    return mesh.abstract_device.platform
  return jax.default_backend()


def check_attention_platform(cfg: ModelConfig, platform: str) -> None:
  """Start-up check that `cfg.attention` runs on `platform` ("cpu", "gpu", "tpu"); raises
  naming the field, the platform and what to use instead."""
  want = IMPL_PLATFORMS[cfg.attention]
  if want is not None and platform != want:
    raise ValueError(f"model.attention={cfg.attention!r} needs a {want.upper()} but this run's devices are "
                     f"{platform!r}; use model.attention='xla' there")
  if cfg.attention == "cudnn" and cfg.dtype not in ("bfloat16", "float16"):
    raise ValueError(f"model.attention='cudnn' needs model.dtype bfloat16 or float16 (cuDNN flash "
                     f"attention), got {cfg.dtype!r}")


def cudnn_attention(q, k, v, mask, cfg: ModelConfig, implementation: str = "cudnn"):
  """q [B, T, H, Dh], k/v [B, T, KV, Dh] (post-RoPE), mask [B, T, T] bool -> [B, T, H, Dh].
  `implementation="xla"` runs jax's reference of the same call (CPU tests)."""
  t = q.shape[1]
  # a padding query (empty row) attends to itself, so no row is fully masked
  mask = (mask | jnp.eye(t, dtype=bool)[None])[:, None]                     # [B, 1, T, T]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, scale=cfg.query_scale, is_causal=True,
                                      implementation=implementation)


@functools.lru_cache(maxsize=32)
def _splash_kernel(n_heads: int, t: int, block: int, window: int, softcap: float, interpret: bool):
  """One multi-query splash kernel (a kv head's G query heads) for padded length t."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  if window:
    head = sm.LocalMask((t, t), window_size=(window - 1, 0), offset=0)
  else:
    head = sm.CausalMask((t, t))
  sizes = sk.BlockSizes(block_q=block, block_kv=block, block_kv_compute=block, block_q_dkv=block,
                        block_kv_dkv=block, block_kv_dkv_compute=block, block_q_dq=block, block_kv_dq=block)
  return sk.make_splash_mqa(sm.MultiHeadMask([head] * n_heads), block_sizes=sizes, head_shards=1,
                            q_seq_shards=1, attn_logits_soft_cap=softcap or None, interpret=interpret)


def _splash_local(q, k, v, segments, *, window: int, cfg: ModelConfig, interpret: bool):
  """Per-device splash: q [B, KV, G, T, Dh], k/v [B, KV, T, Dh], segments [B, T] int32."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  t = q.shape[3]
  block = min(SPLASH_BLOCK, -(-t // 128) * 128)
  padded = -(-t // block) * block
  if padded != t:  # padding slots get segment 0: they see (and are seen by) padding only
    pad = lambda x, axis: jnp.pad(x, [(0, padded - t if a == axis else 0) for a in range(x.ndim)])
    q, k, v, segments = pad(q, 3), pad(k, 2), pad(v, 2), pad(segments, 1)
  kernel = _splash_kernel(q.shape[2], padded, block, window, float(cfg.attn_logit_softcap), interpret)
  per_kv_head = jax.vmap(kernel, in_axes=(0, 0, 0, None))                   # over KV
  out = jax.vmap(per_kv_head)(q, k, v, sk.SegmentIds(q=segments, kv=segments))  # over B
  return out[:, :, :, :t]


def splash_attention(q, k, v, valid, cfg: ModelConfig, local: bool, interpret: bool | None = None,
                     rules=LOGICAL_RULES):
  """q [B, T, H, Dh], k/v [B, T, KV, Dh] (post-RoPE), valid [B, T] -> [B, T, H, Dh].
  Causal; `local` limits keys to the last `cfg.sliding_window` slots. Under a mesh context
  the kernel runs per device (shard_map) on the batch and kv-head shards the rules give.
  interpret: None = off TPU only (Pallas interpret mode)."""
  interpret = current_platform() != "tpu" if interpret is None else interpret
  b, t, h, hd = q.shape
  kvh = k.shape[2]
  dt = q.dtype
  q = (q.astype(jnp.float32) * cfg.query_scale).astype(dt)                 # the kernel does not scale
  q = q.reshape(b, t, kvh, h // kvh, hd).transpose(0, 2, 3, 1, 4)           # [B, KV, G, T, Dh]
  k, v = k.transpose(0, 2, 1, 3), v.transpose(0, 2, 1, 3)                   # [B, KV, T, Dh]
  segments = valid.astype(jnp.int32)
  fn = functools.partial(_splash_local, window=cfg.sliding_window if local else 0, cfg=cfg, interpret=interpret)
  mesh = jax.sharding.get_abstract_mesh()
  if not mesh.empty and math.prod(mesh.shape.values()) > 1:
    spec = lambda axes, x: logical_to_spec(axes, x.shape, mesh, rules)
    q_spec = spec(("batch", "kv_heads", None, None, "head_dim"), q)
    kv_spec = spec(("batch", "kv_heads", None, "head_dim"), k)
    seg_spec = spec(("batch", None), segments)
    fn = jax.shard_map(fn, in_specs=(q_spec, kv_spec, kv_spec, seg_spec), out_specs=q_spec, check_vma=False)
  out = fn(q, k, v, segments)                                                # [B, KV, G, T, Dh]
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, h, hd).astype(dt)

