"""Auxiliary objectives trained beside the policy gradient on the same rollouts, by name
(`AUXILIARIES`; on when `config.<name>.coef > 0`):

  laser  LaSeR: the last-token self-reward beta (log pi(z | x, y) - c) regressed onto the
         verifier's outcome; evaluation reports its AUC and test-time selection by it.
  spark  SPARK: the same model learns to judge its rollouts (verifier-labelled yes/no, and
         "which is better?" pairs); evaluation reports its judging AUC on its own samples.

Each builder returns an `Auxiliary`: per-row examples made from each rollout (stored in
`Rollout.aux[name]`), a loss term added inside the update step, and evaluation metrics.
"""
from __future__ import annotations

import dataclasses
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rewardlab.data import Problem, sft_batch
from rewardlab.distributed import to_host
from rewardlab.models.logprobs import sequence_logprobs
from rewardlab.rewards.judge import make_judge
from rewardlab.rewards.self_rewards import auc, laser_loss, laser_score, last_token_logprob, select_by_vote
from rewardlab.rollout import Groups, Rollout, RolloutCollector
from rewardlab.sharding import shard_batch


@dataclasses.dataclass(frozen=True)
class Auxiliary:
  """loss(policy model, full_hidden [B, P+N, D] or None, Rollout) -> (loss, metrics), added
  to the policy-gradient loss with weight `coef`; `examples(groups)` -> this term's per-row
  arrays in Rollout.aux; `evaluate(params, groups, right [B] bool)` -> eval metrics on the
  evaluator's samples (n per problem, in groups of n)."""
  coef: float
  loss: Callable[[nnx.Module, Any, Rollout], tuple[jax.Array, dict]]
  examples: Callable[[Groups], Any] | None = None
  evaluate: Callable[[Any, Groups, np.ndarray], dict] | None = None
  needs_full_hidden: bool = False   # the loss reads the hidden state after the last token


class AuxSetup(NamedTuple):
  """What auxiliary builders may use: the policy's pieces, the frozen reference, the run's
  rollout collector, the judge settings (config.judge) and the scoring batch size."""
  graphdef: Any
  tokenizer: Any
  mesh: Any
  ref_params: Any
  collector: RolloutCollector
  judge_cfg: Any
  batch_size: int
  logprob_chunk: int


def _mean_where(x, m):
  return jnp.sum(x * m) / jnp.maximum(jnp.sum(m), 1.0)


def make_laser(laser_cfg, setup: AuxSetup) -> Auxiliary:
  """LaSeR (config.laser: coef, beta, token z). c = the reference's mean log pi_ref(z | x, y)
  over one batch of its own samples (deterministic, so a resumed run gets the same c)."""
  ids = setup.tokenizer.encode(laser_cfg.token)
  if len(ids) != 1:
    raise ValueError(f"config.laser.token={laser_cfg.token!r} is {len(ids)} tokens; LaSeR needs one")
  z, beta = ids[0], laser_cfg.beta

  @jax.jit
  def logp_z(params, tokens, valid):
    model = nnx.merge(setup.graphdef, params)
    hidden, _ = model.hidden_states(tokens, valid=valid)
    return last_token_logprob(model, hidden, valid, z)

  def logp_z_of(params, groups: Groups):
    return np.asarray(to_host(logp_z(params, *shard_batch(groups.full_sequences(), setup.mesh))))

  c = float(np.mean(logp_z_of(setup.ref_params, setup.collector.sample_round(setup.ref_params, 10 ** 6, 0))))

  def loss(policy, full_hidden, batch: Rollout):
    score = laser_score(last_token_logprob(policy, full_hidden, batch.valid, z), beta, c)
    right = batch.verifier_reward > 0.5
    return laser_loss(score, batch.verifier_reward), {
        "laser_score_correct": _mean_where(score, right), "laser_score_wrong": _mean_where(score, ~right)}

  def evaluate(params, groups: Groups, right: np.ndarray) -> dict:
    n = len(groups.problems) // groups.prompts.tokens.shape[0]
    s = laser_score(logp_z_of(params, groups), beta, c)
    answers = [p.answer for p in groups.problems[::n]]
    picks = select_by_vote(groups.texts, n, np.clip(s, 1e-3, None))
    best = right.reshape(-1, n)[np.arange(len(answers)), s.reshape(-1, n).argmax(1)]
    return {"laser_auc": auc(s, right),
            f"laser_weighted_majority@{n}": float(np.mean([a == b for a, b in zip(picks, answers)])),
            f"laser_best_of_{n}": float(np.mean(best))}

  return Auxiliary(laser_cfg.coef, _named_loss("laser_loss", loss), evaluate=evaluate, needs_full_hidden=True)


class JudgeExamples(NamedTuple):
  """Pointwise judge examples as an SFT batch [B, Tj]."""
  tokens: np.ndarray
  valid: np.ndarray
  loss_mask: np.ndarray


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


def make_spark(spark_cfg, setup: AuxSetup) -> Auxiliary:
  """SPARK (config.spark: coef, pairwise): each rollout, labelled by the verifier, becomes a
  judge example (config.judge's template and score tokens) trained by NLL."""
  judge = make_judge(setup.judge_cfg, setup.graphdef, setup.tokenizer, setup.mesh, setup.batch_size)
  tok, seq = setup.tokenizer, setup.judge_cfg.max_len + 2

  def examples(groups: Groups) -> JudgeExamples:
    prompts, answers = [p.prompt for p in groups.problems], list(groups.texts)
    right = np.asarray(groups.components["exact_answer"]) > 0.5
    rows = judge.examples([Problem(p, "") for p in prompts], answers, right)
    if spark_cfg.get("pairwise"):
      rows = pairwise_judge_examples(rows, prompts, answers, right, len(prompts) // groups.prompts.tokens.shape[0])
    fits = np.array([len(tok.encode(e.prompt, bos=True)) + len(tok.encode(e.answer, eos=True)) <= seq
                     for e in rows])
    # an answer too long for the judge prompt becomes an empty (fully masked) example
    b = sft_batch([e if ok else Problem("", e.answer) for e, ok in zip(rows, fits)], tok, seq)
    return JudgeExamples(b.tokens, b.valid, b.loss_mask & fits[:, None])

  def loss(policy, full_hidden, batch: Rollout):
    ex = batch.aux["spark"]
    judge_logp = sequence_logprobs(policy, ex.tokens, ex.valid, setup.logprob_chunk)
    mask = ex.loss_mask[:, 1:]
    return -jnp.sum(judge_logp * mask) / jnp.maximum(jnp.sum(mask), 1.0), {}

  def evaluate(params, groups: Groups, right: np.ndarray) -> dict:
    j = judge.score(params, [p.prompt for p in groups.problems], groups.texts)
    return {"judge_auc": auc(j, right), "judge_accuracy": float(np.mean((j > 0.5) == right))}

  return Auxiliary(spark_cfg.coef, _named_loss("spark_judge_nll", loss), examples, evaluate)


def _named_loss(metric: str, loss):
  """Also report the auxiliary loss's value under `metric`."""
  def named(policy, full_hidden, batch):
    value, metrics = loss(policy, full_hidden, batch)
    return value, {metric: value, **metrics}
  return named


AUXILIARIES: dict[str, Callable[[Any, AuxSetup], Auxiliary]] = {"laser": make_laser, "spark": make_spark}


def build_auxiliaries(sections, setup: AuxSetup) -> dict[str, Auxiliary]:
  """sections: {name: config.<name> or None}. Every AUXILIARIES entry whose section has
  coef > 0, in registry order."""
  return {name: make(sections[name], setup) for name, make in AUXILIARIES.items()
          if sections.get(name) is not None and sections[name].coef > 0}
