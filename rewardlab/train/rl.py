"""The online RL loop: rollout (KV-cache sampler, G samples per prompt) -> rewards ->
advantages -> mu epochs of minibatch updates against the stored `logp_old`, with
reference log-probs from a frozen copy of the starting policy.

Each iteration's prompts and sampling key are functions of (seed, iteration), so a
resumed run repeats exactly what the uninterrupted run would have done.
"""
from __future__ import annotations

import os
import time
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rewardlab.data import Problem, make_task, prompt_batch, sft_batch
from rewardlab.eval import pass_at_k
from rewardlab.eval.plots import plot_curves
from rewardlab.objectives import policy_gradient as pg
from rewardlab.ops import chunked_token_logprobs, masked_mean
from rewardlab.rewards import combine, exact_answer
from rewardlab.rewards.judge import judge_from_config
from rewardlab.rewards.self_rewards import (auc, borda_weights, laser_loss, laser_score, last_token_logprob,
                                            majority_vote_reward, select_by_vote, self_certainty)
from rewardlab.sampling import SamplingParams, make_sample_fn
from rewardlab.sharding import batch_sharding, make_mesh, shard_batch
from rewardlab.train import sft
from rewardlab.train.checkpoint import Checkpointer
from rewardlab.train.loop import write_config
from rewardlab.train.metrics import MetricWriter, Progress, read_metrics
from rewardlab.train.optim import make_optimizer
from rewardlab.train.policy import Policy, build_policy
from rewardlab.train.state import create_train_state, shardings_of
from rewardlab.train.step import make_update_step


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
  judge_tokens/judge_valid/judge_loss_mask: [B, Tj]  SPARK: each rollout as a pointwise
                               judge example labelled by the verifier ([B, 1] zeros otherwise)
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
  judge_tokens: np.ndarray
  judge_valid: np.ndarray
  judge_loss_mask: np.ndarray


class ActorCritic(nnx.Module):
  """PPO's trainable pair: the policy transformer and a per-token value head on its trunk."""

  def __init__(self, policy: nnx.Module, value_head: nnx.Module):
    self.policy = policy
    self.value_head = value_head


def completion_hidden(model, tokens, valid, n_completion: int):
  """Hidden states at the positions that predict the last n_completion tokens: [B, N, D]."""
  hidden, _ = model.hidden_states(tokens[:, :-1], valid=valid[:, :-1])
  return hidden[:, -n_completion:]


def completion_logprobs(model, tokens, valid, n_completion: int, chunk: int = 4096,
                        with_entropy: bool = False):
  """Log-probs (and entropies) of the last n_completion tokens: [B, P+N] -> [B, N]."""
  hidden = completion_hidden(model, tokens, valid, n_completion)
  return chunked_token_logprobs(hidden, model.unembedding(), tokens[:, -n_completion:], chunk,
                                with_entropy=with_entropy)


def objective_settings(objective_cfg) -> dict:
  """Method defaults from PG_OBJECTIVES, overridden by any field set in config.objective."""
  settings = dict(pg.PG_OBJECTIVES[objective_cfg.name])
  settings.update({k: v for k, v in objective_cfg.items() if k != "name" and v is not None})
  return settings


def make_rl_loss_fn(settings: dict, chunk: int):
  loss_kwargs = {k: settings[k] for k in pg.LOSS_KEYS if k in settings}
  ppo = settings["advantage"] == "gae"

  laser = settings.get("laser_coef", 0.0) > 0
  spark = settings.get("spark_coef", 0.0) > 0

  def loss_fn(model, batch: Rollout, rng):
    del rng
    n = batch.completion_mask.shape[1]
    policy = model.policy if ppo else model
    if laser:   # one more position: the hidden state after the last real token
      full, _ = policy.hidden_states(batch.tokens, valid=batch.valid)
      hidden = full[:, -n - 1:-1]
    else:
      hidden = completion_hidden(policy, batch.tokens, batch.valid, n)
    logp_new, entropy = chunked_token_logprobs(hidden, policy.unembedding(),
                                               batch.tokens[:, -n:], chunk, with_entropy=True)
    if ppo:
      values = model.value_head(hidden)
      loss, metrics = pg.ppo_loss(logp_new, batch.logp_old, batch.logp_ref, batch.completion_mask, batch.advantages,
                                  values, batch.old_values, batch.returns, clip_low=settings["clip_low"],
                                  clip_high=settings["clip_high"], value_clip=settings["value_clip"],
                                  value_coef=settings["value_coef"], aggregation=settings["aggregation"],
                                  max_len=n, entropy=entropy)
    else:
      loss, metrics = pg.policy_gradient_loss(logp_new, batch.logp_old, batch.logp_ref, batch.completion_mask,
                                              batch.advantages, max_len=n, entropy=entropy, **loss_kwargs)
    if laser:   # LaSeR: last-token self-reward regressed onto the verifier outcome
      score = laser_score(last_token_logprob(policy, full, batch.valid, settings["laser_token"]),
                          settings["laser_beta"], settings["laser_c"])
      aux = laser_loss(score, batch.verifier_reward)
      right = batch.verifier_reward > 0.5
      mean_where = lambda m: jnp.sum(score * m) / jnp.maximum(jnp.sum(m), 1.0)  # noqa: E731
      loss = loss + settings["laser_coef"] * aux
      metrics = dict(metrics, laser_loss=aux, laser_score_correct=mean_where(right),
                     laser_score_wrong=mean_where(~right))
    if spark:   # SPARK: the same model learns to judge this batch's rollouts (verifier labels)
      judge_logp = sft.sequence_logprobs(policy, batch.judge_tokens, batch.judge_valid, chunk)
      jmask = batch.judge_loss_mask[:, 1:]
      nll = -jnp.sum(judge_logp * jmask) / jnp.maximum(jnp.sum(jmask), 1.0)
      loss = loss + settings["spark_coef"] * nll
      metrics = dict(metrics, spark_judge_nll=nll)
    return loss, metrics
  return loss_fn


def ppo_targets(settings, rewards, logp_old, logp_ref, values, mask):
  """Per-token reward (-kl_coef * k1 KL + sequence reward at the last token) -> GAE.
  Returns (whitened advantages [B, N], returns [B, N])."""
  mask = mask.astype(bool)
  last = (jnp.cumsum(mask, -1) == jnp.sum(mask, -1, keepdims=True)) & mask
  token_r = (-settings["kl_in_reward"] * (logp_old - logp_ref) * mask
             + jnp.where(last, jnp.asarray(rewards)[:, None], 0.0))
  adv, returns = pg.gae_advantages(token_r, values, mask, settings["gamma"], settings["lam"])
  mean = masked_mean(adv, mask)
  std = jnp.sqrt(masked_mean(jnp.square(adv - mean), mask))
  return jnp.where(mask, (adv - mean) / (std + 1e-6), 0.0), returns


def compute_advantages(settings, rewards, group_size, logp_old, logp_ref, mask):
  """-> [B, N] per-token advantages for the configured estimator (not PPO's GAE)."""
  kind = settings["advantage"]
  if kind == "reinforce_pp":
    return pg.reinforce_pp_advantages(jnp.asarray(rewards), logp_old, logp_ref, mask,
                                      beta=settings.get("kl_in_reward", 0.01), kl=settings.get("kl", "k1"))
  adv = pg.ADVANTAGES[kind](jnp.asarray(rewards), group_size)
  return jnp.broadcast_to(adv[:, None], mask.shape) * mask


def reward_model_rewards(config, mesh) -> dict:
  """{"reward_model": fn} when config.rl.reward_model_path names a trained RM, else {}."""
  path = config.rl.get("reward_model_path", "")
  if not path:
    return {}
  from rewardlab.rewards.reward_model import RewardModelScorer, rm_reward
  return {"reward_model": rm_reward(RewardModelScorer(path, mesh), config.rl.group_size)}


class RolloutWorker:
  """Samples groups, scores them, and builds `Rollout`s (host side + jitted pieces)."""

  def __init__(self, config, policy: Policy, mesh, settings, value_graphdef=None):
    rc = config.rl
    self.config, self.policy, self.mesh, self.settings = config, policy, mesh, settings
    self.task = make_task(config.data.task, **config.data.task_kwargs)
    self.judge = None
    if config.get("spark") and config.spark.coef > 0:
      self.judge = judge_from_config(config, policy, mesh)
    self.extra_rewards = dict(reward_model_rewards(config, mesh),
                              majority_vote=lambda c, p, l: majority_vote_reward(c, rc.group_size))
    # self-certainty comes from each round's sampler outputs: its reward_fn is built per round
    self.reward_fn = (None if "self_certainty" in rc.rewards
                      else combine(dict(rc.rewards), extra=self.extra_rewards))
    sp = SamplingParams(max_new_tokens=rc.max_new_tokens, n=rc.group_size,
                        temperature=rc.temperature, top_p=rc.top_p,
                        stop_ids=(policy.tokenizer.eos_id,))
    self.sample = make_sample_fn(policy.graphdef, sp, policy.tokenizer.pad_id, mesh)
    chunk = config.train.logprob_chunk

    @jax.jit
    def ref_logps(ref_params, tokens, valid):
      return completion_logprobs(nnx.merge(policy.graphdef, ref_params), tokens, valid,
                                 rc.max_new_tokens, chunk)
    self.ref_logps = ref_logps

    @jax.jit
    def values_of(value_params, policy_params, tokens, valid):
      model = nnx.merge(policy.graphdef, policy_params)
      hidden = completion_hidden(model, tokens, valid, rc.max_new_tokens)
      return nnx.merge(value_graphdef, value_params)(hidden)
    self.values_of = values_of

  def _sample_round(self, params, iteration: int, round_: int):
    rc, tok = self.config.rl, self.policy.tokenizer
    rng = np.random.default_rng([self.config.seed, iteration, round_])
    problems = self.task.sample_many(rng, rc.num_prompts)
    pb = prompt_batch([p.prompt for p in problems], tok, self.config.eval.max_prompt_len)
    key = jax.random.fold_in(jax.random.fold_in(jax.random.PRNGKey(self.config.seed), iteration), round_)
    out = self.sample(params, *shard_batch((pb.tokens, pb.valid), self.mesh), key)
    out = jax.device_get(out)
    texts = tok.decode_batch(out.tokens)
    expanded = [p for p in problems for _ in range(rc.group_size)]
    reward_fn = self.reward_fn
    if "self_certainty" in rc.rewards:   # from the sampler's outputs: no extra forward pass
      sc = np.asarray(self_certainty(out.vocab_mean_logp, out.mask, self.policy.model_cfg.vocab_size))
      reward_fn = combine(dict(rc.rewards), extra=dict(self.extra_rewards, self_certainty=lambda *_: sc))
    rewards = reward_fn(texts, expanded, out.lengths)
    components = dict(reward_fn.components)
    if "exact_answer" not in components:   # accuracy is tracked even when it is not rewarded
      components["exact_answer"] = exact_answer(texts, expanded)
    if self.settings.get("overlong_buffer"):
      rewards = rewards + np.asarray(pg.overlong_penalty(out.lengths, rc.max_new_tokens,
                                                         self.settings["overlong_buffer"],
                                                         self.settings.get("overlong_penalty", 1.0)))
    pg.check_rewards(rewards, rc.group_size, need_groups=self.settings["advantage"] != "reinforce_pp")
    return pb, out, rewards, components

  def spark_examples(self, pb, out, verifier):
    """SPARK's pointwise judge examples: (question, this rollout's answer) -> yes/no by the
    verifier, as an SFT batch [B, Tj]; [B, 1] zeros when SPARK is off."""
    rows = out.tokens.shape[0]
    if self.judge is None:
      z = np.zeros((rows, 1), np.int32)
      return z, z.astype(bool), z.astype(bool)
    tok, g = self.policy.tokenizer, self.config.rl.group_size
    prompts = [tok.decode([t for t, v in zip(row, ok) if v and t != tok.bos_id])
               for row, ok in zip(np.repeat(pb.tokens, g, 0), np.repeat(pb.valid, g, 0))]
    answers = tok.decode_batch(out.tokens)
    right = np.asarray(verifier) > 0.5
    examples = self.judge.examples([Problem(p, "") for p in prompts], answers, right)
    if self.config.spark.get("pairwise"):
      examples = pairwise_judge_examples(examples, prompts, answers, right, g)
    seq = self.config.judge.max_len + 2
    fits = np.array([len(tok.encode(e.prompt, bos=True)) + len(tok.encode(e.answer, eos=True)) <= seq
                     for e in examples])
    # an answer too long for the judge prompt becomes an empty (fully masked) example
    b = sft_batch([e if ok else Problem("", e.answer) for e, ok in zip(examples, fits)], tok, seq)
    return b.tokens, b.valid, b.loss_mask & fits[:, None]

  def collect(self, params, ref_params, iteration: int, value_params=None) -> tuple[Rollout, dict]:
    rc = self.config.rl
    g = rc.group_size
    pb, out, rewards, comps = self._sample_round(params, iteration, 0)
    verifier = comps["exact_answer"]
    stats = {"reward": float(rewards.mean()),
             "accuracy": float(comps.get("exact_answer", rewards).mean()),
             "response_length": float(out.lengths.mean()),
             **{f"reward/{k}": float(v.mean()) for k, v in comps.items()}}
    keep_groups = None
    if self.settings.get("dynamic_sampling"):
      # DAPO: keep groups whose rewards differ; refill from further rounds
      pieces = [(pb, out, rewards, verifier)]
      keep = [np.asarray(pg.nonuniform_groups(jnp.asarray(rewards), g))]
      for r in range(1, rc.max_refill_rounds + 1):
        if sum(k.sum() for k in keep) >= rc.num_prompts:
          break
        pb_r, out_r, rew_r, comps_r = self._sample_round(params, iteration, r)
        pieces.append((pb_r, out_r, rew_r, comps_r["exact_answer"]))
        keep.append(np.asarray(pg.nonuniform_groups(jnp.asarray(rew_r), g)))
      pb, out, rewards, verifier, keep_groups = _select_groups(pieces, keep, rc.num_prompts, g)
      stats["groups_kept_frac"] = float(keep_groups.mean())
    tokens = np.concatenate([np.repeat(pb.tokens, g, 0), out.tokens], 1)
    valid = np.concatenate([np.repeat(pb.valid, g, 0), out.mask], 1)
    logp_ref = self.ref_logps(ref_params, *shard_batch((tokens, valid), self.mesh))
    logp_old = jnp.asarray(out.logps_model)
    mask = jnp.asarray(out.mask)
    old_values = returns = jnp.zeros(mask.shape, jnp.float32)
    if self.settings["advantage"] == "gae":
      old_values = self.values_of(value_params, params, *shard_batch((tokens, valid), self.mesh))
      adv, returns = ppo_targets(self.settings, rewards, logp_old, logp_ref, old_values, mask)
    else:
      adv = compute_advantages(self.settings, rewards, g, logp_old, logp_ref, mask)
    if keep_groups is not None:  # groups that could not be refilled carry no gradient
      adv = adv * jnp.repeat(jnp.asarray(keep_groups), g)[:, None]
    stats["zero_adv_groups"] = float(pg.zero_grad_group_fraction(adv.sum(-1), g))
    judge = self.spark_examples(pb, out, verifier)
    rollout = Rollout(tokens, valid, out.mask, np.asarray(out.logps_model), np.asarray(logp_ref),
                      np.asarray(adv), np.asarray(old_values), np.asarray(returns),
                      np.asarray(verifier, np.float32), *judge)
    return rollout, stats


PAIRWISE_TEMPLATE = "{question}A:{a}\nB:{b}\nbetter?"


def pairwise_judge_examples(examples, prompts, answers, right, g: int):
  """SPARK pairwise: in each group with a correct and a wrong rollout, the group's first row
  becomes "which is better?" over (first correct, first wrong) -> "A" / "B"; the correct
  answer's side alternates with the group index so position carries no signal."""
  examples = list(examples)
  for start in range(0, len(prompts), g):
    ok = right[start:start + g]
    if ok.any() and not ok.all():
      good = answers[start + int(np.argmax(ok))].split("\n", 1)[0]
      bad = answers[start + int(np.argmin(ok))].split("\n", 1)[0]
      a, b, label = (good, bad, "A") if (start // g) % 2 == 0 else (bad, good, "B")
      examples[start] = Problem(PAIRWISE_TEMPLATE.format(question=prompts[start], a=a, b=b), label)
  return examples


def laser_settings(config, worker: "RolloutWorker", ref_params) -> dict:
  """LaSeR's constants: the token z, beta, and c = the reference's mean log pi_ref(z | x, y)
  over one batch of its own samples (deterministic, so a resumed run gets the same c)."""
  lc, tok = config.laser, worker.policy.tokenizer
  ids = tok.encode(lc.token)
  if len(ids) != 1:
    raise ValueError(f"config.laser.token={lc.token!r} is {len(ids)} tokens; LaSeR needs one")
  pb, out, _, _ = worker._sample_round(ref_params, 10 ** 6, 0)
  g = config.rl.group_size
  tokens = np.concatenate([np.repeat(pb.tokens, g, 0), out.tokens], 1)
  valid = np.concatenate([np.repeat(pb.valid, g, 0), out.mask], 1)

  @jax.jit
  def logp_z(params, tokens, valid):
    model = nnx.merge(worker.policy.graphdef, params)
    hidden, _ = model.hidden_states(tokens, valid=valid)
    return last_token_logprob(model, hidden, valid, ids[0])

  c = float(np.mean(jax.device_get(logp_z(ref_params, *shard_batch((tokens, valid), worker.mesh)))))
  return {"laser_coef": lc.coef, "laser_beta": lc.beta, "laser_token": ids[0], "laser_c": c}


def _select_groups(pieces, keep, num_prompts, g):
  """First num_prompts kept groups across rounds; pad with dropped groups (flag False)."""
  pbs, outs, rewards, verifiers = zip(*pieces)
  flags = np.concatenate(keep)
  order = np.concatenate([np.flatnonzero(flags), np.flatnonzero(~flags)])[:num_prompts]
  rows = (order[:, None] * g + np.arange(g)).reshape(-1)   # the groups' sample rows
  pb = type(pbs[0])(*(np.concatenate(field)[order] for field in zip(*pbs)))
  per_row = {f: np.concatenate([getattr(o, f) for o in outs])[rows] for f in outs[0]._fields if f != "steps"}
  out = type(outs[0])(**per_row, steps=outs[0].steps)
  return pb, out, np.concatenate(rewards)[rows], np.concatenate(verifiers)[rows], flags[order]


def make_rl_evaluator(config, policy: Policy, mesh, policy_part=lambda p: p, settings=None):
  """Greedy held-out accuracy plus unbiased pass@k from n samples per problem.
  `policy_part(state.params)` picks the policy's trainable params (PPO also trains a value head)."""
  ec, tok = config.eval, policy.tokenizer
  task = make_task(config.data.task, **config.data.task_kwargs)
  greedy = sft.make_accuracy_evaluator(config, policy, task, mesh)
  problems = task.sample_many(np.random.default_rng(ec.seed + 1), ec.passk_problems, split="eval")
  sp = SamplingParams(max_new_tokens=config.rl.max_new_tokens, n=ec.pass_n, temperature=1.0,
                      stop_ids=(tok.eos_id,))
  sample = make_sample_fn(policy.graphdef, sp, tok.pad_id, mesh)
  pb = prompt_batch([p.prompt for p in problems], tok, ec.max_prompt_len)

  laser = settings is not None and settings.get("laser_coef", 0.0) > 0
  judge = None
  if settings is not None and settings.get("spark_coef", 0.0) > 0:
    judge = judge_from_config(config, policy, mesh)
  if laser:
    @jax.jit
    def laser_scores(params, tokens, valid):
      model = nnx.merge(policy.graphdef, params)
      hidden, _ = model.hidden_states(tokens, valid=valid)
      return laser_score(last_token_logprob(model, hidden, valid, settings["laser_token"]),
                         settings["laser_beta"], settings["laser_c"])

  def evaluate(state):
    result = greedy(state.replace(params=policy_part(state.params), frozen=state.frozen["base"]))
    params = policy.full_params(policy_part(state.params), state.frozen["base"])
    out = jax.device_get(sample(params, *shard_batch((pb.tokens, pb.valid), mesh), jax.random.PRNGKey(ec.seed)))
    texts = tok.decode_batch(out.tokens)
    n = ec.pass_n
    right = np.array([task.verify(t, problems[i // n].answer) for i, t in enumerate(texts)])
    correct = right.reshape(len(problems), n).sum(-1)
    for k in ec.pass_k:
      result[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(c), k) for c in correct]))
    # test-time selection over the n samples: plain majority, Borda by self-certainty
    answers = [p.answer for p in problems]
    sel_acc = lambda picks: float(np.mean([a == b for a, b in zip(picks, answers)]))  # noqa: E731
    sc = np.asarray(self_certainty(out.vocab_mean_logp, out.mask, policy.model_cfg.vocab_size))
    result[f"majority@{n}"] = sel_acc(select_by_vote(texts, n))
    result[f"sc_borda@{n}"] = sel_acc(select_by_vote(texts, n, borda_weights(sc, n)))
    result["sc_auc"] = auc(sc, right)
    if judge is not None:   # SPARK: how well the policy judges its own samples
      j = judge.score(params, [problems[i // n].prompt for i in range(len(texts))], texts)
      result["judge_auc"] = auc(j, right)
      result["judge_accuracy"] = float(np.mean((j > 0.5) == right))
    if laser:
      full = shard_batch((np.concatenate([np.repeat(pb.tokens, n, 0), out.tokens], 1),
                          np.concatenate([np.repeat(pb.valid, n, 0), out.mask], 1)), mesh)
      s = np.asarray(jax.device_get(laser_scores(params, *full)))
      result["laser_auc"] = auc(s, right)
      result[f"laser_weighted_majority@{n}"] = sel_acc(select_by_vote(texts, n, np.clip(s, 1e-3, None)))
      result[f"laser_best_of_{n}"] = float(np.mean(right.reshape(-1, n)[np.arange(len(problems)),
                                                                       s.reshape(-1, n).argmax(1)]))
    return result
  return evaluate


def _actor_critic(config, policy: Policy, mesh):
  """(ActorCritic graphdef, {"policy": trainable, "value_head": sharded head params},
  value-head graphdef)."""
  from rewardlab.models import Transformer
  from rewardlab.models.heads import ValueHead
  from rewardlab.sharding import named, param_specs
  cfg = policy.model_cfg
  make_head = lambda: ValueHead(cfg.d_model, rngs=nnx.Rngs(config.seed + 2))
  abstract = nnx.eval_shape(lambda: ActorCritic(Transformer(cfg, rngs=nnx.Rngs(0)), make_head()))
  graphdef = nnx.split(abstract, nnx.Param)[0]
  head_def, head_state = nnx.split(nnx.eval_shape(make_head), nnx.Param)
  shardings = named(mesh, param_specs(head_state, mesh))
  head = jax.jit(lambda: nnx.to_pure_dict(nnx.state(make_head(), nnx.Param)), out_shardings=shardings)()
  return graphdef, {"policy": policy.params, "value_head": head}, head_def


def run(config, workdir: str | None = None, stop_at_step: int | None = None) -> dict:
  """stop_at_step: stop after that many RL iterations (simulated interruption)."""
  workdir = workdir or config.workdir
  rc, tc = config.rl, config.train
  mesh = make_mesh(dict(config.mesh))
  settings = objective_settings(config.objective)
  warm = sft.warm_start(config, workdir)
  policy = build_policy(config, mesh)
  if warm is not None:
    policy.params = warm[0]
  ref = jax.tree.map(jnp.copy, policy.full_params())  # frozen reference = starting policy (own buffers)
  ppo = settings["advantage"] == "gae"
  graphdef, trainable, merge, value_graphdef = policy.graphdef, policy.params, None, None
  if policy.merge is not None:
    merge = lambda p, f: policy.merge(p, f["base"])
  if ppo:  # train {"policy", "value_head"} together as one ActorCritic module
    graphdef, trainable, value_graphdef = _actor_critic(config, policy, mesh)
    base_merge = merge
    merge = lambda p, f: {"policy": p["policy"] if base_merge is None else base_merge(p["policy"], f),
                          "value_head": p["value_head"]}
  batch_rows = rc.num_prompts * rc.group_size
  updates_per_iter = rc.epochs * (batch_rows // rc.minibatch_size)
  optimizer, schedule = make_optimizer(config.optim, tc.steps * updates_per_iter)
  state = create_train_state(trainable, optimizer, mesh, config.seed,
                             frozen={"ref": ref, "base": policy.frozen})
  worker = RolloutWorker(config, policy, mesh, settings, value_graphdef)
  if config.get("laser") and config.laser.coef > 0:
    settings.update(laser_settings(config, worker, ref))
  if config.get("spark") and config.spark.coef > 0:
    settings["spark_coef"] = config.spark.coef
  policy_part = (lambda p: p["policy"]) if ppo else (lambda p: p)
  evaluate = make_rl_evaluator(config, policy, mesh, policy_part, settings)

  write_config(config, workdir)
  writer = MetricWriter(workdir, tensorboard=tc.tensorboard)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), tc.checkpoint_every, tc.keep_checkpoints)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    writer.truncate_after(int(state.step) // updates_per_iter)
  start = int(state.step) // updates_per_iter
  step_fn = make_update_step(graphdef, make_rl_loss_fn(settings, tc.logprob_chunk), optimizer,
                             schedule, shardings_of(state), batch_sharding(mesh), merge=merge)
  progress = Progress(tc.steps, initial=start, enabled=tc.progress, desc="rl")
  evals, last, t0 = [], {}, time.perf_counter()

  def run_eval(it):
    result = dict(evaluate(state))
    examples = result.pop("examples", [])
    evals.append(writer.write(it, result, split="eval"))
    progress.write(f"iter {it} eval " + " ".join(f"{k}={v:.3g}" for k, v in result.items()))
    for line in examples[:2]:
      progress.write("   " + line)

  if start == 0 and tc.eval_every > 0:
    run_eval(0)
  for it in range(start + 1, tc.steps + 1):
    t_iter = time.perf_counter()
    params = policy.full_params(policy_part(state.params), state.frozen["base"])
    rollout, stats = worker.collect(params, state.frozen["ref"], it - 1,
                                    state.params["value_head"] if ppo else None)
    perm_rng = np.random.default_rng([config.seed, it, 7])
    per_update = []
    for _ in range(rc.epochs):
      order = perm_rng.permutation(batch_rows)
      for s in range(0, batch_rows, rc.minibatch_size):
        idx = order[s:s + rc.minibatch_size]
        mb = Rollout(*(x[idx] for x in rollout))
        state, m = step_fn(state, shard_batch(mb, mesh))
        per_update.append(m)
    per_update = jax.device_get(per_update)
    metrics = {k: float(np.mean([m[k] for m in per_update])) for k in per_update[0]}
    metrics.update(stats, iter_s=time.perf_counter() - t_iter)
    last = writer.write(it, metrics)
    progress.update(1, int(rollout.completion_mask.sum()), reward=stats["reward"],
                    kl=metrics["kl_ref"])
    if tc.eval_every > 0 and (it % tc.eval_every == 0 or it == tc.steps):
      run_eval(it)
    if ckpt.every > 0 and (it % ckpt.every == 0 or it == tc.steps):
      ckpt.maybe_save(it, state, force=True)
    if stop_at_step is not None and it >= stop_at_step:
      break
  progress.close()
  ckpt.close()
  writer.close()
  records = read_metrics(workdir)
  plot_curves(records, os.path.join(workdir, "curves.png"),
              (("train", "reward"), ("eval", "accuracy"), ("train", "kl_ref"), ("train", "response_length")))
  return {"state": state, "train": last, "evals": evals, "wall_s": time.perf_counter() - t0,
          "records": records, "sft_warmup_accuracy": None if warm is None else warm[1]}
