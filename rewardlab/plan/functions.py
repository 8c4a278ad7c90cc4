"""The jitted functions a config runs, built on abstract inputs for a mesh.

Each pipeline's planner returns `Job`s: the same jitted function the pipeline runs (its
loss through `train.step.make_update_step`, the reference pass, the sampler's prefill and
one decode step), and its arguments as `jax.ShapeDtypeStruct`s carrying `NamedSharding`s.
No parameter is allocated and no checkpoint is read: shapes come from the model config (a
preset or a HF folder's config.json) through `nnx.eval_shape`.
"""
from __future__ import annotations

import dataclasses
import inspect
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from rewardlab.data.batching import SequenceBatch
from rewardlab.data.preference import PairBatch, RMBatch
from rewardlab.models import ModelConfig, Transformer
from rewardlab.models.lora import apply_lora, init_lora, lora_specs
from rewardlab.models.reward_model import RewardModel
from rewardlab.models.transformer import grow_cache
from rewardlab.objectives.preference import REFERENCE_FREE
from rewardlab.pipelines import preference, reward_model, rl, sft
from rewardlab.rollout.collect import Rollout, make_reference_logprobs, make_values_fn
from rewardlab.sampling import SamplingParams, cache_offset, make_decode_fns
from rewardlab.sharding import BATCH_AXES, LOGICAL_RULES, batch_sharding, logical_to_spec, named, param_specs, \
    replicated
from rewardlab.train import step as train_step
from rewardlab.train.optim import make_optimizer
from rewardlab.train.policy import PolicySpec, resolve_model_config
from rewardlab.train.state import TrainState, shardings_of


class Job(NamedTuple):
  """One function to compile and measure.

  fn: the jitted function; args: its abstract arguments; model_flops: useful FLOPs per call
  (forward 2 x matmul params x tokens + attention; x3 for an update), over all devices;
  resident: per-chip bytes of other buffers alive while it runs (e.g. the train state
  during sampling); repeat: how many calls make one unit (micro-batches emulated by calling
  a smaller step `repeat` times); extra_bytes: per-chip bytes the compiled step does not
  show (an emulated gradient accumulator); tokens: tokens produced per call (decode).
  """
  name: str
  what: str
  fn: Callable
  args: tuple
  model_flops: float
  resident: float = 0.0
  repeat: int = 1
  extra_bytes: float = 0.0
  tokens: int = 0
  notes: tuple = ()


def sds(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), jnp.dtype(dtype), sharding=sharding)


def per_chip_bytes(tree) -> float:
  """Bytes one device holds of a tree of sharded arrays / ShapeDtypeStructs (the largest
  shard, as the compiler allocates it)."""
  total = 0.0
  for x in jax.tree.leaves(tree):
    sharding = getattr(x, "sharding", None)
    shape = sharding.shard_shape(x.shape) if sharding is not None else x.shape
    total += math.prod(shape) * jnp.dtype(x.dtype).itemsize
  return total


def abstract_params(make_model: Callable[[], nnx.Module], mesh: Mesh, rules=LOGICAL_RULES):
  """(graphdef, params as ShapeDtypeStructs with the shardings `train.state.init_params`
  gives the real ones)."""
  graphdef, state = nnx.split(nnx.eval_shape(make_model), nnx.Param)
  shardings = named(mesh, param_specs(state, mesh, rules))
  return graphdef, jax.tree.map(lambda x, s: sds(x.shape, x.dtype, s), nnx.to_pure_dict(state), shardings)


def abstract_adapters(lora, base, mesh: Mesh, seed: int):
  """LoRA adapters for `base` as `train.policy.init_adapters` makes them, abstractly."""
  rng = jax.ShapeDtypeStruct((2,), jnp.uint32)
  adapters = jax.eval_shape(lambda p, r: init_lora(p, lora.targets, lora.rank, r), base, rng)
  specs = lora_specs(jax.tree.map(lambda x: x.sharding.spec, base), adapters)
  return jax.tree.map(lambda x, s: sds(x.shape, x.dtype, NamedSharding(mesh, s)), adapters, specs,
                      is_leaf=lambda x: isinstance(x, P))


def abstract_state(params, optimizer, mesh: Mesh, frozen=None) -> TrainState:
  """The TrainState `train.state.create_train_state` builds, abstractly: optimizer leaves
  shaped like their parameter (Adam moments) take its sharding, the rest are replicated."""
  rep = replicated(mesh)
  treedef = jax.tree.structure(params)
  opt = jax.eval_shape(optimizer.init, params)

  def place(sub):
    if isinstance(sub, jax.ShapeDtypeStruct):
      return sds(sub.shape, sub.dtype, rep)
    return jax.tree.map(lambda x, p: sds(x.shape, x.dtype, p.sharding if x.shape == p.shape else rep), sub, params)
  opt = jax.tree.map(place, opt, is_leaf=lambda x: isinstance(x, jax.ShapeDtypeStruct)
                     or (not isinstance(x, tuple) and jax.tree.structure(x) == treedef))
  return TrainState(step=sds((), jnp.int32, rep), params=params, opt_state=opt,
                    rng=sds((2,), jnp.uint32, rep), frozen=frozen)


def batch_leaf(mesh: Mesh, shape, dtype):
  return sds(shape, dtype, batch_sharding(mesh))


def n_batch_shards(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


# --- model FLOPs (the MFU numerator) ----------------------------------------------------

def forward_flops(cfg: ModelConfig, rows: int, seq: int, scored: int, lm_head: bool = True) -> float:
  """Forward FLOPs of `rows` sequences of `seq` tokens with the vocabulary projection at
  `scored` positions per row (all of them for SFT, the completion for RL, 1 for prefill)."""
  unembed = 2.0 * cfg.vocab_size * cfg.d_model
  body = cfg.flops_per_token(seq) - unembed
  return rows * (seq * body + (scored * unembed if lm_head else 0.0))


def decode_flops(cfg: ModelConfig, rows: int, slots: int) -> float:
  """One decode step: each row's new token attends to `slots` cache slots (QK and AV:
  4 h Dh slots per layer, which `flops_per_token` counts at seq = 2 x slots)."""
  return rows * cfg.flops_per_token(2 * slots)


# --- the update step ----------------------------------------------------------------------

def accumulation_supported() -> bool:
  """Whether `make_update_step` accumulates gradients over micro-batches itself."""
  return "micro_batches" in inspect.signature(train_step.make_update_step).parameters


def update_job(name: str, what: str, graphdef, loss_fn, optimizer, schedule, state, batch, mesh, merge,
               micro_batches: int, model_flops: float, notes=()) -> Job:
  """The pipeline's update step (`make_update_step`) on an abstract state and batch. With
  train.micro_batches > 1 the step accumulates over them when `make_update_step` supports
  it; until then a step on one micro-batch is compiled and counted micro_batches times, plus
  a gradient accumulator the size of the trainable params (in f32)."""
  notes = list(notes)
  kwargs, repeat, extra = {}, 1, 0.0
  if micro_batches > 1:
    rows = jax.tree.leaves(batch)[0].shape[0]
    if rows % (micro_batches * n_batch_shards(mesh)):
      raise ValueError(f"train.micro_batches={micro_batches}: the {rows} rows of an update do not split into "
                       f"micro-batches divisible by mesh data x fsdp = {n_batch_shards(mesh)}")
    if accumulation_supported():
      kwargs["micro_batches"] = micro_batches
    else:
      batch = jax.tree.map(lambda x: sds((x.shape[0] // micro_batches,) + x.shape[1:], x.dtype, x.sharding), batch)
      repeat = micro_batches
      extra = per_chip_bytes(jax.tree.map(lambda x: sds(x.shape, jnp.float32, x.sharding), state.params))
      notes.append(f"micro-batches emulated: make_update_step does not accumulate yet, so one "
                   f"{rows // micro_batches}-row step is compiled, its FLOPs/bytes x{micro_batches}, "
                   f"+{extra / 2 ** 30:.2f} GiB f32 gradient accumulator")
  step = train_step.make_update_step(graphdef, loss_fn, optimizer, schedule, shardings_of(state),
                                     batch_sharding(mesh), merge=merge, **kwargs)
  return Job(name, what, step, (state, batch), model_flops, repeat=repeat, extra_bytes=extra, notes=tuple(notes))


# --- policies ----------------------------------------------------------------------------

@dataclasses.dataclass
class AbstractPolicy:
  """`train.policy.Policy`'s fields, abstract: trainable params (adapters under LoRA),
  frozen base weights (LoRA) and the merge that joins them."""
  model_cfg: ModelConfig
  graphdef: Any
  params: Any
  frozen: Any
  merge: Callable | None
  tokenizer: Any

  def full(self):
    """The full parameters' shapes and shardings (LoRA: the base's)."""
    return self.params if self.merge is None else self.frozen


def model_config(config) -> ModelConfig:
  return resolve_model_config(PolicySpec.from_config(config))


def abstract_policy(config, mesh: Mesh) -> AbstractPolicy:
  spec = PolicySpec.from_config(config)
  cfg = resolve_model_config(spec)
  graphdef, params = abstract_params(lambda: Transformer(cfg, rngs=nnx.Rngs(spec.seed)), mesh)
  tokenizer = spec.load_tokenizer()
  if spec.lora.rank <= 0:
    return AbstractPolicy(cfg, graphdef, params, None, None, tokenizer)
  adapters = abstract_adapters(spec.lora, params, mesh, spec.seed)
  scale = spec.lora.scale
  return AbstractPolicy(cfg, graphdef, adapters, params, lambda a, base: apply_lora(base, a, scale), tokenizer)


def _optimizer(config, updates: int = 1):
  return make_optimizer(config.optim, max(config.train.steps * updates, 1))


def _micro(config) -> int:
  return int(config.train.get("micro_batches", 1) or 1)


def _seq_batch(mesh, rows: int, seq: int) -> SequenceBatch:
  return SequenceBatch(batch_leaf(mesh, (rows, seq), jnp.int32), batch_leaf(mesh, (rows, seq), jnp.bool_),
                       batch_leaf(mesh, (rows, seq), jnp.bool_))


def pair_batch_spec(mesh, pairs: int, seq: int, token_level: bool = False) -> PairBatch:
  """PairBatch of `pairs` pairs ([2B, T] rows), as `data.preference.pair_batch` makes it."""
  n, w = 2 * pairs, seq - 1 if token_level else 1
  leaf = lambda shape, dt: batch_leaf(mesh, shape, dt)  # noqa: E731
  return PairBatch(leaf((n, seq), jnp.int32), leaf((n, seq), jnp.bool_), leaf((n, seq), jnp.bool_),
                   leaf((n,), jnp.float32), leaf((n,), jnp.float32), leaf((n,), jnp.float32),
                   leaf((n, w), jnp.float32), leaf((n, w), jnp.float32))


def rm_batch_spec(mesh, pairs: int, seq: int, num_attributes: int, max_steps: int) -> RMBatch:
  """RMBatch of `pairs` pairs, as `data.preference.rm_batch` makes it."""
  n = 2 * pairs
  leaf = lambda shape, dt: batch_leaf(mesh, shape, dt)  # noqa: E731
  return RMBatch(leaf((n, seq), jnp.int32), leaf((n, seq), jnp.bool_), leaf((n,), jnp.int32),
                 leaf((pairs,), jnp.float32), leaf((pairs,), jnp.bool_),
                 leaf((n, num_attributes), jnp.float32), leaf((n, num_attributes), jnp.bool_),
                 leaf((n, max_steps), jnp.float32), leaf((n, max_steps), jnp.bool_))


def rollout_spec(mesh, rows: int, prompt_len: int, new_tokens: int) -> Rollout:
  """A Rollout minibatch of `rows` sequences (no auxiliary examples)."""
  t, n = prompt_len + new_tokens, new_tokens
  leaf = lambda shape, dt: batch_leaf(mesh, shape, dt)  # noqa: E731
  f32 = lambda: leaf((rows, n), jnp.float32)  # noqa: E731
  return Rollout(leaf((rows, t), jnp.int32), leaf((rows, t), jnp.bool_), leaf((rows, n), jnp.bool_),
                 f32(), f32(), f32(), f32(), f32(), leaf((rows,), jnp.float32), {})


# --- the sampler ---------------------------------------------------------------------------

def sampler_jobs(graphdef, cfg: ModelConfig, params, sp: SamplingParams, pad_id: int, prompts: int,
                 prompt_len: int, mesh: Mesh, resident: float, what: str) -> list[Job]:
  """The sampler's prefill (`prompts` x `prompt_len`) and one decode step at its largest
  cache (the last segment: every new token's slot allocated)."""
  prefill, decode_step = make_decode_fns(graphdef, sp, pad_id, mesh)
  tokens = batch_leaf(mesh, (prompts, prompt_len), jnp.int32)
  valid = batch_leaf(mesh, (prompts, prompt_len), jnp.bool_)
  rows = prompts * sp.n
  carry, prefix = jax.eval_shape(prefill, params, tokens, valid)
  slots = cache_offset(sp, prompt_len) + sp.max_new_tokens
  carry = carry._replace(cache=jax.eval_shape(lambda c: grow_cache(c, slots), carry.cache))
  n_shards = n_batch_shards(mesh)

  def place(x):   # per-row buffers split over the data axes, as the sampler constrains them
    rowwise = x.ndim >= 1 and x.shape[0] in (prompts, rows) and x.shape[0] % n_shards == 0
    return sds(x.shape, x.dtype, batch_sharding(mesh) if rowwise else replicated(mesh))
  carry, prefix = jax.tree.map(place, carry), jax.tree.map(place, prefix)
  emb = "embed" if cfg.tie_embeddings else "lm_head"
  w = params[emb]
  unembedding = sds((cfg.d_model, cfg.vocab_size), w.dtype,
                    NamedSharding(mesh, logical_to_spec(("embed", "vocab"), (cfg.d_model, cfg.vocab_size), mesh)))
  n_kinds = 2 if any(cfg.layer_is_local) else 1
  table = sds((n_kinds, prompt_len + sp.max_new_tokens, cfg.head_dim // 2), jnp.float32, replicated(mesh))
  rng = sds((2,), jnp.uint32, replicated(mesh))
  share = " (prompt KV shared by the group)" if sp.n > 1 and sp.share_prefix else ""
  return [
      Job("sampler_prefill", f"{what}: prefill {prompts} prompts x {prompt_len} tokens", prefill,
          (params, tokens, valid), forward_flops(cfg, prompts, prompt_len, 1), resident),
      Job("sampler_decode_step", f"{what}: one decode step, {rows} rows, {slots}-slot cache{share}",
          decode_step, (params, carry, prefix, unembedding, (table, table), rng),
          decode_flops(cfg, rows, (prompt_len if share else 0) + slots), resident, tokens=rows),
  ]


# --- planners, one per pipeline -----------------------------------------------------------

def plan_sft(config, mesh: Mesh) -> list[Job]:
  pol = abstract_policy(config, mesh)
  opt, schedule = _optimizer(config)
  state = abstract_state(pol.params, opt, mesh, frozen=pol.frozen)
  b, t = config.data.batch_size, config.data.seq_len
  loss = sft.make_sft_loss_fn(config.objective, config.train.logprob_chunk)
  flops = 3 * forward_flops(pol.model_cfg, b, t - 1, t - 1)
  return [update_job("sft_update", f"SFT update, {b} x {t} tokens", pol.graphdef, loss, opt, schedule, state,
                     _seq_batch(mesh, b, t), mesh, pol.merge, _micro(config), flops)]


def _preference_state(config, mesh, pol: AbstractPolicy, opt, cream: bool = False):
  frozen = {"base": pol.frozen}
  if cream:
    frozen["previous"] = pol.full()
  merge = None if pol.merge is None else (lambda p, f: pol.merge(p, f["base"]))
  return abstract_state(pol.params, opt, mesh, frozen=frozen), merge


def _reference_job(config, mesh, pol: AbstractPolicy, pairs: int, seq: int, resident: float) -> Job:
  token_level = config.objective.name in preference.TOKEN_LEVEL
  score = preference.make_reference_scorer(pol.graphdef, config.train.logprob_chunk, per_token=token_level)
  rows = 2 * pairs
  leaf = lambda dt: batch_leaf(mesh, (rows, seq), dt)  # noqa: E731
  return Job("reference_logprobs", f"frozen reference over {pairs} pairs ({rows} x {seq} tokens)", score,
             (pol.full(), leaf(jnp.int32), leaf(jnp.bool_), leaf(jnp.bool_)),
             forward_flops(pol.model_cfg, rows, seq - 1, seq - 1), resident)


def plan_dpo(config, mesh: Mesh) -> list[Job]:
  pol = abstract_policy(config, mesh)
  opt, schedule = _optimizer(config)
  state, merge = _preference_state(config, mesh, pol, opt)
  b, t = config.data.batch_size, config.data.seq_len
  name = config.objective.name
  loss = preference.make_preference_loss_fn(config.objective, config.train.logprob_chunk)
  flops = 3 * forward_flops(pol.model_cfg, 2 * b, t - 1, t - 1)
  jobs = [update_job("dpo_update", f"{name} update, {b} pairs x {t} tokens (cached reference log-probs)",
                     pol.graphdef, loss, opt, schedule, state,
                     pair_batch_spec(mesh, b, t, name in preference.TOKEN_LEVEL), mesh, merge, _micro(config), flops)]
  if name not in REFERENCE_FREE:   # before training: the policy's params and the reference copy are alive
    jobs.append(_reference_job(config, mesh, pol, b, t, per_chip_bytes((pol.params, pol.frozen))))
  return jobs


def plan_online_dpo(config, mesh: Mesh) -> list[Job]:
  from rewardlab.pipelines.online_preference import RoundSettings
  rs = RoundSettings.from_config(config)
  pol = abstract_policy(config, mesh)
  opt, schedule = _optimizer(config)
  state, merge = _preference_state(config, mesh, pol, opt, cream=rs.cream)
  b, t = rs.batch_size, rs.seq_len
  loss = preference.make_preference_loss_fn(config.objective, rs.logprob_chunk, per_pair_smoothing=rs.cream)
  flops = 3 * forward_flops(pol.model_cfg, 2 * b, t - 1, t - 1)
  live = per_chip_bytes(state) + per_chip_bytes(pol.full())   # train state + the initial policy
  jobs = [update_job("dpo_update", f"{config.objective.name} update, {b} on-policy pairs x {t} tokens",
                     pol.graphdef, loss, opt, schedule, state, pair_batch_spec(mesh, b, t), mesh, merge,
                     _micro(config), flops)]
  if not rs.reference_free:   # the reference pass reads the initial policy: the rest is the train state
    jobs.append(_reference_job(config, mesh, pol, b, t, per_chip_bytes(state)))
  oc, tok = config.online, pol.tokenizer
  sp = SamplingParams(oc.max_new_tokens, n=rs.samples_per_prompt, temperature=oc.temperature,
                      stop_ids=(tok.eos_id,))
  sampler_live = live - (per_chip_bytes(pol.params) if pol.merge is None else 0.0)
  jobs += sampler_jobs(pol.graphdef, pol.model_cfg, pol.full(), sp, tok.pad_id, rs.prompts_per_round,
                       rs.max_prompt_len, mesh, sampler_live, "round sampling")
  return jobs


def plan_rm(config, mesh: Mesh) -> list[Job]:
  spec = PolicySpec.from_config(config)
  tokenizer = spec.load_tokenizer()
  hc = reward_model.head_config(config.rm, tokenizer)
  cfg = resolve_model_config(spec)
  graphdef, params = abstract_params(lambda: RewardModel(cfg, hc, rngs=nnx.Rngs(spec.seed)), mesh)
  adapters = (abstract_adapters(spec.lora, params["trunks"], mesh, config.seed) if spec.lora.rank > 0 else None)
  trainable, frozen, merge = reward_model.rm_lora(spec.lora, params, mesh, config.seed, adapters=adapters)
  opt, schedule = _optimizer(config)
  state = abstract_state(trainable, opt, mesh, frozen=frozen)
  b, t = config.data.batch_size, config.data.seq_len
  flops = 3 * hc.num_trunks * forward_flops(cfg, 2 * b, t, 0, lm_head=False)
  return [update_job("rm_update", f"reward model ({hc.type} head) update, {b} pairs x {t} tokens", graphdef,
                     reward_model.make_rm_loss_fn(hc, config.rm), opt, schedule, state,
                     rm_batch_spec(mesh, b, t, hc.num_attributes, hc.max_steps), mesh, merge, _micro(config),
                     flops)]


def plan_rl(config, mesh: Mesh) -> list[Job]:
  rc, tc = config.rl, config.train
  settings = rl.objective_settings(config.objective)
  ppo = settings["advantage"] == "gae"
  pol = abstract_policy(config, mesh)
  cfg = pol.model_cfg
  ref = pol.full()
  graphdef, trainable, value_graphdef = pol.graphdef, pol.params, None
  if ppo:
    make_head, graphdef, value_graphdef = rl.actor_critic_defs(cfg, config.seed)
    _, head = abstract_params(make_head, mesh)
    trainable = {"policy": pol.params, "value_head": head}
  merge = rl.learner_merge(pol.merge, ppo)
  updates = rc.epochs * (rc.num_prompts * rc.group_size // rc.minibatch_size)
  opt, schedule = _optimizer(config, updates)
  state = abstract_state(trainable, opt, mesh, frozen={"ref": ref, "base": pol.frozen})
  p, n, rows = config.eval.max_prompt_len, rc.max_new_tokens, rc.minibatch_size
  notes = [f"auxiliary '{a}' (coef > 0) is not in the planned loss" for a in rl.AUXILIARIES
           if config.get(a) is not None and config.get(a).get("coef", 0) > 0]
  loss = rl.make_rl_loss_fn(settings, tc.logprob_chunk, {})
  flops = 3 * forward_flops(cfg, rows, p + n - 1, n)
  method = config.objective.name
  jobs = [update_job("rl_update", f"{method} update, {rows} rows x {p}+{n} tokens (+ frozen reference"
                     + (", value head)" if ppo else ")"), graphdef, loss, opt, schedule, state,
                     rollout_spec(mesh, rows, p, n), mesh, merge, _micro(config), flops, notes)]
  state_bytes = per_chip_bytes(state)
  total = rc.num_prompts * rc.group_size
  leaf = lambda dt: batch_leaf(mesh, (total, p + n), dt)  # noqa: E731
  ref_fn = make_reference_logprobs(pol.graphdef, n, tc.logprob_chunk)
  jobs.append(Job("reference_logprobs", f"frozen reference over the rollout, {total} rows x {p}+{n} tokens",
                  ref_fn, (ref, leaf(jnp.int32), leaf(jnp.bool_)), forward_flops(cfg, total, p + n - 1, n),
                  state_bytes - per_chip_bytes(ref)))
  # the sampler runs on the policy's (merged) params while the whole train state stays alive
  sampler_live = state_bytes - (per_chip_bytes(pol.params) if pol.merge is None else 0.0)
  if ppo:
    values = make_values_fn(pol.graphdef, value_graphdef, n)
    jobs.append(Job("ppo_values", f"value head over the rollout, {total} rows", values,
                    (trainable["value_head"], pol.full(), leaf(jnp.int32), leaf(jnp.bool_)),
                    forward_flops(cfg, total, p + n - 1, 0, lm_head=False), sampler_live))
  tok = pol.tokenizer
  sp = SamplingParams(max_new_tokens=n, n=rc.group_size, temperature=rc.temperature, top_p=rc.top_p,
                      stop_ids=(tok.eos_id,))
  jobs += sampler_jobs(pol.graphdef, cfg, pol.full(), sp, tok.pad_id, rc.num_prompts, p, mesh, sampler_live,
                       f"rollout {rc.num_prompts} prompts x {rc.group_size}")
  return jobs


PLANNERS: dict[str, Callable[[Any, Mesh], list[Job]]] = {
    "sft": plan_sft, "dpo": plan_dpo, "online_dpo": plan_online_dpo, "rm": plan_rm, "rl": plan_rl}


def plan_jobs(config, mesh: Mesh) -> list[Job]:
  if config.pipeline not in PLANNERS:
    raise ValueError(f"config.pipeline={config.pipeline!r}: no planner; allowed: {sorted(PLANNERS)}")
  return PLANNERS[config.pipeline](config, mesh)
