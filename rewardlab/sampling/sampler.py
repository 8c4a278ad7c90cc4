"""KV-cache sampler: one prefill, then jitted `lax.while_loop` decoding over a KV cache with
static shapes: one loop per `grow_cache_every` segment, the cache padded between them.

Prompts are **left-padded** to `max_prompt_len` (`rewardlab.data.prompt_batch`): padding
occupies the first cache slots and is masked out, and RoPE positions count real tokens
only, so a prompt's logits do not depend on how much padding it got. `n` completions per
prompt reuse one prefill: its keys/values are kept once per prompt and shared by the n
decoding rows (`SharedPrefix`), or, with share_prefix=False, repeated n times.

Returned per token: the completion ids, a mask covering generated tokens up to and
including the stop token, log-probs under the sampling distribution (after temperature /
top-k / top-p) and under the unmodified model (temperature 1, full vocabulary), which is
what RL objectives use as `logp_old`.
"""
from __future__ import annotations

import dataclasses
import functools
from typing import NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rewardlab.data.batching import PromptBatch, prompt_batch
from rewardlab.distributed import to_host
from rewardlab.models.transformer import (CACHE_BATCH_AXIS, KVCache, SharedPrefix, grow_cache, init_cache,
                                          positions_from_valid)
from rewardlab.sharding import BATCH_AXES, shard_batch


@dataclasses.dataclass(frozen=True)
class SamplingParams:
  """Static decoding settings (each distinct value compiles once).

  temperature 0 means greedy (argmax). top_k 0 and top_p 1 disable truncation.
  grow_cache_every k > 0 starts the KV cache with room for k new tokens and grows it by k
  between decode segments, so attention reads about the filled prefix instead of all
  max_new_tokens slots (decode attention cost follows the current length; each segment
  compiles its own loop, so generations up to k tokens are one loop). 0 allocates every
  slot up front. Tokens do not depend on it.
  share_prefix (n > 1): the n rows of a prompt attend to one copy of its prefilled keys and
  values (`SharedPrefix`) instead of n repeated copies: n times less prompt KV memory and
  reads per step. Same distribution; logits agree to float rounding, not bit for bit.
  """
  max_new_tokens: int = 16
  n: int = 1
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  stop_ids: tuple[int, ...] = ()
  grow_cache_every: int = 64
  share_prefix: bool = True

  def __post_init__(self):
    if self.n < 1:
      raise ValueError(f"sampling: n={self.n} must be >= 1")
    if self.max_new_tokens < 1:
      raise ValueError(f"sampling: max_new_tokens={self.max_new_tokens} must be >= 1")
    if not 0.0 < self.top_p <= 1.0:
      raise ValueError(f"sampling: top_p={self.top_p} must be in (0, 1]")
    if self.temperature < 0:
      raise ValueError(f"sampling: temperature={self.temperature} must be >= 0")
    if self.top_k < 0:
      raise ValueError(f"sampling: top_k={self.top_k} must be >= 0 (0 = off)")
    if self.grow_cache_every < 0:
      raise ValueError(f"sampling: grow_cache_every={self.grow_cache_every} must be >= 0 (0 = off)")

  def segment_ends(self) -> tuple[int, ...]:
    """New-token counts at which the decode loop stops to grow the cache (the last is
    max_new_tokens)."""
    k = self.grow_cache_every or self.max_new_tokens
    return tuple(range(k, self.max_new_tokens, k)) + (self.max_new_tokens,)


class SampleOutput(NamedTuple):
  """Completions for B prompts x n samples, rows ordered prompt-major ([p0s0, p0s1, ...]).

  tokens:      [B*n, N] int32  generated ids (pad after the stop token)
  mask:        [B*n, N] bool   generated tokens up to and including the stop token
  logps:       [B*n, N] f32    log-prob under the sampling distribution
  logps_model: [B*n, N] f32    log-prob under the unmodified model (T=1, no truncation)
  lengths:     [B*n]    int32  number of generated tokens
  steps:       []       int32  decode steps actually run (early exit when all stopped)
  vocab_mean_logp: [B*n, N] f32  (1/V) sum_v log p_t(v) under the unmodified model: what
                               self-certainty needs, so it costs no extra forward pass
  """
  tokens: jax.Array
  mask: jax.Array
  logps: jax.Array
  logps_model: jax.Array
  lengths: jax.Array
  steps: jax.Array
  vocab_mean_logp: jax.Array


NUCLEUS_BISECTION_STEPS = 32   # logit-threshold resolution: (max - min logit) / 2**32


def nucleus_threshold(logits: jax.Array, top_p: float) -> jax.Array:
  """[..., V] logits -> [..., 1]: the largest logit threshold whose tokens (logit >=
  threshold) hold at least `top_p` of the softmax mass, i.e. the smallest set of top tokens
  reaching top_p (the top token always in it), up to f32 rounding of that mass: at V = 152k
  one boundary token in 16 rows differed from a sorted cumulative sum. Found by bisection
  on the threshold, a few dozen masked sums over V instead of a sort: 10-17x faster on CPU
  at V = 512 to 152k (`benchmarks/top_p.py`; a sort of a 152k vocabulary took 0.53 s per
  step at batch 16)."""
  probs = jax.nn.softmax(logits, axis=-1)
  lo = jnp.min(jnp.where(jnp.isfinite(logits), logits, jnp.inf), axis=-1, keepdims=True)
  hi = jnp.max(logits, axis=-1, keepdims=True)

  def halve(_, bounds):  # invariant: the mass at or above lo reaches top_p
    lo, hi = bounds
    mid = 0.5 * (lo + hi)
    reaches = jnp.sum(jnp.where(logits >= mid, probs, 0.0), axis=-1, keepdims=True) >= top_p
    return jnp.where(reaches, mid, lo), jnp.where(reaches, hi, mid)
  return jax.lax.fori_loop(0, NUCLEUS_BISECTION_STEPS, halve, (lo, hi))[0]


def process_logits(logits: jax.Array, sp: SamplingParams) -> jax.Array:
  """Temperature, then top-k, then top-p (nucleus) on [..., V] float32 logits.
  Disallowed tokens get -inf. Not used for greedy (temperature 0)."""
  logits = logits / sp.temperature
  if sp.top_k > 0 and sp.top_k < logits.shape[-1]:
    kth = jax.lax.top_k(logits, sp.top_k)[0][..., -1:]
    logits = jnp.where(logits >= kth, logits, -jnp.inf)
  if sp.top_p < 1.0:
    logits = jnp.where(logits >= nucleus_threshold(logits, sp.top_p), logits, -jnp.inf)
  return logits


def _pick(logits_row_logsm: jax.Array, tok: jax.Array) -> jax.Array:
  return jnp.take_along_axis(logits_row_logsm, tok[:, None], axis=-1)[:, 0]


class DecodeCarry(NamedTuple):
  """The decode loop's state between steps (rows B*n, prompt-major).

  i: [] int32 new tokens generated so far; cache: the rows' KVCache (after the prompt when
  it is not shared); logits: [B*n, V] f32 of the next token; pos: [B*n] int32 its RoPE
  position; done: [B*n] bool stopped; out: the SampleOutput buffers ({tokens, mask, logps,
  logps_model, vocab_mean_logp}: [B*n, N] each) filled at column i.
  """
  i: jax.Array
  cache: KVCache
  logits: jax.Array
  pos: jax.Array
  done: jax.Array
  out: dict


def _constrainer(batch_spec):
  """x -> x with its leading (row) dim sharded over the data axes (identity without a mesh);
  the cache version constrains every per-row buffer of a KVCache."""
  def constrain(x):
    return x if batch_spec is None else jax.lax.with_sharding_constraint(x, batch_spec)

  def constrain_kv(x):
    """A per-layer [B, ...] or stacked [L, B, ...] cache buffer, batch-sharded."""
    lead = (None,) * (x.ndim + CACHE_BATCH_AXIS)
    return jax.lax.with_sharding_constraint(x, NamedSharding(batch_spec.mesh, P(*lead, BATCH_AXES)))

  def constrain_cache(cache):
    return cache if batch_spec is None else cache._replace(
        k=jax.tree.map(constrain_kv, cache.k), v=jax.tree.map(constrain_kv, cache.v),
        valid=constrain(cache.valid))
  return constrain, constrain_cache


def _prefill(model, sp: SamplingParams, pad_id: int, tokens, valid, batch_spec=None):
  """Runs the prompts [B, P] once -> (DecodeCarry at step 0, SharedPrefix or None). The
  carry's cache has room for the first segment's new tokens (`grow_cache` makes room for
  the next)."""
  constrain, _ = _constrainer(batch_spec)
  cfg = model.cfg
  b, p = tokens.shape
  n, new = sp.n, sp.max_new_tokens
  first_end = sp.segment_ends()[0]
  bn = b * n
  share = n > 1 and sp.share_prefix
  cache = init_cache(cfg, b, p if share else p + first_end)
  hidden, cache = model.hidden_states(tokens, positions_from_valid(valid), valid, cache)
  last_logits = model.logits(hidden[:, -1:])[:, 0]                     # [B, V]
  next_pos = jnp.sum(valid.astype(jnp.int32), axis=-1)                 # [B]
  prefix = None
  if share:   # one prefill, kept once; the n rows decode into their own cache
    prefix = SharedPrefix(cache.k, cache.v, cache.valid)
    cache = init_cache(cfg, bn, first_end)
  elif n > 1:  # one prefill, its cache rows repeated prompt-major
    rep = lambda x: jnp.repeat(x, n, axis=x.ndim + CACHE_BATCH_AXIS)
    cache = cache._replace(k=jax.tree.map(rep, cache.k), v=jax.tree.map(rep, cache.v),
                           valid=jnp.repeat(cache.valid, n, axis=0))
  if n > 1:
    last_logits, next_pos = jnp.repeat(last_logits, n, axis=0), jnp.repeat(next_pos, n, axis=0)
  out = dict(tokens=jnp.full((bn, new), pad_id, jnp.int32), mask=jnp.zeros((bn, new), bool),
             logps=jnp.zeros((bn, new), jnp.float32),
             logps_model=jnp.zeros((bn, new), jnp.float32),
             vocab_mean_logp=jnp.zeros((bn, new), jnp.float32))
  carry = DecodeCarry(jnp.zeros((), jnp.int32), cache, constrain(last_logits), next_pos,
                      jnp.zeros((bn,), bool), out)
  return carry, prefix


def cache_offset(sp: SamplingParams, prompt_len: int) -> int:
  """Decode-cache slots before the first new token: the prompt's, unless it is shared."""
  return 0 if sp.n > 1 and sp.share_prefix else prompt_len


def _decode_step(model, sp: SamplingParams, pad_id: int, carry: DecodeCarry, prefix, unembedding,
                 rope_table, rng, batch_spec=None) -> DecodeCarry:
  """One new token for every row: pick it from carry.logits, record it, run it through the
  model into the cache -> the next carry. `unembedding` / `rope_table`: the loop constants
  (`Transformer.decode_unembedding()`, `rope_table(P + N)`), computed once per sample."""
  constrain, _ = _constrainer(batch_spec)
  i, cache, logits, pos, done, out = carry
  bn = logits.shape[0]
  stop_ids = jnp.asarray(sp.stop_ids if sp.stop_ids else (-1,), jnp.int32)
  model_logsm = jax.nn.log_softmax(logits, axis=-1)
  if sp.temperature == 0.0:
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    logp = jnp.zeros((bn,), jnp.float32)
  else:
    processed = process_logits(logits, sp)
    tok = jax.random.categorical(jax.random.fold_in(rng, i), processed).astype(jnp.int32)
    logp = _pick(jax.nn.log_softmax(processed, axis=-1), tok)
  live = ~done
  tok = jnp.where(live, tok, pad_id)
  write = lambda buf, x: jax.lax.dynamic_update_index_in_dim(buf, x, i, 1)
  out = dict(tokens=write(out["tokens"], tok), mask=write(out["mask"], live),
             logps=write(out["logps"], jnp.where(live, logp, 0.0)),
             logps_model=write(out["logps_model"], jnp.where(live, _pick(model_logsm, tok), 0.0)),
             vocab_mean_logp=write(out["vocab_mean_logp"],
                                   jnp.where(live, jnp.mean(model_logsm, axis=-1), 0.0)))
  done = done | jnp.any(tok[:, None] == stop_ids[None, :], axis=-1)
  hidden, cache = model.hidden_states(tok[:, None], pos[:, None], live[:, None], cache, rope_table,
                                      prefix)
  logits = constrain(model.logits(hidden, unembedding)[:, 0])
  return DecodeCarry(i + 1, cache, logits, pos + live.astype(jnp.int32), done, out)


def _sample_fn(graphdef, sp: SamplingParams, pad_id: int, batch_spec):
  """The pure sampling function (jitted by `make_sample_fn`): `_prefill`, then one
  `lax.while_loop` of `_decode_step`s per cache segment."""
  _, constrain_cache = _constrainer(batch_spec)

  def sample(params, tokens, valid, rng):
    model = nnx.merge(graphdef, params)
    p = tokens.shape[1]
    carry, prefix = _prefill(model, sp, pad_id, tokens, valid, batch_spec)
    unembedding = model.decode_unembedding()
    rope_table = model.rope_table(p + sp.max_new_tokens)   # every decode position is < p + new

    def cond(segment_end):
      def not_done(carry):
        return (carry.i < segment_end) & ~jnp.all(carry.done)
      return not_done

    def body(carry):
      return _decode_step(model, sp, pad_id, carry, prefix, unembedding, rope_table, rng, batch_spec)

    offset = cache_offset(sp, p)
    for end in sp.segment_ends():  # static: one while loop per cache size
      carry = carry._replace(cache=constrain_cache(grow_cache(carry.cache, offset + end)))
      carry = jax.lax.while_loop(cond(end), body, carry)
    out = carry.out
    return SampleOutput(out["tokens"], out["mask"], out["logps"], out["logps_model"],
                        jnp.sum(out["mask"], axis=-1).astype(jnp.int32), carry.i, out["vocab_mean_logp"])

  return sample


def make_decode_fns(graphdef, sp: SamplingParams, pad_id: int, mesh: Mesh | None = None):
  """The sampler's two programs as separately jitted functions, for planning and profiling
  (`rewardlab plan` compiles them for a target topology; `make_sample_fn` runs them fused):

    prefill(params, tokens [B, P], valid [B, P]) -> (DecodeCarry, SharedPrefix or None)
    decode_step(params, carry, prefix, unembedding [D, V], rope_table, rng) -> DecodeCarry

  `decode_step` is exactly one iteration of the sampler's loop; give it a carry whose cache
  has been grown (`grow_cache`) to the segment being decoded, e.g. the last one,
  cache_offset(sp, P) + max_new_tokens slots, for the largest step. The carry is donated,
  so the cache is updated in place as inside the loop (a compiled step's memory then counts
  one cache, not two).
  """
  batch_spec = None if mesh is None else NamedSharding(mesh, P(BATCH_AXES))

  def prefill(params, tokens, valid):
    return _prefill(nnx.merge(graphdef, params), sp, pad_id, tokens, valid, batch_spec)

  def decode_step(params, carry, prefix, unembedding, rope_table, rng):
    return _decode_step(nnx.merge(graphdef, params), sp, pad_id, carry, prefix, unembedding, rope_table,
                        rng, batch_spec)
  return jax.jit(prefill), jax.jit(decode_step, donate_argnums=(1,))


@functools.lru_cache(maxsize=64)
def make_sample_fn(graphdef, sp: SamplingParams, pad_id: int, mesh: Mesh | None = None):
  """jitted sample(params, tokens [B, P], valid [B, P], rng) -> SampleOutput.

  With a mesh, prompts, cache and outputs are sharded over the data axes; parameters are
  used in whatever sharding training gave them (no resharding copy per call).
  """
  batch_spec = None if mesh is None else NamedSharding(mesh, P(BATCH_AXES))
  fn = _sample_fn(graphdef, sp, pad_id, batch_spec)
  if mesh is None:
    return jax.jit(fn)
  return jax.jit(fn, in_shardings=(None, batch_spec, batch_spec, None),
                 out_shardings=SampleOutput(*([batch_spec] * 5), None, batch_spec))


class Sampler:
  """Text-level front end for notebooks and loops.

      sampler = Sampler(graphdef, model_cfg.max_seq_len, tokenizer, max_prompt_len=32)
      sampler.generate(params, ["12+7="], max_new_tokens=4, temperature=0)  # -> ["19"]
  """

  def __init__(self, graphdef, max_seq_len: int, tokenizer, max_prompt_len: int,
               mesh: Mesh | None = None):
    self.graphdef, self.tokenizer, self.mesh = graphdef, tokenizer, mesh
    self.max_prompt_len, self.max_seq_len = max_prompt_len, max_seq_len

  def params_for(self, **kwargs) -> SamplingParams:
    kwargs.setdefault("stop_ids", (self.tokenizer.eos_id,))
    sp = SamplingParams(**kwargs)
    if self.max_prompt_len + sp.max_new_tokens > self.max_seq_len:
      raise ValueError(f"sampling: max_prompt_len={self.max_prompt_len} + max_new_tokens="
                       f"{sp.max_new_tokens} is over the model's max_seq_len={self.max_seq_len}")
    return sp

  def sample(self, params, prompts: PromptBatch, rng: jax.Array, **kwargs) -> SampleOutput:
    sp = self.params_for(**kwargs)
    if prompts.tokens.shape[0] == 0:
      raise ValueError("sampling: empty prompt batch")
    if prompts.tokens.shape[1] > self.max_prompt_len:
      raise ValueError(f"sampling: prompts have length {prompts.tokens.shape[1]}, over "
                       f"max_prompt_len={self.max_prompt_len}")
    fn = make_sample_fn(self.graphdef, sp, self.tokenizer.pad_id, self.mesh)
    tokens, valid = prompts.tokens, prompts.valid
    if self.mesh is not None:
      tokens, valid = shard_batch((tokens, valid), self.mesh)
    return fn(params, tokens, valid, rng)

  def generate(self, params, prompts: Sequence[str], seed: int = 0, **kwargs):
    """list[str] -> list[str] (n == 1) or list[list[str]] (n > 1 samples per prompt)."""
    batch = prompt_batch(list(prompts), self.tokenizer, self.max_prompt_len)
    out = self.sample(params, batch, jax.random.PRNGKey(seed), **kwargs)
    texts = self.tokenizer.decode_batch(np.asarray(to_host(out.tokens)))
    n = kwargs.get("n", 1)
    return texts if n == 1 else [texts[i * n:(i + 1) * n] for i in range(len(prompts))]
