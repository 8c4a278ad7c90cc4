"""LoRA as a pure transform of parameter trees.

Adapters live in their own tree `{path: {"a": [*lead, *in, r], "b": [*lead, r, *out]}}`; the
model runs on `apply_lora(base, lora, scale)`, so gradients (and optimizer state) exist only
for the adapters while the base weights stay frozen, and the merged tree is exactly what gets
exported. B starts at zero, so a fresh adapter leaves the model unchanged. `lead` holds the
dims before a kernel's own (the `layers` axis of a scanned stack): one adapter per layer.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rewardlab.models.paths import get_path, key_tuple, set_path

# projection name -> (input dims, output dims) of its kernel; dims before those are leading
# (stacked-layer) dims, each index of which gets its own adapter
LORA_TARGETS = {"q": (1, 2), "k": (1, 2), "v": (1, 2), "o": (2, 1), "gate": (1, 1), "up": (1, 1),
                "down": (1, 1)}


def _n_lead(name: str, ndim: int) -> int:
  return ndim - sum(LORA_TARGETS[name])


def _targets(params, targets: Sequence[str]):
  unknown = sorted(set(targets) - set(LORA_TARGETS))
  if unknown:
    raise ValueError(f"lora.targets: unknown {unknown}; allowed: {sorted(LORA_TARGETS)}")
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  found = []
  for path, leaf in flat:
    name = getattr(path[-1], "key", None)
    if name in targets and getattr(leaf, "ndim", 0) >= sum(LORA_TARGETS[name]):
      found.append((key_tuple(path), leaf, name))
  if not found:
    raise ValueError(f"lora.targets {list(targets)} match no parameter")
  return found


def init_lora(params, targets: Sequence[str], rank: int, rng: jax.Array) -> dict:
  """Adapters for every kernel named in `targets` (e.g. ("q", "v")). B is zero."""
  if rank < 1:
    raise ValueError(f"lora.rank={rank} must be >= 1")
  lora = {}
  for i, (path, w, name) in enumerate(_targets(params, targets)):
    lead, n_in = _n_lead(name, w.ndim), LORA_TARGETS[name][0]
    lead_shape, in_shape, out_shape = w.shape[:lead], w.shape[lead:lead + n_in], w.shape[lead + n_in:]
    fan_in = math.prod(in_shape)
    a = jax.random.normal(jax.random.fold_in(rng, i), lead_shape + in_shape + (rank,), jnp.float32) * fan_in ** -0.5
    set_path(lora, path, {"a": a.astype(w.dtype), "b": jnp.zeros(lead_shape + (rank,) + out_shape, w.dtype)})
  return lora


def lora_specs(base_specs, lora) -> dict:
  """PartitionSpecs for adapters from their base kernels' specs (in dims / out dims)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(lora)[0]:
    keys = key_tuple(path)
    name = keys[-2]
    n_in, n_out = LORA_TARGETS[name]
    lead = leaf.ndim - 1 - (n_in if keys[-1] == "a" else n_out)              # a: [*lead, *in, r]
    base = tuple(get_path(base_specs, keys[:-1]))
    base = base + (None,) * (lead + n_in + n_out - len(base))               # a short P() is replicated
    if keys[-1] == "a":
      spec = P(*base[:lead + n_in], None)
    else:
      spec = P(*base[:lead], None, *base[lead + n_in:])
    set_path(out, keys, spec)
  return out


def apply_lora(base, lora, scale: float):
  """base + scale * A @ B for every adapted kernel (per leading index); other leaves pass
  through."""
  merged = jax.tree.map(lambda x: x, base)
  for path, _ in jax.tree_util.tree_flatten_with_path(lora, is_leaf=lambda x: isinstance(x, dict) and "a" in x)[0]:
    keys = key_tuple(path)
    ab = get_path(lora, keys)
    w = get_path(base, keys)
    lead = _n_lead(keys[-1], w.ndim)
    rank = ab["a"].shape[-1]
    a = ab["a"].reshape(w.shape[:lead] + (-1, rank))                        # [*lead, in, r]
    b = ab["b"].reshape(w.shape[:lead] + (rank, -1))                        # [*lead, r, out]
    delta = jnp.matmul(a, b).reshape(w.shape)
    set_path(merged, keys, (w + scale * delta).astype(w.dtype))
  return merged
