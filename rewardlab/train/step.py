"""The generic update step: (graphdef, loss_fn, optax optimizer, shardings) -> one jitted
`step(state, batch) -> (state, metrics)`. Every pipeline (SFT, RM, DPO, RL) uses it.

`loss_fn(model, batch, rng) -> (loss, metrics)` is the only pipeline-specific piece: it runs
the model to get arrays (log-probs, head outputs) and hands them to a pure objective.

Gradient accumulation (`micro_batches` > 1) scans over micro-batches inside the one jitted
step. A loss is a mean over some unit (tokens, sequences, pairs), so the micro-batch
losses are combined weighted by each one's share of that unit (`loss_weight`, default: all
micro-batches equal); the update then equals the whole batch's for every loss that is a
single mean over its units (token_mean / seq_mean / constant_sum aggregation, DPO-family
means over pairs, PPO's policy + value loss over the same tokens). Batch-level statistics
inside a loss (KTO's reference point z, advantage whitening) are per micro-batch.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rewardlab.train.state import TrainState

LossFn = Callable[[nnx.Module, Any, jax.Array], tuple[jax.Array, dict]]
# (trainable params, frozen) -> the full parameter tree the model is built from
MergeFn = Callable[[Any, Any], Any]


def model_params(params, frozen, merge: MergeFn | None = None):
  return params if merge is None else merge(params, frozen)


def make_loss_and_grad(graphdef, loss_fn: LossFn, merge: MergeFn | None = None):
  """(params, frozen, batch, rng) -> ((loss, metrics), d loss / d params)."""
  def loss_of(params, frozen, batch, rng):
    return loss_fn(nnx.merge(graphdef, model_params(params, frozen, merge)), batch, rng)
  return jax.value_and_grad(loss_of, has_aux=True)


def micro_split(batch, m: int):
  """[n, ...] leaves -> [m, n/m, ...]; micro-batch k takes examples k, k+m, k+2m, ..., so a
  batch sharded in contiguous row blocks keeps every micro-batch spread over all its shards.
  An example is one row, or `rows_per_example` consecutive rows for batches whose class says
  so (pair-major PairBatch / RMBatch: a pair's chosen and rejected rows, 2); leaves with one
  entry per example (RMBatch's margin) follow their example."""
  unit = getattr(batch, "rows_per_example", 1)
  n = max(x.shape[0] for x in jax.tree.leaves(batch)) // unit

  def split(x):
    rows = x.shape[0] // n   # rows of this leaf per example
    blocks = x.reshape(n // m, m, rows, *x.shape[1:])
    return jnp.swapaxes(blocks, 0, 1).reshape(m, n // m * rows, *x.shape[1:])
  return jax.tree.map(split, batch)


def accumulated_loss_and_grad(grad_fn, micro_batches: int,
                              loss_weight: Callable[[Any], jax.Array] | None = None, micro_sharding=None):
  """grad_fn's ((loss, metrics), grads) over the batch as `micro_batches` micro-batches in a
  scan, each weighted by loss_weight(micro-batch) / the total (equal weights without it)."""
  def run(params, frozen, batch, rng):
    micro = micro_split(batch, micro_batches)
    if micro_sharding is not None:
      micro = jax.lax.with_sharding_constraint(micro, micro_sharding)

    def one(mb, k):
      (loss, metrics), grads = grad_fn(params, frozen, mb, jax.random.fold_in(rng, k))
      metrics = jax.tree.map(lambda v: jnp.asarray(v, jnp.float32), metrics)
      w = jnp.float32(1.0) if loss_weight is None else jnp.asarray(loss_weight(mb), jnp.float32)
      return w, (loss, metrics, grads)

    def body(carry, xs):
      total, acc = carry
      w, out = one(*xs)
      return (total + w, jax.tree.map(lambda a, x: a + w * x.astype(a.dtype), acc, out)), None

    first = jax.tree.map(lambda x: x[0], micro)
    shapes = jax.eval_shape(lambda: one(first, 0)[1])
    # accumulate in f32 whatever the gradients' dtype (bf16 sums of many terms drift)
    zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, jnp.promote_types(s.dtype, jnp.float32)), shapes)
    (total, acc), _ = jax.lax.scan(body, (jnp.float32(0.0), zeros), (micro, jnp.arange(micro_batches)))
    loss, metrics, grads = jax.tree.map(lambda a, s: (a / total).astype(s.dtype), acc, shapes)
    return (loss, metrics), grads
  return run


def nonfinite_leaves(grads) -> jax.Array:
  """[n_leaves] bool: which gradient leaves (in jax.tree.leaves order) hold a NaN / inf."""
  return jnp.stack([~jnp.all(jnp.isfinite(g)) for g in jax.tree.leaves(grads)])


def make_update_step(graphdef, loss_fn: LossFn, optimizer: optax.GradientTransformation,
                     schedule: optax.Schedule | None, state_shardings, batch_shardings,
                     donate: bool = True, merge: MergeFn | None = None, micro_batches: int = 1,
                     loss_weight: Callable[[Any], jax.Array] | None = None):
  """Returns jitted step(state, batch) -> (state, metrics) with explicit shardings.

  `merge(params, frozen)` builds the model's parameters (e.g. LoRA: base + adapters);
  gradients and optimizer state exist for `state.params` only. `micro_batches` > 1
  accumulates gradients over that many micro-batches of the batch (`micro_split`);
  `loss_weight(micro_batch)`: its share of the loss's denominator, e.g. its loss tokens for a
  token-mean loss (default: equal shares).

  An update whose loss or gradient norm is not finite is not applied (params and optimizer
  state stay as they were; the step counter and PRNG key advance); metrics["nonfinite_update"] is 1
  for it, and "nonfinite_grads" flags the gradient leaves that went bad."""
  grad_fn = make_loss_and_grad(graphdef, loss_fn, merge)
  if micro_batches > 1:
    micro_sharding = None
    if isinstance(batch_shardings, NamedSharding):
      micro_sharding = NamedSharding(batch_shardings.mesh, P(None, *batch_shardings.spec))
    grad_fn = accumulated_loss_and_grad(grad_fn, micro_batches, loss_weight, micro_sharding)

  def step(state: TrainState, batch):
    rng, step_rng = jax.random.split(state.rng)
    (loss, metrics), grads = grad_fn(state.params, state.frozen, batch, step_rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    grad_norm = optax.tree.norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    keep = lambda new, old: jax.tree.map(lambda n, o: jnp.where(ok, n, o), new, old)  # noqa: E731
    params, opt_state = keep(params, state.params), keep(opt_state, state.opt_state)
    n_leaves = len(jax.tree.leaves(grads))   # which leaves went bad: only computed when one did
    bad_leaves = jax.lax.cond(ok, lambda: jnp.zeros(n_leaves, bool), lambda: nonfinite_leaves(grads))
    metrics = dict(metrics, loss=loss, grad_norm=grad_norm, nonfinite_update=(~ok).astype(jnp.float32),
                   nonfinite_grads=bad_leaves)
    if schedule is not None:
      metrics["lr"] = schedule(state.step)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
    return new_state, metrics

  return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, None), donate_argnums=(0,) if donate else ())
