"""Supervised fine-tuning pipeline on a synthetic task (the first main job)."""
from __future__ import annotations

import copy
import os

import jax
import ml_collections
import numpy as np

from rewardlab.data import SequenceBatch, make_task, sft_batch
from rewardlab.eval import exact_match
from rewardlab.objectives import OBJECTIVES
from rewardlab.ops import chunked_token_logprobs
from rewardlab.sampling import SamplingParams, make_sample_fn
from rewardlab.train.loop import fit
from rewardlab.train.optim import make_optimizer
from rewardlab.sharding import make_mesh, shard_batch
from rewardlab.train.policy import Policy, build_policy, export_policy
from rewardlab.train.state import create_train_state


def sequence_logprobs(model, tokens, valid, chunk_size: int = 4096):
  """Log-probs of tokens[:, 1:] given their prefixes: [B, T] -> [B, T-1] float32."""
  hidden, _ = model.hidden_states(tokens[:, :-1], valid=valid[:, :-1])
  return chunked_token_logprobs(hidden, model.unembedding(), tokens[:, 1:], chunk_size)


def make_sft_loss_fn(objective_cfg, chunk_size: int = 4096):
  """loss_fn(model, SequenceBatch, rng) -> (loss, metrics) around the pure objective."""
  objective = OBJECTIVES[objective_cfg.name]
  kwargs = {k: v for k, v in objective_cfg.items() if k != "name"}

  def loss_fn(model, batch: SequenceBatch, rng):
    del rng
    logps = sequence_logprobs(model, batch.tokens, batch.valid, chunk_size)
    return objective(logps, batch.loss_mask[:, 1:], **kwargs)
  return loss_fn


def make_accuracy_evaluator(config, policy: Policy, task, mesh):
  """Greedy exact-match accuracy on a fixed set of held-out problems."""
  ec = config.eval
  tokenizer = policy.tokenizer
  problems = task.sample_many(np.random.default_rng(ec.seed), ec.num_problems, split="eval")
  greedy = SamplingParams(max_new_tokens=ec.max_new_tokens, temperature=0.0,
                          stop_ids=(tokenizer.eos_id,))
  sample = make_sample_fn(policy.graphdef, greedy, tokenizer.pad_id, mesh)

  def generate(params, tokens, valid):
    out = sample(params, tokens, valid, jax.random.PRNGKey(0))
    return out.tokens, out.mask

  def evaluate(state):
    params = policy.full_params(state.params, state.frozen)
    return exact_match(generate, params, task, problems, tokenizer, ec.max_prompt_len,
                       ec.batch_size, place=lambda b: shard_batch(b, mesh))
  return evaluate


def run(config, workdir: str | None = None, stop_at_step: int | None = None) -> dict:
  workdir = workdir or config.workdir
  mesh = make_mesh(dict(config.mesh))
  task = make_task(config.data.task, **config.data.task_kwargs)
  optimizer, schedule = make_optimizer(config.optim, config.train.steps)
  policy = build_policy(config, mesh)
  tokenizer = policy.tokenizer
  state = create_train_state(policy.params, optimizer, mesh, config.seed, frozen=policy.frozen)
  dc = config.data

  n_judge = int(round(dc.get("judge_fraction", 0.0) * dc.batch_size))
  if n_judge:   # pointwise judge examples (answer -> yes/no) so the policy can judge itself
    from rewardlab.rewards.judge import judge_examples, judge_from_config
    judge = judge_from_config(config, policy, mesh)

  def batch_at(i: int) -> SequenceBatch:
    rng = np.random.default_rng([config.seed, i])
    rows = task.sample_many(rng, dc.batch_size - n_judge)
    if n_judge:
      rows += judge_examples(task, rng, n_judge, judge)
    return sft_batch(rows, tokenizer, dc.seq_len)

  summary = fit(config, workdir, mesh, policy.graphdef, state,
                make_sft_loss_fn(config.objective, config.train.logprob_chunk), optimizer,
                schedule, batch_at, make_accuracy_evaluator(config, policy, task, mesh),
                stop_at_step=stop_at_step, merge=policy.merge)
  if config.get("export_hf"):
    final = summary["state"]
    summary["export"] = export_policy(policy, final.params, final.frozen, config.export_hf)
  return summary


def warm_start(config, workdir: str):
  """Runs (or resumes, or skips if finished) the SFT warm-up that RL and preference
  pipelines start from. Returns (final params, held-out accuracy) or None if disabled."""
  wc = config.get("sft_warmup")
  if wc is None or wc.steps <= 0:
    return None
  sft_config = copy.deepcopy(config)
  sft_config.unlock()
  sft_config.pipeline = "sft"
  sft_config.objective = ml_collections.ConfigDict({"name": "sft", "aggregation": "token_mean"})
  sft_config.optim.lr = wc.lr
  sft_config.data.judge_fraction = wc.get("judge_fraction", 0.0)
  sft_config.train.update(steps=wc.steps, eval_every=wc.steps, checkpoint_every=wc.steps)
  sft_config.lock()
  summary = run(sft_config, os.path.join(workdir, "sft_warmup"))
  return summary["state"].params, summary["evals"][-1]["accuracy"] if summary["evals"] else None
