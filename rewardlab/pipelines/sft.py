"""Supervised fine-tuning on a synthetic task (pipeline "sft"), and the SFT warm-up that the
RL, preference and reward-model pipelines start from.

Step i trains on `data.batch_size` fresh problems drawn with seed (config.seed, i); with
`data.judge_fraction` > 0 part of the batch teaches the policy to judge answers (yes/no).
Evaluation: greedy exact-match accuracy on held-out problems.
"""
from __future__ import annotations

import copy
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from rewardlab.data import SequenceBatch, Task, make_task, sft_batch
from rewardlab.eval import exact_match
from rewardlab.models.logprobs import sequence_logprobs
from rewardlab.objectives import OBJECTIVES
from rewardlab.ops import aggregation_weight
from rewardlab.rewards.judge import judge_examples, make_judge
from rewardlab.sampling import SamplingParams, make_sample_fn
from rewardlab.sharding import shard_batch
from rewardlab.pipelines.common import Built, runner
from rewardlab.train.loop import LoopSettings, Pipeline, begin_run, offline_source
from rewardlab.train.optim import make_optimizer
from rewardlab.train.policy import Policy, PolicySpec, build_policy, export_policy
from rewardlab.train.state import create_train_state


def make_sft_loss_fn(objective_cfg, chunk_size: int = 4096):
  """loss_fn(model, SequenceBatch, rng) -> (loss, metrics) around the pure objective."""
  objective = OBJECTIVES[objective_cfg.name]
  kwargs = {k: v for k, v in objective_cfg.items() if k != "name"}

  def loss_fn(model, batch: SequenceBatch, rng):
    del rng
    logps = sequence_logprobs(model, batch.tokens, batch.valid, chunk_size)
    return objective(logps, batch.loss_mask[:, 1:], **kwargs)
  return loss_fn


def sft_loss_weight(objective_cfg):
  """A micro-batch's share of the SFT loss's denominator (its aggregation's tokens or rows)."""
  mode = objective_cfg.get("aggregation", "token_mean")
  return lambda batch: aggregation_weight(batch.loss_mask[:, 1:], mode)


def make_accuracy_evaluator(eval_cfg, policy: Policy, task: Task, mesh):
  """Greedy exact-match accuracy on a fixed set of held-out problems (config.eval: seed,
  num_problems, max_prompt_len, max_new_tokens, batch_size)."""
  ec, tokenizer = eval_cfg, policy.tokenizer
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


def sft_batches(task: Task, tokenizer, seed: int, batch_size: int, seq_len: int, judge=None,
                n_judge: int = 0):
  """batch_at(i) -> SequenceBatch of update i: problems drawn with seed (seed, i), the last
  n_judge rows judge examples (`judge_examples`) when a judge is given."""
  def batch_at(i: int) -> SequenceBatch:
    rng = np.random.default_rng([seed, i])
    rows = task.sample_many(rng, batch_size - n_judge)
    if n_judge:
      rows += judge_examples(task, rng, n_judge, judge)
    return sft_batch(rows, tokenizer, seq_len)
  return batch_at


def build(config, workdir: str | None = None) -> Built:
  """The SFT pipeline ready for the loop; its finish writes config.export_hf when set."""
  workdir, mesh = begin_run(config, workdir)
  dc = config.data
  task = make_task(dc.task, **dc.task_kwargs)
  optimizer, schedule = make_optimizer(config.optim, config.train.steps)
  policy = build_policy(PolicySpec.from_config(config), mesh)
  state = create_train_state(policy.params, optimizer, mesh, config.seed, frozen=policy.frozen)
  n_judge = int(round(dc.get("judge_fraction", 0.0) * dc.batch_size))
  judge = (make_judge(config.judge, policy.graphdef, policy.tokenizer, mesh, config.eval.batch_size)
           if n_judge else None)
  batch_at = sft_batches(task, policy.tokenizer, config.seed, dc.batch_size, dc.seq_len, judge, n_judge)
  pipeline = Pipeline(policy.graphdef, state, make_sft_loss_fn(config.objective, config.train.logprob_chunk),
                      optimizer, schedule, offline_source(batch_at),
                      make_accuracy_evaluator(config.eval, policy, task, mesh), merge=policy.merge,
                      loss_weight=sft_loss_weight(config.objective))

  def finish(summary):
    if config.get("export_hf"):
      final = summary["state"]
      summary["export"] = export_policy(policy, final.params, final.frozen, config.export_hf)
    return summary
  return Built(pipeline, mesh, LoopSettings.from_config(config.train), finish)


run = runner(build)


# config.sft_warmup fields that replace config.optim's in the warm-up when set (not None):
# the RL / preference stage usually wants a constant small lr, the warm-up a decaying large one
WARMUP_OPTIM_FIELDS = ("schedule", "warmup_steps", "min_lr_ratio", "weight_decay")


def warmup_config(config):
  """The SFT config of the warm-up that RL, preference and RM pipelines start from
  (config.sft_warmup: steps, lr, judge_fraction, and optionally the WARMUP_OPTIM_FIELDS;
  the rest of the optimizer is config.optim's), or None when absent, 0 steps, or the
  config is itself an SFT run. Its workdir is <run workdir>/sft_warmup."""
  wc = config.get("sft_warmup")
  if wc is None or wc.steps <= 0 or config.pipeline == "sft":
    return None
  sft_config = copy.deepcopy(config)
  sft_config.unlock()
  sft_config.pipeline = "sft"
  sft_config.objective = ml_collections.ConfigDict({"name": "sft", "aggregation": "token_mean"})
  sft_config.optim.lr = wc.lr
  for field in WARMUP_OPTIM_FIELDS:
    if wc.get(field) is not None:
      sft_config.optim[field] = wc[field]
  sft_config.data.judge_fraction = wc.get("judge_fraction", 0.0)
  sft_config.train.update(steps=wc.steps, eval_every=wc.steps, checkpoint_every=wc.steps)
  sft_config.lock()
  return sft_config


def warm_start(config, workdir: str):
  """Runs (or resumes, or skips if finished) the SFT warm-up that RL, preference and RM
  pipelines start from, in <workdir>/sft_warmup. Returns (final params, held-out accuracy),
  or None when config.sft_warmup is absent or has 0 steps."""
  sft_config = warmup_config(config)
  if sft_config is None:
    return None
  summary = run(sft_config, os.path.join(workdir, "sft_warmup"))
  return summary["state"].params, summary["evals"][-1]["accuracy"] if summary["evals"] else None


def warm_policy(config, workdir: str, mesh):
  """The policy after the SFT warm-up (`warm_start`) and a frozen copy of its full params as
  the reference (own buffers: the update step donates the state). -> (policy, reference
  params, warm-up held-out accuracy or None)."""
  warm = warm_start(config, workdir)
  policy = build_policy(PolicySpec.from_config(config), mesh)
  if warm is not None:
    policy.params = warm[0]
  return policy, jax.tree.map(jnp.copy, policy.full_params()), None if warm is None else warm[1]
