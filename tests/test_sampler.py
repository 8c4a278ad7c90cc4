import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardlab.data import ByteTokenizer, prompt_batch
from rewardlab.models import ModelConfig, Transformer
from rewardlab.models.transformer import stack_layers
from rewardlab.ops import token_logprobs_from_logits
from rewardlab.sampling import Sampler, SamplingParams, make_naive_generate, make_sample_fn, process_logits

TOK = ByteTokenizer()
CFG = ModelConfig(vocab_size=264, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8,
                  mlp_dim=64, max_seq_len=40)
PROMPTS = ["12+7=", "3+450=", "9="]


@pytest.fixture(scope="module")
def model():
  return Transformer(CFG, rngs=nnx.Rngs(0))


@pytest.fixture(scope="module")
def split(model):
  return nnx.split(model, nnx.Param)


def _sample(split, sp, prompts=PROMPTS, seed=0, max_prompt_len=10):
  graphdef, params = split
  batch = prompt_batch(prompts, TOK, max_prompt_len)
  fn = make_sample_fn(graphdef, sp, TOK.pad_id)
  return batch, fn(params, batch.tokens, batch.valid, jax.random.PRNGKey(seed))


def _full_sequence(batch, out, n=1):
  """prompt (left-padded) + completion rows, with validity, for a fresh forward pass."""
  tokens = np.concatenate([np.repeat(batch.tokens, n, 0), np.asarray(out.tokens)], 1)
  valid = np.concatenate([np.repeat(batch.valid, n, 0), np.asarray(out.mask)], 1)
  return jnp.asarray(tokens), jnp.asarray(valid)


def test_greedy_equals_stepwise_argmax_of_full_forward(model, split):
  batch, out = _sample(split, SamplingParams(max_new_tokens=8, temperature=0.0))
  naive = make_naive_generate(split[0], 8, -1, TOK.pad_id)   # no stop token
  ref_tokens, _ = naive(split[1], batch.tokens, batch.valid)
  np.testing.assert_array_equal(out.tokens, ref_tokens)
  # and by hand: argmax of a full forward pass at every step
  tokens, valid = _full_sequence(batch, out)
  logits = model(tokens, valid=valid).logits
  p = batch.tokens.shape[1]
  np.testing.assert_array_equal(jnp.argmax(logits[:, p - 1:-1], -1), out.tokens)


def test_returned_logprobs_equal_fresh_forward(model, split):
  sp = SamplingParams(max_new_tokens=7, temperature=0.7, top_k=20, n=3)
  batch, out = _sample(split, sp)
  tokens, valid = _full_sequence(batch, out, n=3)
  logits = model(tokens, valid=valid).logits
  p = batch.tokens.shape[1]
  step_logits = logits[:, p - 1:-1]
  fresh_model = token_logprobs_from_logits(step_logits, out.tokens)
  fresh_sampling = token_logprobs_from_logits(process_logits(step_logits, sp), out.tokens)
  m = np.asarray(out.mask)
  np.testing.assert_allclose(np.asarray(out.logps_model)[m], np.asarray(fresh_model)[m], atol=2e-5)
  np.testing.assert_allclose(np.asarray(out.logps)[m], np.asarray(fresh_sampling)[m], atol=2e-5)


def test_cached_decode_logits_match_full_forward_at_every_position(model):
  """Left-padded prefill then one-token decode steps reproduce the full forward logits."""
  from rewardlab.models import init_cache, positions_from_valid
  batch = prompt_batch(PROMPTS, TOK, 10)
  cont = jax.random.randint(jax.random.PRNGKey(3), (3, 6), 0, 256)
  tokens = jnp.concatenate([batch.tokens, cont], 1)
  valid = jnp.concatenate([batch.valid, jnp.ones((3, 6), bool)], 1)
  full = model(tokens, valid=valid).logits
  cache = init_cache(CFG, 3, 16)
  pos = positions_from_valid(valid)
  out = model(batch.tokens, pos[:, :10], batch.valid, cache)
  pieces = [out.logits]
  for t in range(10, 16):
    out = model(tokens[:, t:t + 1], pos[:, t:t + 1], valid[:, t:t + 1], out.cache)
    pieces.append(out.logits)
  got = jnp.concatenate(pieces, 1)
  np.testing.assert_allclose(got[np.asarray(valid)], full[np.asarray(valid)], atol=2e-5)


def test_top_k_and_top_p_stay_in_the_allowed_set(model, split):
  graphdef, params = split
  batch = prompt_batch(PROMPTS, TOK, 10)
  for sp in (SamplingParams(max_new_tokens=6, n=8, top_k=3), SamplingParams(max_new_tokens=6, n=8, top_p=0.3)):
    out = make_sample_fn(graphdef, sp, TOK.pad_id)(params, batch.tokens, batch.valid, jax.random.PRNGKey(1))
    tokens, valid = _full_sequence(batch, out, n=8)
    logits = model(tokens, valid=valid).logits[:, 9:-1]
    allowed = jnp.isfinite(process_logits(logits, sp))
    chosen = jnp.take_along_axis(allowed, out.tokens[..., None], -1)[..., 0]
    assert bool(jnp.all(chosen | ~out.mask))
    if sp.top_k:
      assert int(jnp.max(jnp.sum(allowed, -1))) == 3


def test_process_logits_closed_form():
  logits = jnp.log(jnp.array([[0.5, 0.3, 0.15, 0.05]]))
  top_p = process_logits(logits, SamplingParams(top_p=0.75))
  np.testing.assert_array_equal(jnp.isfinite(top_p), [[True, True, False, False]])
  top_p_tiny = process_logits(logits, SamplingParams(top_p=0.01))
  np.testing.assert_array_equal(jnp.isfinite(top_p_tiny), [[True, False, False, False]])
  top_k = process_logits(logits, SamplingParams(top_k=3, temperature=2.0))
  np.testing.assert_allclose(top_k[0, :3], logits[0, :3] / 2.0)
  assert top_k[0, 3] == -jnp.inf


def _nucleus_by_sorting(logits: np.ndarray, top_p: float) -> np.ndarray:
  """Reference: keep the shortest prefix of the descending sort whose mass reaches top_p."""
  order = np.argsort(-logits, kind="stable")
  probs = np.exp(logits[order] - logits[order[0]])
  probs /= probs.sum()
  n_keep = int(np.searchsorted(np.cumsum(probs), top_p) + 1)
  keep = np.zeros(logits.shape, bool)
  keep[order[:n_keep]] = True
  return keep


def test_top_p_keeps_the_smallest_top_set_reaching_the_mass():
  rng = np.random.default_rng(0)
  for vocab, scale in ((8, 1.0), (512, 3.0), (4096, 5.0)):
    logits = (rng.standard_normal((6, vocab)) * scale).astype(np.float32)
    for top_p in (0.05, 0.5, 0.9, 0.999):
      got = np.isfinite(np.asarray(process_logits(jnp.asarray(logits), SamplingParams(top_p=top_p))))
      want = np.stack([_nucleus_by_sorting(row.astype(np.float64), top_p) for row in logits])
      np.testing.assert_array_equal(got, want, err_msg=f"vocab {vocab}, top_p {top_p}")
  # after top-k (-inf entries) the nucleus is taken among the k survivors
  logits = jnp.log(jnp.array([[0.4, 0.3, 0.2, 0.1]]))
  kept = process_logits(logits, SamplingParams(top_k=2, top_p=0.6))   # 0.4/0.7, 0.3/0.7
  np.testing.assert_array_equal(jnp.isfinite(kept), [[True, True, False, False]])


def test_top_p_boundary_mass_exactly_equal_keeps_no_extra_token():
  """When the top set's mass equals top_p exactly (in the f32 the sampler computes it in),
  that set already reaches top_p: the next token is not kept."""
  logits = jnp.log(jnp.array([[0.45, 0.3, 0.15, 0.1]]))
  probs = jax.nn.softmax(logits, axis=-1)
  for k in (1, 2, 3):
    mass = float(jnp.sum(jnp.where(logits >= logits[0, k - 1], probs, 0.0)))   # f32, exact sum
    kept = jnp.isfinite(process_logits(logits, SamplingParams(top_p=mass)))
    np.testing.assert_array_equal(kept, [[i < k for i in range(4)]], err_msg=f"top {k}, mass {mass}")
    above = jnp.isfinite(process_logits(logits, SamplingParams(top_p=float(np.nextafter(np.float32(mass), 1)))))
    assert int(jnp.sum(above)) == k + 1


def test_disabled_truncation_keeps_every_token_and_top_k_one_is_argmax():
  """top_p = 1 and top_k = 0 must not truncate: the nucleus bisection run at top_p = 1 drops
  tokens once the f32 mass of the rest still rounds to 1 (here most of a spread-out
  vocabulary), so it must not run. top_k = 1 keeps the argmax alone."""
  logits = jnp.asarray((np.random.default_rng(0).standard_normal((4, 64)) * 6).astype(np.float32))
  kept = process_logits(logits, SamplingParams(top_p=1.0, top_k=0))
  np.testing.assert_array_equal(kept, logits)
  one = jnp.isfinite(process_logits(logits, SamplingParams(top_k=1)))
  np.testing.assert_array_equal(one, jax.nn.one_hot(jnp.argmax(logits, -1), 64).astype(bool))
  whole = process_logits(logits, SamplingParams(top_k=64))             # k = V: nothing to cut
  np.testing.assert_array_equal(whole, logits)
  # grow_cache_every = 0: one segment with every slot allocated up front
  assert SamplingParams(max_new_tokens=7, grow_cache_every=0).segment_ends() == (7,)
  assert SamplingParams(max_new_tokens=7, grow_cache_every=3).segment_ends() == (3, 6, 7)


def test_low_temperature_equals_greedy(split):
  _, greedy = _sample(split, SamplingParams(max_new_tokens=8, temperature=0.0))
  _, cold = _sample(split, SamplingParams(max_new_tokens=8, temperature=1e-4), seed=5)
  np.testing.assert_array_equal(greedy.tokens, cold.tokens)


def test_sampling_frequencies_match_model_distribution():
  """Tiny vocabulary: the empirical first-token histogram matches softmax(logits)."""
  cfg = dataclasses.replace(CFG, vocab_size=8, max_seq_len=8)
  model = Transformer(cfg, rngs=nnx.Rngs(1))
  graphdef, params = nnx.split(model, nnx.Param)
  n = 4000
  tokens, valid = jnp.array([[1, 2, 3]]), jnp.ones((1, 3), bool)
  fn = make_sample_fn(graphdef, SamplingParams(max_new_tokens=1, n=n), 0)
  out = fn(params, tokens, valid, jax.random.PRNGKey(0))
  probs = np.asarray(jax.nn.softmax(model(tokens).logits[0, -1]))
  counts = np.bincount(np.asarray(out.tokens[:, 0]), minlength=8)
  chi2 = np.sum((counts - n * probs) ** 2 / (n * probs))
  assert chi2 < 24.3, (counts, n * probs)   # 99.9% quantile of chi2 with 7 dof
  np.testing.assert_allclose(out.logps_model[:, 0], np.log(probs)[np.asarray(out.tokens[:, 0])], rtol=1e-4)


def test_stops_at_stop_token_and_mask_covers_up_to_it(split):
  graphdef, params = split
  batch = prompt_batch(PROMPTS, TOK, 10)
  free = make_sample_fn(graphdef, SamplingParams(max_new_tokens=12, temperature=0.0), TOK.pad_id)(
      params, batch.tokens, batch.valid, jax.random.PRNGKey(0))
  stop = int(free.tokens[0, 2])  # row 0 must stop at its third token at the latest
  sp = SamplingParams(max_new_tokens=12, temperature=0.0, stop_ids=(TOK.eos_id, stop))
  out = make_sample_fn(graphdef, sp, TOK.pad_id)(params, batch.tokens, batch.valid, jax.random.PRNGKey(0))
  toks, mask = np.asarray(out.tokens), np.asarray(out.mask)
  for row, free_row, m in zip(toks, np.asarray(free.tokens), mask):
    stops = np.where(np.isin(free_row, [TOK.eos_id, stop]))[0]
    end = stops[0] + 1 if len(stops) else len(row)
    np.testing.assert_array_equal(row[:end], free_row[:end])  # same tokens up to the stop
    assert m[:end].all() and not m[end:].any()                 # mask: up to and incl. stop
    assert (row[end:] == TOK.pad_id).all()                     # finished rows emit padding
  assert int(out.lengths[0]) <= 3
  np.testing.assert_array_equal(out.lengths, mask.sum(1))


def test_early_exit_when_every_sequence_stopped(split):
  graphdef, params = split
  params = dict(params)
  # force EOS: a huge EOS embedding row gives it the top logit (tied unembedding)
  params["embed"] = params["embed"].at[TOK.eos_id].set(params["embed"][TOK.eos_id] * 0 + 50.0)
  batch = prompt_batch(PROMPTS, TOK, 10)
  out = make_sample_fn(graphdef, SamplingParams(max_new_tokens=12, temperature=0.0,
                                                stop_ids=(TOK.eos_id,)), TOK.pad_id)(
      params, batch.tokens, batch.valid, jax.random.PRNGKey(0))
  assert int(out.steps) == 1
  np.testing.assert_array_equal(out.tokens[:, 0], TOK.eos_id)
  np.testing.assert_array_equal(out.lengths, 1)


def _assert_same_samples(got, ref):
  """Same tokens, masks and early exit; log-probs equal to float rounding."""
  np.testing.assert_array_equal(got.tokens, ref.tokens)
  np.testing.assert_array_equal(got.mask, ref.mask)
  assert int(got.steps) == int(ref.steps)
  np.testing.assert_allclose(got.logps_model, ref.logps_model, atol=1e-5)
  np.testing.assert_allclose(got.logps, ref.logps, atol=1e-5)


def test_growing_cache_gives_the_same_samples(split):
  """Decoding in segments over a cache that grows (attention over ~the filled prefix only)
  returns exactly what the fully preallocated cache does: tokens, masks, log-probs, early
  exit. 12 new tokens in segments of 5 (uneven last segment), with a stop token."""
  graphdef, params = split
  batch = prompt_batch(PROMPTS, TOK, 10)
  free = _sample(split, SamplingParams(max_new_tokens=12, temperature=0.0))[1]
  stop = int(free.tokens[1, 6])  # row 1 stops inside the second segment
  for base in (SamplingParams(max_new_tokens=12, temperature=0.0, stop_ids=(stop,)),
               SamplingParams(max_new_tokens=12, temperature=0.8, top_k=30, n=2, stop_ids=(stop,))):
    grown = dataclasses.replace(base, grow_cache_every=5)
    assert grown.segment_ends() == (5, 10, 12)
    ref, got = (make_sample_fn(graphdef, sp, TOK.pad_id)(params, batch.tokens, batch.valid,
                                                         jax.random.PRNGKey(4)) for sp in (base, grown))
    _assert_same_samples(got, ref)
  with pytest.raises(ValueError, match="grow_cache_every=-1 must be >= 0"):
    SamplingParams(grow_cache_every=-1)


def test_shared_prompt_prefix_gives_the_same_samples_as_repeated_rows(split, model):
  """n rows attending to one shared copy of their prompt's keys/values (a separate softmax
  term) sample what n repeated cache rows do: tokens, masks, early exit, log-probs to float
  rounding; also across growing-cache segments and with a stop token."""
  graphdef, params = split
  batch = prompt_batch(PROMPTS, TOK, 10)
  for base in (SamplingParams(max_new_tokens=12, temperature=0.9, n=4, stop_ids=(TOK.eos_id, 50)),
               SamplingParams(max_new_tokens=12, temperature=0.7, top_p=0.9, n=3, grow_cache_every=5),
               SamplingParams(max_new_tokens=6, temperature=0.0, n=2)):
    repeated = dataclasses.replace(base, share_prefix=False)
    ref, got = (make_sample_fn(graphdef, sp, TOK.pad_id)(params, batch.tokens, batch.valid,
                                                         jax.random.PRNGKey(7)) for sp in (repeated, base))
    _assert_same_samples(got, ref)
  from rewardlab.models import SharedPrefix, init_cache
  cache = init_cache(CFG, 3, 4)
  prefix = SharedPrefix(tuple(k[:2] for k in cache.k),
                        tuple(v[:2] for v in cache.v), cache.valid[:2])
  with pytest.raises(ValueError, match="batch \\(3\\) that is a multiple of the prefix's \\(2\\)"):
    model.hidden_states(jnp.zeros((3, 1), jnp.int32), jnp.zeros((3, 1), jnp.int32), cache=cache, prefix=prefix)


def scanned_split(cfg, split):
  """The scanned twin of an unrolled (graphdef, params): same weights, stacked layers."""
  graphdef, params = nnx.split(Transformer(dataclasses.replace(cfg, scan_layers=True), rngs=nnx.Rngs(1)), nnx.Param)
  nnx.replace_by_pure_dict(params, stack_layers(nnx.to_pure_dict(split[1])))
  return graphdef, params


SCANNED_CASES = (SamplingParams(max_new_tokens=12, temperature=0.0, grow_cache_every=5),
                 SamplingParams(max_new_tokens=12, temperature=0.8, top_p=0.9, n=3, grow_cache_every=5,
                                stop_ids=(TOK.eos_id, 50)),
                 SamplingParams(max_new_tokens=8, temperature=1.0, top_k=20, n=2, share_prefix=False))


def assert_scanned_samples_equal_unrolled(cfg, split, prompts, cases=SCANNED_CASES):
  """The sampler over a scanned stack (stacked caches carried through the layer scan; a
  stacked shared prefix) gives the unrolled model's tokens, masks and log-probs."""
  scanned = scanned_split(cfg, split)
  batch = prompt_batch(prompts, TOK, 10)
  for sp in cases:
    ref, got = (make_sample_fn(graphdef, sp, TOK.pad_id)(params, batch.tokens, batch.valid, jax.random.PRNGKey(3))
                for graphdef, params in (split, scanned))
    _assert_same_samples(got, ref)


def test_scanned_layers_sample_the_same_tokens(split):
  assert_scanned_samples_equal_unrolled(CFG, split, PROMPTS)


def test_group_sampling_reuses_one_prefill_and_greedy_groups_agree(split):
  _, out = _sample(split, SamplingParams(max_new_tokens=5, n=4, temperature=0.0))
  toks = np.asarray(out.tokens).reshape(3, 4, 5)
  assert (toks == toks[:, :1]).all()  # greedy: all n copies of a prompt agree
  _, out = _sample(split, SamplingParams(max_new_tokens=5, n=4))
  assert out.tokens.shape == (12, 5)


def test_text_api_and_bad_input(split):
  graphdef, params = split
  s = Sampler(graphdef, CFG.max_seq_len, TOK, max_prompt_len=10)
  texts = s.generate(params, ["1+1="], max_new_tokens=4, temperature=0.0)
  assert isinstance(texts, list) and len(texts) == 1 and isinstance(texts[0], str)
  groups = s.generate(params, ["1+1=", "2+2="], max_new_tokens=3, n=2)
  assert len(groups) == 2 and all(len(g) == 2 for g in groups)
  with pytest.raises(ValueError, match="empty prompt list"):
    s.generate(params, [], max_new_tokens=3)
  with pytest.raises(ValueError, match="over max_prompt_len=10"):
    s.generate(params, ["1234567890+1="], max_new_tokens=3)
  with pytest.raises(ValueError, match="n=0 must be >= 1"):
    s.generate(params, ["1="], n=0)
  with pytest.raises(ValueError, match=r"top_p=1.5 must be in \(0, 1\]"):
    s.generate(params, ["1="], top_p=1.5)
  with pytest.raises(ValueError, match=r"top_p=0.0 must be in \(0, 1\]"):
    s.generate(params, ["1="], top_p=0.0)
  with pytest.raises(ValueError, match="over the model's max_seq_len=40"):
    s.generate(params, ["1="], max_new_tokens=31)


def test_prefill_and_decode_step_functions_replay_the_sampler(split):
  """`make_decode_fns` (what `rewardlab plan` compiles) are the sampler's own pieces: its
  prefill, then decode_step applied over the same growing cache, gives exactly the tokens,
  masks and log-probs of `make_sample_fn`, with a shared group prefix and without one."""
  from rewardlab.models import grow_cache
  from rewardlab.sampling import cache_offset, make_decode_fns
  graphdef, params = split
  model = nnx.merge(graphdef, params)
  batch = prompt_batch(PROMPTS, TOK, 10)
  for sp in (SamplingParams(max_new_tokens=7, temperature=0.9, top_k=40, n=3, grow_cache_every=3),
             SamplingParams(max_new_tokens=5, temperature=0.0, share_prefix=False, n=2)):
    rng = jax.random.PRNGKey(3)
    ref = make_sample_fn(graphdef, sp, TOK.pad_id)(params, batch.tokens, batch.valid, rng)
    prefill, decode_step = make_decode_fns(graphdef, sp, TOK.pad_id)
    carry, prefix = prefill(params, batch.tokens, batch.valid)
    constants = (model.decode_unembedding(), model.rope_table(10 + sp.max_new_tokens))
    offset = cache_offset(sp, 10)
    for end in sp.segment_ends():
      carry = carry._replace(cache=grow_cache(carry.cache, offset + end))
      while int(carry.i) < end:
        carry = decode_step(params, carry, prefix, *constants, rng)
    for field in ("tokens", "mask", "logps", "logps_model"):
      np.testing.assert_allclose(np.asarray(carry.out[field]), np.asarray(getattr(ref, field)), atol=1e-6,
                                 err_msg=field)
