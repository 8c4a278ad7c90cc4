"""Optimizers and learning-rate schedules from config, all through optax.

Precision (config.optim):
  mu_dtype      dtype of the first moment (Adam/AdamW/Lion's `mu_dtype`); "" = the master
                weights' dtype. "bfloat16" halves that state. The second moment keeps the
                master dtype: its per-step EMA change (1 - b2 = 2% at b2 = 0.98, 0.1% at
                0.999) is at or below bfloat16's resolution (2^-8), so a bf16 nu would stall.
  master_dtype  "float32" (default): parameters stored in a lower precision (model.param_dtype
                bfloat16) are updated through a float32 master copy kept in the optimizer
                state (`master_weights`); the model sees the master rounded to its dtype.
                "" = update low-precision parameters in place (updates under half an ulp are
                lost). float32 parameters have no copy either way.
"""
from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("adamw", "adam", "sgd", "lion")
STATE_DTYPES = {"": None, "float32": jnp.float32, "bfloat16": jnp.bfloat16}


class MasterWeightsState(NamedTuple):
  master: Any                 # f32 copy of each lower-precision parameter; MaskedNode elsewhere
  inner: optax.OptState       # the wrapped transformation's state (sees the master weights)


def master_weights(inner: optax.GradientTransformation, dtype=jnp.float32) -> optax.GradientTransformation:
  """Runs `inner` on a `dtype` master copy of every parameter stored in lower precision.

  update(grads, state, params) casts grads to the master dtype, lets `inner` update the
  master, and returns updates u = new_master - params in the master dtype, so that
  `optax.apply_updates(params, u)` = (params + u).astype(param dtype) rounds the new master
  once to the parameter dtype. Parameters already in `dtype` keep no copy (their state
  entry is an `optax.MaskedNode`) and get `inner`'s updates unchanged."""
  dtype = jnp.dtype(dtype)
  low = lambda p: jnp.dtype(p.dtype) != dtype
  masked = lambda m: isinstance(m, optax.MaskedNode)

  def full_master(params, master):
    return jax.tree.map(lambda p, m: p if masked(m) else m, params, master, is_leaf=masked)

  def init(params):
    master = jax.tree.map(lambda p: p.astype(dtype) if low(p) else optax.MaskedNode(), params)
    return MasterWeightsState(master, inner.init(full_master(params, master)))

  def update(grads, state, params=None):
    if params is None:
      raise ValueError("master_weights: update needs the current params")
    current = full_master(params, state.master)
    grads = jax.tree.map(lambda g, m: g.astype(m.dtype), grads, current)
    updates, inner_state = inner.update(grads, state.inner, current)
    new = optax.apply_updates(current, updates)
    master = jax.tree.map(lambda m, n: m if masked(m) else n, state.master, new, is_leaf=masked)
    out = jax.tree.map(lambda p, u, n: (n - p.astype(n.dtype)) if low(p) else u, params, updates, new)
    return out, MasterWeightsState(master, inner_state)

  return optax.GradientTransformation(init, update)


def _state_dtype(optim, field: str):
  value = optim.get(field, "float32" if field == "master_dtype" else "")
  if value not in STATE_DTYPES:
    raise ValueError(f"optim.{field}={value!r} is not allowed; allowed: {sorted(STATE_DTYPES)}")
  return STATE_DTYPES[value]


def make_schedule(optim, total_steps: int) -> optax.Schedule:
  """Linear warmup to `lr`, then constant / cosine / linear decay to lr * min_lr_ratio."""
  lr, warmup, total = optim.lr, optim.warmup_steps, max(total_steps, 1)
  end = lr * optim.min_lr_ratio
  if optim.schedule == "constant":
    decay = optax.constant_schedule(lr)
  elif optim.schedule == "cosine":
    decay = optax.cosine_decay_schedule(lr, max(total - warmup, 1), alpha=optim.min_lr_ratio)
  elif optim.schedule == "linear":
    decay = optax.linear_schedule(lr, end, max(total - warmup, 1))
  else:
    raise ValueError(f"optim.schedule={optim.schedule!r} is unknown; allowed: {SCHEDULES}")
  if warmup <= 0:
    return decay
  return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup), decay], [warmup])


def _decay_mask(params):
  """Weight decay on matrices only (not norms, biases)."""
  return jax.tree.map(lambda x: x.ndim >= 2, params)


def make_optimizer(optim, total_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """optax chain: clip_by_global_norm (if clip_norm > 0), then the optimizer on the schedule,
  with its first moment in optim.mu_dtype, all wrapped in `master_weights` (optim.master_dtype)."""
  schedule = make_schedule(optim, total_steps)
  mu_dtype, master = _state_dtype(optim, "mu_dtype"), _state_dtype(optim, "master_dtype")
  if optim.name == "adamw":
    opt = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, mu_dtype=mu_dtype,
                      weight_decay=optim.weight_decay, mask=_decay_mask)
  elif optim.name == "adam":
    opt = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps, mu_dtype=mu_dtype)
  elif optim.name == "lion":
    opt = optax.lion(schedule, b1=optim.b1, b2=optim.b2, mu_dtype=mu_dtype, weight_decay=optim.weight_decay,
                     mask=_decay_mask)
  elif optim.name == "sgd":
    opt = optax.sgd(schedule)
  else:
    raise ValueError(f"optim.name={optim.name!r} is unknown; allowed: {OPTIMIZERS}")
  chain = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm > 0 else []
  opt = optax.chain(*chain, opt)
  return (opt if master is None else master_weights(opt, master)), schedule
