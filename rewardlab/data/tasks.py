"""Synthetic tasks with exact verifiers: the embedded default data (and, by name, the
file-backed math task of math_tasks.py).

A task samples `Problem(prompt, answer)` from a numpy Generator and verifies a completion
by exact match of the extracted answer. Each task has a fixed held-out split: a problem
is held out iff crc32(prompt) % 10 == 0; training samples never contain held-out prompts.
"""
from __future__ import annotations

import dataclasses
import zlib
from typing import Callable, NamedTuple

import numpy as np


class Problem(NamedTuple):
  prompt: str
  answer: str

  def check(self, completion: str) -> bool:
    """Whether `completion` answers the problem: exact match of its first line for the
    synthetic tasks (file-backed math problems check equivalence, math_tasks.MathProblem)."""
    return extract_answer(completion) == self.answer


def _is_heldout(prompt: str) -> bool:
  return zlib.crc32(prompt.encode()) % 10 == 0


def extract_answer(completion: str) -> str:
  """The answer is the completion's first line, stripped."""
  return completion.split("\n", 1)[0].strip()


def _number(rng: np.random.Generator, min_digits: int, max_digits: int) -> int:
  digits = int(rng.integers(min_digits, max_digits + 1))
  low = 0 if digits == 1 else 10 ** (digits - 1)
  return int(rng.integers(low, 10 ** digits))


@dataclasses.dataclass(frozen=True)
class Task:
  """A named problem generator with an exact verifier."""
  name: str
  make: Callable[[np.random.Generator], Problem]

  def sample(self, rng: np.random.Generator, split: str = "train") -> Problem:
    if split not in ("train", "eval"):
      raise ValueError(f"task {self.name}: split must be 'train' or 'eval', got {split!r}")
    want_heldout = split == "eval"
    for _ in range(10_000):
      p = self.make(rng)
      if _is_heldout(p.prompt) == want_heldout:
        return p
    raise RuntimeError(f"task {self.name}: could not draw a {split} problem")

  def sample_many(self, rng: np.random.Generator, n: int, split: str = "train") -> list[Problem]:
    return [self.sample(rng, split) for _ in range(n)]

  @staticmethod
  def verify(completion: str, answer: str) -> bool:
    return extract_answer(completion) == answer


def addition(min_digits: int = 1, max_digits: int = 3) -> Task:
  def make(rng):
    a, b = _number(rng, min_digits, max_digits), _number(rng, min_digits, max_digits)
    return Problem(f"{a}+{b}=", str(a + b))
  return Task("addition", make)


def multiplication(min_digits: int = 1, max_digits: int = 2) -> Task:
  def make(rng):
    a, b = _number(rng, min_digits, max_digits), _number(rng, min_digits, max_digits)
    return Problem(f"{a}*{b}=", str(a * b))
  return Task("multiplication", make)


def sorting(min_len: int = 3, max_len: int = 6) -> Task:
  def make(rng):
    n = int(rng.integers(min_len, max_len + 1))
    digits = rng.integers(0, 10, size=n)
    return Problem("sort " + "".join(map(str, digits)) + "=", "".join(map(str, sorted(digits))))
  return Task("sorting", make)


def math_jsonl(**kwargs):
  """GSM8K / MATH-style problems from files, checked by math-verify (math_tasks.math_jsonl)."""
  from rewardlab.data.math_tasks import math_jsonl as make
  return make(**kwargs)


TASKS: dict[str, Callable[..., Task]] = {
    "addition": addition,
    "multiplication": multiplication,
    "sorting": sorting,
    "math_jsonl": math_jsonl,
}


def make_task(name: str, **kwargs) -> Task:
  if name not in TASKS:
    raise ValueError(f"data.task={name!r} is unknown; allowed: {sorted(TASKS)}")
  return TASKS[name](**kwargs)
