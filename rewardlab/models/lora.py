"""LoRA as a pure transform of parameter trees.

Adapters live in their own tree `{path: {"a": [*in, r], "b": [r, *out]}}`; the model runs
on `apply_lora(base, lora, scale)`, so gradients (and optimizer state) exist only for the
adapters while the base weights stay frozen, and the merged tree is exactly what gets
exported. B starts at zero, so a fresh adapter leaves the model unchanged.
"""
from __future__ import annotations

import math
from typing import Sequence

import jax
import jax.numpy as jnp
from jax.sharding import PartitionSpec as P

from rewardlab.models.paths import get_path, key_tuple, set_path

# projection name -> number of leading "input" dims of its kernel
LORA_TARGETS = {"q": 1, "k": 1, "v": 1, "o": 2, "gate": 1, "up": 1, "down": 1}


def _targets(params, targets: Sequence[str]):
  unknown = sorted(set(targets) - set(LORA_TARGETS))
  if unknown:
    raise ValueError(f"lora.targets: unknown {unknown}; allowed: {sorted(LORA_TARGETS)}")
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  found = []
  for path, leaf in flat:
    name = getattr(path[-1], "key", None)
    if name in targets and getattr(leaf, "ndim", 0) >= 2:
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
    n_in = LORA_TARGETS[name]
    in_shape, out_shape = w.shape[:n_in], w.shape[n_in:]
    fan_in = math.prod(in_shape)
    a = jax.random.normal(jax.random.fold_in(rng, i), in_shape + (rank,), jnp.float32) * fan_in ** -0.5
    set_path(lora, path, {"a": a.astype(w.dtype), "b": jnp.zeros((rank,) + out_shape, w.dtype)})
  return lora


def lora_specs(base_specs, lora) -> dict:
  """PartitionSpecs for adapters from their base kernels' specs (in dims / out dims)."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(lora)[0]:
    keys = key_tuple(path)
    base = tuple(get_path(base_specs, keys[:-1]))
    n_in = LORA_TARGETS[keys[-2]]
    spec = P(*base[:n_in], None) if keys[-1] == "a" else P(None, *base[n_in:])
    set_path(out, keys, spec)
  return out


def apply_lora(base, lora, scale: float):
  """base + scale * A @ B for every adapted kernel; other leaves pass through."""
  merged = jax.tree.map(lambda x: x, base)
  for path, _ in jax.tree_util.tree_flatten_with_path(lora, is_leaf=lambda x: isinstance(x, dict) and "a" in x)[0]:
    keys = key_tuple(path)
    ab = get_path(lora, keys)
    w = get_path(base, keys)
    delta = jnp.tensordot(ab["a"], ab["b"], axes=1)
    set_path(merged, keys, (w + scale * delta).astype(w.dtype))
  return merged
