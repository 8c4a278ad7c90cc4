"""Math answer rewards: math-verify equivalence of each completion's final answer
(\\boxed{...}, a GSM8K-style `#### x` line, or an anchored "the final answer is x") with
the problem's reference answer, run by the process-wide MathChecker (a child process with a
per-check timeout, rewardlab.data.math_tasks).

    math_answer      1 if equivalent, else 0 (unparsable, timed-out and failed checks give 0)
    math_unparsable  1 where the completion has no final answer sympy can read
    math_timeout     1 where the check ran out of time (or the checker child failed)

The last two are counters: list them with weight 0 in config.rl.rewards and the RL loop
logs their batch means as reward/math_unparsable and reward/math_timeout. Verdicts are
cached, so the three (and `exact_answer` on MathProblems) check each completion once.
Each: fn(completions, problems, lengths) -> [B] float32.
"""
from __future__ import annotations

import numpy as np

from rewardlab.data.math_tasks import default_checker


def _verdicts(completions, problems):
  return default_checker().check_many(list(completions), [p.answer for p in problems])


def math_answer(completions, problems, lengths=None) -> np.ndarray:
  return np.array([float(v.correct) for v in _verdicts(completions, problems)], np.float32)


def math_unparsable(completions, problems, lengths=None) -> np.ndarray:
  return np.array([float(v.status == "unparsable") for v in _verdicts(completions, problems)], np.float32)


def math_timeout(completions, problems, lengths=None) -> np.ndarray:
  return np.array([float(v.status in ("timeout", "error")) for v in _verdicts(completions, problems)],
                  np.float32)


MATH_REWARDS = {"math_answer": math_answer, "math_unparsable": math_unparsable, "math_timeout": math_timeout}
