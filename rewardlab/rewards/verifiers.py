"""Rule-based rewards over (completion text, problem): verifiers, format, length, and the
math-verify answer rewards of math_answer.py.

Each reward function maps lists to a float32 numpy vector:
    fn(completions: list[str], problems: list[Problem], lengths: np.ndarray) -> [B]
so rewards can be computed on the host right after decoding and combined by weight.
"""
from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

import numpy as np

from rewardlab.data.preference import gold_reward
from rewardlab.data.tasks import Problem
from rewardlab.rewards.math_answer import MATH_REWARDS

RewardFn = Callable[[Sequence[str], Sequence[Problem], np.ndarray], np.ndarray]
_ANSWER_FORMAT = re.compile(r"^[0-9]+$")


def exact_answer(completions, problems, lengths=None) -> np.ndarray:
  """1 if the problem's own check accepts the completion, else 0: the extracted first line
  equals the reference answer (synthetic tasks), or math-verify equivalence (MathProblem)."""
  return np.array([float(p.check(c)) for c, p in zip(completions, problems)], np.float32)


def answer_format(completions, problems, lengths=None) -> np.ndarray:
  """1 if the completion is a bare answer (digits only on its one line), else 0."""
  return np.array([float(bool(_ANSWER_FORMAT.match(c))) for c in completions], np.float32)


def gold(completions, problems, lengths=None) -> np.ndarray:
  """The synthetic tasks' known "true" reward (`data.preference.gold_reward`: 1 for the
  answer, partial credit for right-aligned digits, minus 0.1 per wrong length). With weight
  0 in `rl.rewards` it is only logged (`reward/gold`): the gold curve of a run optimising a
  proxy."""
  return np.array([gold_reward(c, p.answer) for c, p in zip(completions, problems)], np.float32)


def length_penalty(completions, problems, lengths) -> np.ndarray:
  """-(generated tokens) / max over the batch: a mild push toward short answers."""
  lengths = np.asarray(lengths, np.float32)
  return -lengths / max(float(lengths.max(initial=0.0)), 1.0)


REWARDS: dict[str, RewardFn] = {
    "exact_answer": exact_answer,
    "format": answer_format,
    "length_penalty": length_penalty,
    "gold": gold,
    **MATH_REWARDS,      # math_answer, math_unparsable, math_timeout (math_answer.py)
}


def combine(weights: Mapping[str, float], extra: Mapping[str, RewardFn] | None = None) -> RewardFn:
  """Weighted sum of named rewards; also returns each component via `.components`.
  `extra` adds run-specific reward functions (e.g. a loaded reward model) by name."""
  table = {**REWARDS, **(extra or {})}
  unknown = sorted(set(weights) - set(table))
  if unknown:
    raise ValueError(f"rewards: unknown {unknown}; allowed: {sorted(table)}")

  def reward(completions, problems, lengths):
    parts = {name: np.asarray(table[name](completions, problems, lengths), np.float32) for name in weights}
    total = sum(w * parts[name] for name, w in weights.items())
    reward.components = parts
    return np.asarray(total, np.float32)

  reward.components = {}
  return reward
