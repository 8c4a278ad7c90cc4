"""Gradient accumulation: one update over a batch of 8 equals the same update over the batch
as 4 micro-batches of 2 (loss, gradient norm, parameters after one step), for token_mean /
seq_mean / constant_sum aggregation, DPO (pair batches) and PPO (actor-critic)."""
import jax
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from rewardlab.data import ByteTokenizer, make_task, sft_batch
from rewardlab.data.preference import RMBatch, pair_batch, synthetic_pairs
from rewardlab.models import ModelConfig, Transformer
from rewardlab.models.heads import ActorCritic, ValueHead
from rewardlab.objectives.policy_gradient import PG_OBJECTIVES
from rewardlab.ops import aggregation_weight
from rewardlab.pipelines.preference import make_preference_loss_fn
from rewardlab.pipelines.rl import make_rl_loss_fn
from rewardlab.pipelines.sft import make_sft_loss_fn, sft_loss_weight
from rewardlab.rollout import Rollout
from rewardlab.sharding import batch_sharding, make_mesh
from rewardlab.train.state import create_train_state, init_params, shardings_of
from rewardlab.train.step import make_update_step, micro_split

CFG = ModelConfig(vocab_size=264, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=64,
                  max_seq_len=32)
MESH = make_mesh({"data": -1})


def one_update(make_model, loss_fn, batch, micro_batches, loss_weight=None):
  """Params, loss and grad norm after one SGD step (lr 1: the step is the gradient)."""
  graphdef, params = init_params(make_model, MESH)
  optimizer = optax.sgd(1.0)
  state = create_train_state(params, optimizer, MESH, seed=0)
  step = make_update_step(graphdef, loss_fn, optimizer, None, shardings_of(state), batch_sharding(MESH),
                          donate=False, micro_batches=micro_batches, loss_weight=loss_weight)
  new, metrics = step(state, jax.device_put(batch, batch_sharding(MESH)))
  return jax.device_get(new.params), jax.device_get(metrics)


def assert_same_update(a, b, rtol=2e-5):
  (params_a, m_a), (params_b, m_b) = a, b
  np.testing.assert_allclose(m_a["loss"], m_b["loss"], rtol=rtol)
  np.testing.assert_allclose(m_a["grad_norm"], m_b["grad_norm"], rtol=rtol)
  for x, y in zip(jax.tree.leaves(params_a), jax.tree.leaves(params_b)):
    np.testing.assert_allclose(x, y, rtol=rtol, atol=1e-5)


def sft_rows():
  batch = sft_batch(make_task("addition").sample_many(np.random.default_rng(0), 8), ByteTokenizer(), 16)
  lengths = batch.loss_mask.sum(-1)
  assert len(set(lengths.tolist())) > 1   # uneven micro-batches: token weighting matters
  return batch


@pytest.mark.parametrize("aggregation", ["token_mean", "seq_mean", "constant_sum"])
def test_sft_micro_batches_equal_the_whole_batch(aggregation):
  objective = ml_collections.ConfigDict({"name": "sft", "aggregation": aggregation})
  make = lambda: Transformer(CFG, rngs=nnx.Rngs(0))  # noqa: E731
  loss_fn, batch = make_sft_loss_fn(objective, chunk_size=96), sft_rows()
  whole = one_update(make, loss_fn, batch, 1)
  micro = one_update(make, loss_fn, batch, 4, loss_weight=sft_loss_weight(objective))
  assert_same_update(whole, micro)


def test_token_mean_needs_the_token_weights():
  """Averaging the micro-batch token means equally is not the batch's token mean."""
  objective = ml_collections.ConfigDict({"name": "sft", "aggregation": "token_mean"})
  make = lambda: Transformer(CFG, rngs=nnx.Rngs(0))  # noqa: E731
  loss_fn, batch = make_sft_loss_fn(objective, chunk_size=96), sft_rows()
  whole = one_update(make, loss_fn, batch, 1)[1]["loss"]
  unweighted = one_update(make, loss_fn, batch, 4)[1]["loss"]
  assert abs(whole - unweighted) > 1e-4 * abs(whole)


def test_dpo_micro_batches_equal_the_whole_batch():
  tok = ByteTokenizer()
  pairs = synthetic_pairs(make_task("addition"), np.random.default_rng(1), 8)
  ref = np.random.default_rng(2).normal(-8.0, 1.0, 16).astype(np.float32)
  batch = pair_batch(pairs, tok, 16, ref)
  objective = ml_collections.ConfigDict({"name": "dpo", "beta": 0.1})
  make = lambda: Transformer(CFG, rngs=nnx.Rngs(0))  # noqa: E731
  loss_fn = make_preference_loss_fn(objective, chunk=96)
  assert_same_update(one_update(make, loss_fn, batch, 1), one_update(make, loss_fn, batch, 4))


def test_micro_split_keeps_pairs_together():
  """Pair-major batches (rows c0, r0, c1, r1, ..., per-pair fields [P]) split into
  micro-batches that are pair-major batches of the same pairs, pairs k, k+m, ... in the k-th;
  plain batches split row-strided."""
  p, m = 6, 3
  rows, per_pair = np.arange(2 * p), np.arange(p) * 10
  batch = RMBatch(rows, rows, rows, per_pair, per_pair, rows, rows, rows, rows)
  micro = micro_split(batch, m)
  tokens, margin = np.asarray(micro.tokens), np.asarray(micro.margin)
  assert tokens.shape == (m, 2 * p // m) and margin.shape == (m, p // m)
  for k in range(m):
    pair = np.arange(k, p, m)                                      # pairs k, k + m, ...
    np.testing.assert_array_equal(tokens[k], np.stack([2 * pair, 2 * pair + 1], 1).ravel())
    np.testing.assert_array_equal(margin[k], pair * 10)            # per-pair fields follow their pair
  plain = np.asarray(micro_split((rows,), m)[0])
  np.testing.assert_array_equal(plain[1], np.arange(1, 2 * p, m))


def rollout_batch(rows=8, prompt=5, new=6, seed=0):
  rng = np.random.default_rng(seed)
  lengths = rng.integers(1, new + 1, rows)
  mask = np.arange(new)[None, :] < lengths[:, None]
  tokens = rng.integers(3, 259, (rows, prompt + new)).astype(np.int32)
  valid = np.concatenate([np.ones((rows, prompt), bool), mask], 1)
  f = lambda scale: (rng.normal(0, scale, (rows, new)) * mask).astype(np.float32)  # noqa: E731
  logp_old = f(0.5) - 2.0 * mask
  return Rollout(tokens, valid, mask, logp_old, logp_old + f(0.1), f(1.0), f(0.5), f(1.0),
                 (rng.random(rows) > 0.5).astype(np.float32), {})


def test_ppo_micro_batches_equal_the_whole_batch():
  settings = dict(PG_OBJECTIVES["ppo"])
  assert settings["aggregation"] == "token_mean"
  loss_fn = make_rl_loss_fn(settings, 96, {})
  make = lambda: ActorCritic(Transformer(CFG, rngs=nnx.Rngs(0)), ValueHead(CFG.d_model, rngs=nnx.Rngs(1)))  # noqa: E731
  batch = rollout_batch()
  weight = lambda b: aggregation_weight(b.completion_mask, settings["aggregation"])  # noqa: E731
  assert_same_update(one_update(make, loss_fn, batch, 1), one_update(make, loss_fn, batch, 4, loss_weight=weight))


def test_grpo_seq_mean_micro_batches_equal_the_whole_batch():
  settings = dict(PG_OBJECTIVES["grpo"])
  loss_fn = make_rl_loss_fn(settings, 96, {})
  make = lambda: Transformer(CFG, rngs=nnx.Rngs(0))  # noqa: E731
  batch = rollout_batch(seed=3)
  weight = lambda b: aggregation_weight(b.completion_mask, settings["aggregation"])  # noqa: E731
  assert_same_update(one_update(make, loss_fn, batch, 1), one_update(make, loss_fn, batch, 4, loss_weight=weight))
