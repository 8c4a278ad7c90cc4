"""Online RL with verifiable rewards (pipeline "rl"): GRPO, Dr.GRPO, DAPO, GSPO, RLOO,
REINFORCE++ and PPO.

Each loop step is one iteration: a rollout (`rewardlab.rollout`: num_prompts x group_size
samples, rewards, reference log-probs, advantages) split into minibatches for `epochs`
passes of updates against the stored `logp_old`. The reference is a frozen copy of the
starting policy (`state.frozen["ref"]`); PPO trains a value head beside the policy
(`state.params["value_head"]`). LaSeR and SPARK add auxiliary loss terms (`rl_aux`).
"""
from __future__ import annotations

import math

import jax
import numpy as np
from flax import nnx

from rewardlab.data import Task, make_task, prompt_batch
from rewardlab.distributed import is_main, to_host
from rewardlab.eval import pass_at_k
from rewardlab.models import Transformer
from rewardlab.models.heads import ActorCritic, ValueHead
from rewardlab.models.logprobs import completion_hidden
from rewardlab.objectives import policy_gradient as pg
from rewardlab.ops import aggregation_weight
from rewardlab.pipelines import sft
from rewardlab.pipelines.rl_aux import AUXILIARIES, Auxiliary, AuxSetup, build_auxiliaries
from rewardlab.rewards.self_rewards import auc, borda_weights, select_by_vote, self_certainty
from rewardlab.rollout import Groups, Rollout, RolloutCollector, RolloutSettings, RewardContext, build_rewards
from rewardlab.sampling import SamplingParams, make_sample_fn
from rewardlab.sharding import BATCH_AXES, named, param_specs, shard_batch
from rewardlab.pipelines.common import Built, runner
from rewardlab.train.loop import LoopSettings, Pipeline, StepInputs, begin_run
from rewardlab.train.optim import make_optimizer
from rewardlab.train.policy import Policy
from rewardlab.train.state import TrainState, create_train_state


def objective_settings(objective_cfg) -> dict:
  """Method defaults from PG_OBJECTIVES, overridden by any field set in config.objective."""
  settings = dict(pg.PG_OBJECTIVES[objective_cfg.name])
  settings.update({k: v for k, v in objective_cfg.items() if k != "name" and v is not None})
  return settings


def make_advantage_fn(settings: dict, group_size: int):
  """(rewards [B], logp_old, logp_ref, mask, values [B, N] or None) -> (advantages, returns)
  for the objective's estimator: PPO's GAE targets, else token_advantages (returns unused)."""
  if settings["advantage"] == "gae":
    return lambda r, old, ref, mask, values: pg.ppo_targets(
        r, old, ref, values, mask, kl_in_reward=settings["kl_in_reward"], gamma=settings["gamma"],
        lam=settings["lam"])
  kw = dict(kl_in_reward=settings.get("kl_in_reward", 0.01), kl=settings.get("kl", "k1"), **pg.advantage_kwargs(settings))
  return lambda r, old, ref, mask, values: (
      pg.token_advantages(settings["advantage"], r, group_size, old, ref, mask, **kw), None)


def make_rl_loss_fn(settings: dict, chunk: int, auxiliaries: dict[str, Auxiliary]):
  """loss_fn(model, Rollout minibatch, rng): the clipped surrogate (PPO: + value loss) on the
  policy's fresh log-probs, plus each auxiliary term. PPO's model is an ActorCritic."""
  loss_kwargs = {k: settings[k] for k in pg.LOSS_KEYS if k in settings}
  ppo = settings["advantage"] == "gae"
  full_hidden = any(a.needs_full_hidden for a in auxiliaries.values())

  def loss_fn(model, batch: Rollout, rng):
    del rng
    n = batch.completion_mask.shape[1]
    policy = model.policy if ppo else model
    if full_hidden:   # one more position: the hidden state after the last real token
      full, _ = policy.hidden_states(batch.tokens, valid=batch.valid)
      hidden = full[:, -n - 1:-1]
    else:
      full, hidden = None, completion_hidden(policy, batch.tokens, batch.valid, n)
    logp_new, entropy = policy.token_logprobs(hidden, batch.tokens[:, -n:], chunk, with_entropy=True)
    if ppo:
      loss, metrics = pg.ppo_loss(logp_new, batch.logp_old, batch.logp_ref, batch.completion_mask, batch.advantages,
                                  model.value_head(hidden), batch.old_values, batch.returns,
                                  clip_low=settings["clip_low"], clip_high=settings["clip_high"],
                                  value_clip=settings["value_clip"], value_coef=settings["value_coef"],
                                  aggregation=settings["aggregation"], max_len=n, entropy=entropy)
    else:
      loss, metrics = pg.policy_gradient_loss(logp_new, batch.logp_old, batch.logp_ref, batch.completion_mask,
                                              batch.advantages, max_len=n, entropy=entropy, **loss_kwargs)
    for aux in auxiliaries.values():
      aux_loss, aux_metrics = aux.loss(policy, full, batch)
      loss = loss + aux.coef * aux_loss
      metrics = dict(metrics, **aux_metrics)
    return loss, metrics
  return loss_fn


def actor_critic_defs(cfg, seed: int):
  """PPO's learner as modules: (make_head, ActorCritic graphdef, value-head graphdef)."""
  make_head = lambda: ValueHead(cfg.d_model, rngs=nnx.Rngs(seed + 2))  # noqa: E731
  abstract = nnx.eval_shape(lambda: ActorCritic(Transformer(cfg, rngs=nnx.Rngs(0)), make_head()))
  graphdef = nnx.split(abstract, nnx.Param)[0]
  head_def = nnx.split(nnx.eval_shape(make_head), nnx.Param)[0]
  return make_head, graphdef, head_def


def actor_critic(policy: Policy, seed: int, mesh):
  """PPO's learner: (ActorCritic graphdef, {"policy": trainable, "value_head": sharded head
  params}, value-head graphdef)."""
  make_head, graphdef, head_def = actor_critic_defs(policy.model_cfg, seed)
  head_state = nnx.split(nnx.eval_shape(make_head), nnx.Param)[1]
  shardings = named(mesh, param_specs(head_state, mesh))
  head = jax.jit(lambda: nnx.to_pure_dict(nnx.state(make_head(), nnx.Param)), out_shardings=shardings)()
  return graphdef, {"policy": policy.params, "value_head": head}, head_def


def learner_merge(policy_merge, ppo: bool):
  """merge(trainable, frozen) -> the learner's full params: the policy's own LoRA merge (over
  frozen["base"]) or none, and for PPO the {"policy", "value_head"} pair around it."""
  merge = None if policy_merge is None else (lambda p, f: policy_merge(p, f["base"]))
  if not ppo:
    return merge
  return lambda p, f: {"policy": p["policy"] if merge is None else merge(p["policy"], f),
                       "value_head": p["value_head"]}


def make_rl_evaluator(eval_cfg, max_new_tokens: int, policy: Policy, task: Task, mesh, policy_part,
                      auxiliaries: dict[str, Auxiliary]):
  """Greedy held-out accuracy, unbiased pass@k from n = eval.pass_n samples per problem,
  test-time selection over those samples (majority vote, self-certainty Borda), and each
  auxiliary's metrics. `policy_part(state.params)` picks the policy's trainable params."""
  ec, tok = eval_cfg, policy.tokenizer
  greedy = sft.make_accuracy_evaluator(ec, policy, task, mesh)
  problems = task.sample_many(np.random.default_rng(ec.seed + 1), ec.passk_problems, split="eval")
  n = ec.pass_n
  sample = make_sample_fn(policy.graphdef, SamplingParams(max_new_tokens=max_new_tokens, n=n, temperature=1.0,
                                                          stop_ids=(tok.eos_id,)), tok.pad_id, mesh)
  # a file-backed task may hold fewer eval problems than asked: pad the batch (repeating the
  # last problem) to a whole number of batch shards; only the real problems are scored
  shards = math.prod(mesh.shape[a] for a in BATCH_AXES)
  real_pb = prompt_batch([p.prompt for p in problems], tok, ec.max_prompt_len)
  pb = prompt_batch([p.prompt for p in problems + problems[-1:] * (-len(problems) % shards)], tok,
                    ec.max_prompt_len)
  expanded = [p for p in problems for _ in range(n)]
  answers = [p.answer for p in problems]
  selection_accuracy = lambda picks: float(np.mean([a == b for a, b in zip(picks, answers)]))  # noqa: E731

  def evaluate(state):
    result = greedy(state.replace(params=policy_part(state.params), frozen=state.frozen["base"]))
    params = policy.full_params(policy_part(state.params), state.frozen["base"])
    out = to_host(sample(params, *shard_batch((pb.tokens, pb.valid), mesh), jax.random.PRNGKey(ec.seed)))
    out = jax.tree.map(lambda x: x[:len(expanded)] if np.ndim(x) else x, out)
    texts = tok.decode_batch(out.tokens)
    right = np.array([task.verify(t, p.answer) for t, p in zip(texts, expanded)])
    correct = right.reshape(len(problems), n).sum(-1)
    for k in ec.pass_k:
      result[f"pass@{k}"] = float(np.mean([pass_at_k(n, int(c), k) for c in correct]))
    sc = np.asarray(self_certainty(out.vocab_mean_logp, out.mask, policy.model_cfg.vocab_size))
    result[f"majority@{n}"] = selection_accuracy(select_by_vote(texts, n))
    result[f"sc_borda@{n}"] = selection_accuracy(select_by_vote(texts, n, borda_weights(sc, n)))
    result["sc_auc"] = auc(sc, right)
    groups = Groups(real_pb, out, expanded, texts, right.astype(np.float32), {"exact_answer": right.astype(np.float32)})
    for aux in auxiliaries.values():
      if aux.evaluate is not None:
        result.update(aux.evaluate(params, groups, right))
    return result
  return evaluate


def rl_source(collector: RolloutCollector, policy: Policy, policy_part, seed: int, epochs: int,
              minibatch_size: int, ppo: bool):
  """The loop's source: step i's rollout from the current policy, as `epochs` shuffled
  passes of minibatches (the shuffle seeded by (seed, i + 1))."""
  def source(i: int, state: TrainState):
    params = policy.full_params(policy_part(state.params), state.frozen["base"])
    rollout, stats = collector.collect(params, state.frozen["ref"], i,
                                       state.params["value_head"] if ppo else None)
    rows = rollout.tokens.shape[0]
    perm_rng = np.random.default_rng([seed, i + 1, 7])
    batches = []
    for _ in range(epochs):
      order = perm_rng.permutation(rows)
      for s in range(0, rows, minibatch_size):
        idx = order[s:s + minibatch_size]
        batches.append(jax.tree.map(lambda x: x[idx], rollout))
    return state, StepInputs(batches, stats, tokens=int(rollout.completion_mask.sum()))
  return source


RL_PANELS = (("train", "reward"), ("eval", "accuracy"), ("train", "kl_ref"), ("train", "response_length"))


def build(config, workdir: str | None = None) -> Built:
  """Runs (or restores) the SFT warm-up and returns the RL pipeline (one loop step = one
  iteration: a rollout, then epochs x minibatches of updates)."""
  workdir, mesh = begin_run(config, workdir)
  rc, tc = config.rl, config.train
  settings = objective_settings(config.objective)
  ppo = settings["advantage"] == "gae"
  policy, ref, warm_accuracy = sft.warm_policy(config, workdir, mesh)   # ref: the frozen starting policy
  graphdef, trainable, value_graphdef = policy.graphdef, policy.params, None
  if ppo:  # train {"policy", "value_head"} together as one ActorCritic module
    graphdef, trainable, value_graphdef = actor_critic(policy, config.seed, mesh)
  merge = learner_merge(policy.merge, ppo)
  policy_part = (lambda p: p["policy"]) if ppo else (lambda p: p)
  updates_per_step = rc.epochs * (rc.num_prompts * rc.group_size // rc.minibatch_size)
  optimizer, schedule = make_optimizer(config.optim, tc.steps * updates_per_step)
  state = create_train_state(trainable, optimizer, mesh, config.seed, frozen={"ref": ref, "base": policy.frozen})

  task = make_task(config.data.task, **config.data.task_kwargs)
  if getattr(task, "skipped", None) and is_main():   # a file-backed task's counted bad rows
    print(f"task data: skipped {task.skipped}", flush=True)
  rs = RolloutSettings(config.seed, rc.num_prompts, rc.group_size, config.eval.max_prompt_len, rc.max_new_tokens,
                       rc.temperature, rc.top_p, bool(settings.get("dynamic_sampling")), rc.max_refill_rounds,
                       settings.get("overlong_buffer", 0), settings.get("overlong_penalty", 1.0),
                       need_groups=settings["advantage"] != "reinforce_pp", logprob_chunk=tc.logprob_chunk)
  weights = dict(rc.rewards)
  rewards = build_rewards(list(weights), RewardContext(rc.group_size, policy.model_cfg.vocab_size,
                                                       rc.get("reward_model_path", ""), mesh))
  collector = RolloutCollector(rs, policy.graphdef, policy.tokenizer, task, mesh, rewards, weights,
                               policy.model_cfg.vocab_size, make_advantage_fn(settings, rc.group_size),
                               value_graphdef)
  auxiliaries = build_auxiliaries({name: config.get(name) for name in AUXILIARIES}, AuxSetup(
      policy.graphdef, policy.tokenizer, mesh, ref, collector, config.get("judge"), config.eval.batch_size,
      tc.logprob_chunk))
  collector.examples = {name: aux.examples for name, aux in auxiliaries.items() if aux.examples is not None}

  pipeline = Pipeline(graphdef, state, make_rl_loss_fn(settings, tc.logprob_chunk, auxiliaries), optimizer,
                      schedule, rl_source(collector, policy, policy_part, config.seed, rc.epochs, rc.minibatch_size,
                                          ppo),
                      make_rl_evaluator(config.eval, rc.max_new_tokens, policy, task, mesh, policy_part, auxiliaries),
                      merge=merge, updates_per_step=updates_per_step,
                      loss_weight=lambda b: aggregation_weight(b.completion_mask, settings["aggregation"]),
                      plot_panels=RL_PANELS,
                      shown={"reward": "reward", "kl": "kl_ref"}, name="rl")
  return Built(pipeline, mesh, LoopSettings.from_config(tc), lambda summary: dict(
      summary, sft_warmup_accuracy=warm_accuracy))


run = runner(build)
