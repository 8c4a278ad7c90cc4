"""Sliding-window (local) attention: the window counts tokens, not slots, in every path:
full forward with padding, the growing KV cache, the shared prompt prefix, and the sampler."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardlab.data import ByteTokenizer, prompt_batch
from rewardlab.models import FAMILIES, ModelConfig, Transformer, init_cache, positions_from_valid
from rewardlab.models.transformer import attention_masks
from rewardlab.sampling import SamplingParams, make_naive_generate, make_sample_fn

TOK = ByteTokenizer()
# Gemma 2 switches at toy size: layers alternate local (window 3) / global, soft-caps on,
# local layers with their own RoPE base
CFG = ModelConfig(**dict(FAMILIES["gemma2"], vocab_size=264, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                         head_dim=8, mlp_dim=64, max_seq_len=48, sliding_window=3, rope_local_theta=100.0,
                         attn_logit_softcap=5.0, final_logit_softcap=8.0))
PROMPTS = ["12+7=", "3+450=", "9="]


@pytest.fixture(scope="module")
def split():
  return nnx.split(Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param)


def _brute_force_local(valid_rows, query_slots, w):
  """[B, T, S]: slot s visible to the query at slot q iff both are real tokens... by positions."""
  out = []
  for valid in valid_rows:
    pos = np.cumsum(valid) - 1
    out.append([[bool(valid[s]) and s <= q and pos[q] - pos[s] < w for s in range(len(valid))]
                for q in query_slots])
  return np.array(out)


def test_local_mask_counts_tokens_not_slots():
  cfg = dataclasses.replace(CFG, sliding_window=2)
  valid = jnp.array([[False, False, True, True, True, True],
                     [True, False, True, False, True, True]])   # padding inside a row, too
  masks, _ = attention_masks(cfg, valid, jnp.int32(0), 6)
  want = _brute_force_local(np.asarray(valid), range(6), 2)
  np.testing.assert_array_equal(masks[1], want)
  # closed form for row 1: real tokens at slots 0, 2, 4, 5; the query at slot 4 sees slots 2, 4
  np.testing.assert_array_equal(masks[1][1, 4], [False, False, True, False, True, False])
  np.testing.assert_array_equal(masks[0][1, 4], [True, False, True, False, True, False])  # global
  # a cache written from slot 3 on: only the new queries' rows
  masks, _ = attention_masks(cfg, valid, jnp.int32(3), 3)
  np.testing.assert_array_equal(masks[1], want[:, 3:])


def test_shared_prefix_mask_equals_the_concatenated_sequence():
  """Prefix keys and the rows' own slots, as one sequence, give the brute-force window."""
  cfg = dataclasses.replace(CFG, sliding_window=3)
  g = cfg.n_heads // cfg.n_kv_heads
  prefix_valid = np.array([[False, True, True, True], [True, True, True, True]])   # 2 prompts
  own_valid = np.array([[True, True, False], [True, False, False],                 # n = 2 rows each
                        [True, True, True], [True, True, False]])
  t, index = 1, 1   # one new token, written at slot 1 of the own cache
  masks, prefix_masks = attention_masks(cfg, jnp.asarray(own_valid), jnp.int32(index), t,
                                        jnp.asarray(prefix_valid))
  full = np.concatenate([np.repeat(prefix_valid, 2, 0), own_valid], 1)          # [4, P + S]
  want = _brute_force_local(full, [4 + index], 3)[:, 0]                         # [4, P + S]
  got_prefix = np.asarray(prefix_masks[1]).reshape(2, 2, g, t, 4)[:, :, 0, 0].reshape(4, 4)
  np.testing.assert_array_equal(got_prefix, want[:, :4])
  np.testing.assert_array_equal(np.asarray(masks[1])[:, 0], want[:, 4:])


def test_cached_decode_matches_full_forward_past_the_window(split):
  """Left-padded prefill, then one token at a time through a cache twice the window."""
  model = nnx.merge(*split)
  batch = prompt_batch(PROMPTS, TOK, 10)
  cont = jax.random.randint(jax.random.PRNGKey(3), (3, 8), 0, 256)
  tokens = jnp.concatenate([batch.tokens, cont], 1)
  valid = jnp.concatenate([batch.valid, jnp.ones((3, 8), bool)], 1)
  full = model(tokens, valid=valid).logits
  windowless = nnx.merge(nnx.split(Transformer(dataclasses.replace(CFG, sliding_window=0, rope_local_theta=0.0),
                                               rngs=nnx.Rngs(0)), nnx.Param)[0], split[1])
  assert not np.allclose(windowless(tokens, valid=valid).logits[:, -1], full[:, -1], atol=1e-3)
  cache = init_cache(CFG, 3, 18)
  pos = positions_from_valid(valid)
  out = model(batch.tokens, pos[:, :10], batch.valid, cache)
  pieces = [out.logits]
  for t in range(10, 18):
    out = model(tokens[:, t:t + 1], pos[:, t:t + 1], valid[:, t:t + 1], out.cache)
    pieces.append(out.logits)
  got = jnp.concatenate(pieces, 1)
  np.testing.assert_allclose(got[np.asarray(valid)], full[np.asarray(valid)], atol=2e-5)


def _fresh_logps(model, batch, out, n):
  """log p(sampled token) from one full forward pass over prompt + completion: [B*n, N]."""
  tokens = jnp.concatenate([jnp.repeat(batch.tokens, n, 0), out.tokens], 1)
  valid = jnp.concatenate([jnp.repeat(batch.valid, n, 0), out.mask], 1)
  logits = model(tokens, valid=valid).logits[:, batch.tokens.shape[1] - 1:-1]
  return jnp.take_along_axis(jax.nn.log_softmax(logits), out.tokens[..., None], -1)[..., 0]


@pytest.mark.parametrize("n,share,grow", [(1, True, 0), (1, True, 3), (3, True, 3), (3, False, 4)])
def test_sampling_with_a_window_equals_full_forward_reruns(split, n, share, grow):
  """Prompts of 2..6 tokens + 10 new >> window 3: the growing cache, the shared prefix and
  the repeated prefill all give the greedy tokens a full forward pass per step gives, and
  (sampling at T=1) the log-probs a full forward pass of the sampled sequence gives."""
  graphdef, params = split
  batch = prompt_batch(PROMPTS, TOK, 8)
  sp = SamplingParams(max_new_tokens=10, temperature=0.0, n=n, share_prefix=share, grow_cache_every=grow)
  out = make_sample_fn(graphdef, sp, TOK.pad_id)(params, batch.tokens, batch.valid, jax.random.PRNGKey(0))
  ref, _ = make_naive_generate(graphdef, 10, -1, TOK.pad_id)(params, batch.tokens, batch.valid)
  np.testing.assert_array_equal(out.tokens, np.repeat(np.asarray(ref), n, 0))
  sampled = make_sample_fn(graphdef, dataclasses.replace(sp, temperature=1.0), TOK.pad_id)(
      params, batch.tokens, batch.valid, jax.random.PRNGKey(1))
  assert len(np.unique(np.asarray(sampled.tokens))) > 10
  np.testing.assert_allclose(sampled.logps_model, _fresh_logps(nnx.merge(*split), batch, sampled, n), atol=2e-5)
  # and the window binds: without it the same weights continue differently
  windowless = nnx.split(Transformer(dataclasses.replace(CFG, sliding_window=0, rope_local_theta=0.0),
                                     rngs=nnx.Rngs(0)), nnx.Param)[0]
  other, _ = make_naive_generate(windowless, 10, -1, TOK.pad_id)(params, batch.tokens, batch.valid)
  assert not np.array_equal(np.asarray(other), np.asarray(ref))


def test_scanned_gemma_layers_sample_the_same_tokens(split):
  """Local and global layers in one scan: each layer's kind picks its mask, RoPE and (with
  a shared prefix) its prefix mask."""
  from test_sampler import assert_scanned_samples_equal_unrolled
  assert_scanned_samples_equal_unrolled(CFG, split, PROMPTS)


def test_softcapped_logprobs_and_unembedding_guard(split):
  model = nnx.merge(*split)
  tokens = jax.random.randint(jax.random.PRNGKey(1), (2, 9), 0, CFG.vocab_size)
  logits = model(tokens).logits
  assert float(jnp.max(jnp.abs(logits))) < CFG.final_logit_softcap
  want = jnp.take_along_axis(jax.nn.log_softmax(logits), tokens[..., None], -1)[..., 0]
  hidden, _ = model.hidden_states(tokens)
  np.testing.assert_allclose(model.token_logprobs(hidden, tokens, chunk_size=100), want, atol=1e-5)
  with pytest.raises(ValueError, match="soft-caps its logits.*token_logprobs"):
    model.unembedding()
