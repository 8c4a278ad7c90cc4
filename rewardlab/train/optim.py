"""Optimizers and learning-rate schedules from config, all through optax."""
from __future__ import annotations

import jax
import optax

SCHEDULES = ("constant", "cosine", "linear")
OPTIMIZERS = ("adamw", "adam", "sgd", "lion")


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
  """optax chain: clip_by_global_norm (if clip_norm > 0), then the optimizer on the schedule."""
  schedule = make_schedule(optim, total_steps)
  if optim.name == "adamw":
    opt = optax.adamw(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps,
                      weight_decay=optim.weight_decay, mask=_decay_mask)
  elif optim.name == "adam":
    opt = optax.adam(schedule, b1=optim.b1, b2=optim.b2, eps=optim.eps)
  elif optim.name == "lion":
    opt = optax.lion(schedule, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay,
                     mask=_decay_mask)
  elif optim.name == "sgd":
    opt = optax.sgd(schedule)
  else:
    raise ValueError(f"optim.name={optim.name!r} is unknown; allowed: {OPTIMIZERS}")
  chain = [optax.clip_by_global_norm(optim.clip_norm)] if optim.clip_norm > 0 else []
  return optax.chain(*chain, opt), schedule
