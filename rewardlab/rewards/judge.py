"""Generative judge (METHODS.md A8): the policy scores (question, answer) pairs itself.

The judge prompt is a template around the question and answer; the reward is read from
the model's next-token distribution at the end of the prompt, restricted to score tokens
and renormalised over them:

  mode "expected": score tokens "1".."K" -> E[score] = sum_k k p(k) / sum_k p(k)
  mode "p_yes":    score tokens (yes, no) -> p(yes) / (p(yes) + p(no))

One batched, jitted forward per call; no free text is generated or parsed. Judge examples
for training the judge (SPARK-style pointwise data, or a warm-up) come from `judge_examples`.
"""
from __future__ import annotations

import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rewardlab.data import prompt_batch
from rewardlab.data.tasks import Problem
from rewardlab.distributed import to_host
from rewardlab.sharding import shard_batch

DEFAULT_TEMPLATE = "{question}{answer}\nok?"


def score_from_logits(logits, score_ids: Sequence[int], mode: str):
  """logits [N, V] at the score position -> judge score [N]."""
  p = jax.nn.softmax(logits[:, jnp.asarray(score_ids)].astype(jnp.float32), -1)
  if mode == "expected":
    return jnp.sum(p * jnp.arange(1, len(score_ids) + 1, dtype=jnp.float32), -1)
  if mode == "p_yes":
    return p[:, 0]
  raise ValueError(f"judge mode {mode!r}; allowed: expected, p_yes")


@functools.lru_cache(maxsize=16)
def _judge_fn(graphdef, score_ids: tuple, mode: str):
  @jax.jit
  def judge(params, tokens, valid):
    model = nnx.merge(graphdef, params)
    hidden, _ = model.hidden_states(tokens, valid=valid)
    return score_from_logits(model.logits(hidden[:, -1:])[:, 0], score_ids, mode)   # left-padded
  return judge


class Judge:
  """judge = Judge(graphdef, tokenizer, max_len=32); judge.score(params, questions, answers)."""

  def __init__(self, graphdef, tokenizer, max_len: int, template: str = DEFAULT_TEMPLATE,
               mode: str = "p_yes", score_tokens: Sequence[str] = ("Y", "N"), mesh=None,
               batch_size: int = 128):
    ids = [tokenizer.encode(t) for t in score_tokens]
    bad = [t for t, i in zip(score_tokens, ids) if len(i) != 1]
    if bad:
      raise ValueError(f"judge: score tokens {bad} are not single tokens")
    if mode == "p_yes" and len(ids) != 2:
      raise ValueError("judge: mode p_yes takes two score tokens (yes, no)")
    self.tokenizer, self.max_len, self.template, self.mesh = tokenizer, max_len, template, mesh
    self.mode, self.score_ids, self.batch_size = mode, tuple(i[0] for i in ids), batch_size
    self.score_tokens = tuple(score_tokens)
    self._fn = _judge_fn(graphdef, self.score_ids, mode)

  def prompt(self, question: str, answer: str) -> str:
    return self.template.format(question=question, answer=answer.split("\n", 1)[0])

  def score(self, params, questions: Sequence[str], answers: Sequence[str]) -> np.ndarray:
    """-> float32 [N] judge scores, in fixed-size batches (padding rows repeat the last)."""
    if len(questions) != len(answers):
      raise ValueError(f"judge: {len(questions)} questions for {len(answers)} answers")
    prompts = [self.prompt(q, a) for q, a in zip(questions, answers)]
    out, bs = [], self.batch_size
    for s in range(0, len(prompts), bs):
      chunk = prompts[s:s + bs]
      n = len(chunk)
      pb = prompt_batch(chunk + [chunk[-1]] * (bs - n), self.tokenizer, self.max_len)
      arrays = (pb.tokens, pb.valid) if self.mesh is None else shard_batch((pb.tokens, pb.valid), self.mesh)
      out.append(np.asarray(to_host(self._fn(params, *arrays)))[:n])
    return np.concatenate(out).astype(np.float32)

  def examples(self, problems: Sequence[Problem], answers: Sequence[str], correct: Sequence[bool]) -> list[Problem]:
    """Pointwise judge-training examples: judge prompt -> the yes/no (first/last) score token."""
    yes, no = self.score_tokens[0], self.score_tokens[-1]
    return [Problem(self.prompt(p.prompt, a), yes if c else no) for p, a, c in zip(problems, answers, correct)]


def make_judge(judge_cfg, graphdef, tokenizer, mesh, batch_size: int) -> Judge:
  """The policy's judge as configured in `config.judge` (template, mode, score_tokens, max_len)."""
  jc = judge_cfg
  return Judge(graphdef, tokenizer, jc.max_len, jc.template, jc.mode, tuple(jc.score_tokens), mesh, batch_size)


def judge_examples(task, rng: np.random.Generator, n: int, judge: Judge, p_correct: float = 0.5) -> list[Problem]:
  """Synthetic pointwise judge data: a problem with its answer (prob p_correct) or a wrong
  one, labelled by the task's verifier."""
  from rewardlab.data.preference import rm_corruption
  problems = task.sample_many(rng, n)
  answers = [p.answer if rng.random() < p_correct else rm_corruption(p.answer, rng, 0.5) for p in problems]
  return judge.examples(problems, answers, [a == p.answer for a, p in zip(answers, problems)])
