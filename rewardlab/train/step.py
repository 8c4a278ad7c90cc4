"""The generic update step: (graphdef, loss_fn, optax optimizer, shardings) -> one jitted
`step(state, batch) -> (state, metrics)`. Every pipeline (SFT, RM, DPO, RL) uses it.

`loss_fn(model, batch, rng) -> (loss, metrics)` is the only pipeline-specific piece: it runs
the model to get arrays (log-probs, head outputs) and hands them to a pure objective.
"""
from __future__ import annotations

from typing import Any, Callable

import jax
import optax
from flax import nnx

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


def make_update_step(graphdef, loss_fn: LossFn, optimizer: optax.GradientTransformation,
                     schedule: optax.Schedule | None, state_shardings, batch_shardings,
                     donate: bool = True, merge: MergeFn | None = None):
  """Returns jitted step(state, batch) -> (state, metrics) with explicit shardings.

  `merge(params, frozen)` builds the model's parameters (e.g. LoRA: base + adapters);
  gradients and optimizer state exist for `state.params` only."""
  grad_fn = make_loss_and_grad(graphdef, loss_fn, merge)

  def step(state: TrainState, batch):
    rng, step_rng = jax.random.split(state.rng)
    (loss, metrics), grads = grad_fn(state.params, state.frozen, batch, step_rng)
    updates, opt_state = optimizer.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, loss=loss, grad_norm=optax.tree.norm(grads))
    if schedule is not None:
      metrics["lr"] = schedule(state.step)
    new_state = state.replace(step=state.step + 1, params=params, opt_state=opt_state, rng=rng)
    return new_state, metrics

  return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, None), donate_argnums=(0,) if donate else ())
