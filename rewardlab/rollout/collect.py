"""One RL iteration's data: sample groups of completions from the policy (KV-cache sampler),
score them, and pack them with reference log-probs and advantages as a `Rollout`.

An iteration's prompts and sampling key are functions of (seed, iteration, round), so a
resumed run repeats exactly what the uninterrupted run would have done.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rewardlab.data import PromptBatch, Task, prompt_batch
from rewardlab.distributed import to_host
from rewardlab.errors import NonFiniteError
from rewardlab.models.logprobs import completion_hidden, completion_logprobs
from rewardlab.objectives import policy_gradient as pg
from rewardlab.rewards import exact_answer
from rewardlab.rollout.rewards import Completions, RolloutReward, score
from rewardlab.sampling import SampleOutput, SamplingParams, make_sample_fn
from rewardlab.sharding import shard_batch


class Rollout(NamedTuple):
  """One batch of scored samples. B = num_prompts x group_size rows (prompt-major).

  tokens/valid:    [B, P + N]  left-padded prompt followed by the completion
  completion_mask: [B, N]      generated tokens up to and including EOS
  logp_old:        [B, N]      log-probs under the sampling policy (T = 1)
  logp_ref:        [B, N]      log-probs under the frozen reference
  advantages:      [B, N]      per-token advantages (sequence advantages broadcast)
  old_values:      [B, N]      PPO: value-head outputs at rollout time (zeros otherwise)
  returns:         [B, N]      PPO: GAE returns, the value targets (zeros otherwise)
  verifier_reward: [B]         the verifier's 0/1 outcome (LaSeR's target; logged otherwise)
  aux:             {name: per-row arrays [B, ...]} training data of auxiliary objectives
                   (e.g. SPARK's judge examples); empty without them
  """
  tokens: np.ndarray
  valid: np.ndarray
  completion_mask: np.ndarray
  logp_old: np.ndarray
  logp_ref: np.ndarray
  advantages: np.ndarray
  old_values: np.ndarray
  returns: np.ndarray
  verifier_reward: np.ndarray
  aux: Mapping[str, Any]


class Groups(NamedTuple):
  """One sampling round, scored: P prompts x G completions, rows prompt-major.

  prompts: the [P, Lp] prompt batch; samples: the sampler's [P*G, N] outputs (host);
  problems/texts: P*G; rewards: [P*G] weighted total; components: each reward's [P*G]
  (always with "exact_answer", the verifier outcome)
  """
  prompts: PromptBatch
  samples: SampleOutput
  problems: list
  texts: list
  rewards: np.ndarray
  components: dict

  def full_sequences(self) -> tuple[np.ndarray, np.ndarray]:
    """(tokens, valid) [P*G, Lp + N]: each prompt repeated for its group, then the completion."""
    g = len(self.problems) // self.prompts.tokens.shape[0]
    return (np.concatenate([np.repeat(self.prompts.tokens, g, 0), self.samples.tokens], 1),
            np.concatenate([np.repeat(self.prompts.valid, g, 0), self.samples.mask], 1))


@dataclasses.dataclass(frozen=True)
class RolloutSettings:
  """What one iteration samples (config.rl, eval.max_prompt_len and the objective's
  dynamic-sampling / overlong settings)."""
  seed: int
  num_prompts: int
  group_size: int
  max_prompt_len: int
  max_new_tokens: int
  temperature: float = 1.0
  top_p: float = 1.0
  dynamic_sampling: bool = False   # DAPO: keep groups whose rewards differ, refill from more rounds
  max_refill_rounds: int = 0
  overlong_buffer: int = 0         # DAPO: soft overlong punishment over the last `buffer` tokens
  overlong_penalty: float = 1.0
  need_groups: bool = True         # advantages normalise within groups (all but REINFORCE++)
  logprob_chunk: int = 4096


# (rewards [B], logp_old, logp_ref, mask [B, N], values [B, N] or None) -> (advantages, returns)
AdvantageFn = Callable[..., tuple[jax.Array, jax.Array]]
# Groups -> per-row arrays of one auxiliary objective (stored in Rollout.aux)
ExamplesFn = Callable[[Groups], Any]


def make_reference_logprobs(graphdef, n_completion: int, chunk: int):
  """jitted ref_logps(ref_params, tokens [B, P+N], valid) -> [B, N] log-probs of the last
  n_completion tokens under the frozen reference (the rollout's reference pass)."""
  @jax.jit
  def ref_logps(ref_params, tokens, valid):
    return completion_logprobs(nnx.merge(graphdef, ref_params), tokens, valid, n_completion, chunk)
  return ref_logps


def make_values_fn(graphdef, value_graphdef, n_completion: int):
  """jitted values_of(value_params, policy_params, tokens [B, P+N], valid) -> [B, N]: PPO's
  value head on the policy's hidden states at the completion positions."""
  @jax.jit
  def values_of(value_params, policy_params, tokens, valid):
    hidden = completion_hidden(nnx.merge(graphdef, policy_params), tokens, valid, n_completion)
    return nnx.merge(value_graphdef, value_params)(hidden)
  return values_of


class RolloutCollector:
  """Samples, scores and packs rollouts: the jitted sampler plus the reference (and PPO
  value) passes over the sampled sequences."""

  def __init__(self, rs: RolloutSettings, graphdef, tokenizer, task: Task, mesh,
               rewards: Mapping[str, RolloutReward], weights: Mapping[str, float], vocab_size: int,
               advantages: AdvantageFn, value_graphdef=None, examples: Mapping[str, ExamplesFn] = {}):
    self.rs, self.tokenizer, self.task, self.mesh = rs, tokenizer, task, mesh
    self.rewards, self.weights, self.vocab_size = rewards, dict(weights), vocab_size
    self.advantages, self.examples, self.ppo = advantages, dict(examples), value_graphdef is not None
    sp = SamplingParams(max_new_tokens=rs.max_new_tokens, n=rs.group_size, temperature=rs.temperature,
                        top_p=rs.top_p, stop_ids=(tokenizer.eos_id,))
    self.sample = make_sample_fn(graphdef, sp, tokenizer.pad_id, mesh)

    self.ref_logps = make_reference_logprobs(graphdef, rs.max_new_tokens, rs.logprob_chunk)
    self.values_of = make_values_fn(graphdef, value_graphdef, rs.max_new_tokens)

  def sample_round(self, params, iteration: int, round_: int = 0) -> Groups:
    """num_prompts fresh problems x group_size completions from `params`, scored."""
    rs, tok = self.rs, self.tokenizer
    rng = np.random.default_rng([rs.seed, iteration, round_])
    problems = self.task.sample_many(rng, rs.num_prompts)
    pb = prompt_batch([p.prompt for p in problems], tok, rs.max_prompt_len)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(rs.seed), iteration), round_)
    out = to_host(self.sample(params, *shard_batch((pb.tokens, pb.valid), self.mesh), key))
    texts = tok.decode_batch(out.tokens)
    expanded = [p for p in problems for _ in range(rs.group_size)]
    rewards, components = score(Completions(texts, expanded, out.lengths, out.mask, out.vocab_mean_logp),
                                self.rewards, self.weights)
    if "exact_answer" not in components:   # accuracy is tracked even when it is not rewarded
      components["exact_answer"] = exact_answer(texts, expanded)
    if rs.overlong_buffer:
      rewards = rewards + np.asarray(pg.overlong_penalty(out.lengths, rs.max_new_tokens, rs.overlong_buffer,
                                                         rs.overlong_penalty))
    check_finite(rewards, components)
    pg.check_rewards(rewards, rs.group_size, need_groups=rs.need_groups)
    return Groups(pb, out, expanded, texts, rewards, components)

  def dynamic_groups(self, params, iteration: int, first: Groups) -> tuple[Groups, np.ndarray]:
    """DAPO dynamic sampling: the first num_prompts groups whose rewards are not all equal,
    sampling up to max_refill_rounds more rounds; short of that, padded with uniform groups.
    Returns (groups, kept [num_prompts] bool: False for the padding)."""
    rs, g = self.rs, self.rs.group_size
    rounds = [first]
    keep = [np.asarray(pg.nonuniform_groups(jnp.asarray(first.rewards), g))]
    for r in range(1, rs.max_refill_rounds + 1):
      if sum(k.sum() for k in keep) >= rs.num_prompts:
        break
      rounds.append(self.sample_round(params, iteration, r))
      keep.append(np.asarray(pg.nonuniform_groups(jnp.asarray(rounds[-1].rewards), g)))
    flags = np.concatenate(keep)
    order = np.concatenate([np.flatnonzero(flags), np.flatnonzero(~flags)])[:rs.num_prompts]
    return select_groups(rounds, order, g), flags[order]

  def collect(self, params, ref_params, iteration: int, value_params=None) -> tuple[Rollout, dict]:
    """The iteration's Rollout and its host statistics (reward, accuracy, length, ...)."""
    rs, g = self.rs, self.rs.group_size
    groups = self.sample_round(params, iteration, 0)
    stats = {"reward": float(groups.rewards.mean()),
             "accuracy": float(groups.components["exact_answer"].mean()),
             "response_length": float(groups.samples.lengths.mean()),
             **{f"reward/{k}": float(v.mean()) for k, v in groups.components.items()}}
    kept = None
    if rs.dynamic_sampling:
      groups, kept = self.dynamic_groups(params, iteration, groups)
      stats["groups_kept_frac"] = float(kept.mean())
    tokens, valid = groups.full_sequences()
    out = groups.samples
    # host copies (gathered from all processes): the advantages are computed whole on each
    logp_ref = to_host(self.ref_logps(ref_params, *shard_batch((tokens, valid), self.mesh)))
    logp_old, mask = jnp.asarray(out.logps_model), jnp.asarray(out.mask)
    values = None
    if self.ppo:
      values = to_host(self.values_of(value_params, params, *shard_batch((tokens, valid), self.mesh)))
    adv, returns = self.advantages(jnp.asarray(groups.rewards), logp_old, logp_ref, mask, values)
    if kept is not None:  # groups that could not be refilled carry no gradient
      adv = adv * jnp.repeat(jnp.asarray(kept), g)[:, None]
    stats["zero_adv_groups"] = float(pg.zero_grad_group_fraction(adv.sum(-1), g))
    zeros = np.zeros(mask.shape, np.float32)
    rollout = Rollout(tokens, valid, out.mask, np.asarray(out.logps_model), np.asarray(logp_ref),
                      np.asarray(adv), zeros if values is None else np.asarray(values),
                      zeros if values is None else np.asarray(returns),
                      np.asarray(groups.components["exact_answer"], np.float32),
                      {name: make(groups) for name, make in self.examples.items()})
    return rollout, stats


def check_finite(rewards: np.ndarray, components: Mapping[str, np.ndarray]):
  """NonFiniteError naming each reward with a NaN / inf and its first rows."""
  if np.all(np.isfinite(rewards)):
    return
  bad = {name: np.flatnonzero(~np.isfinite(v))[:5].tolist() for name, v in components.items()
         if not np.all(np.isfinite(v))}
  rows = np.flatnonzero(~np.isfinite(rewards))[:5].tolist()
  raise NonFiniteError("reward is not finite at rows " + str(rows)
                       + "".join(f"; {name} at rows {r}" for name, r in bad.items()))


def select_groups(rounds: list[Groups], order: np.ndarray, g: int) -> Groups:
  """The groups at `order` (indices into the rounds' groups, concatenated) as one Groups."""
  rows = (order[:, None] * g + np.arange(g)).reshape(-1)   # the groups' sample rows
  pb = PromptBatch(*(np.concatenate(field)[order] for field in zip(*(r.prompts for r in rounds))))
  outs = [r.samples for r in rounds]
  per_row = {f: np.concatenate([getattr(o, f) for o in outs])[rows] for f in outs[0]._fields if f != "steps"}
  samples = type(outs[0])(**per_row, steps=outs[0].steps)
  take = lambda xs: [xs[i] for i in rows]  # noqa: E731
  components = {k: np.concatenate([r.components[k] for r in rounds])[rows] for k in rounds[0].components}
  return Groups(pb, samples, take(sum((r.problems for r in rounds), [])), take(sum((r.texts for r in rounds), [])),
                np.concatenate([r.rewards for r in rounds])[rows], components)
