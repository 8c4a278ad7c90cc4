"""Preference data: the prompt/chosen/rejected shape, JSONL loading with file:line errors,
synthetic pairs labelled by a known gold reward, and paired batching.
"""
from __future__ import annotations

import json
from typing import NamedTuple, Sequence

import numpy as np

from rewardlab.data.tasks import Problem, Task, extract_answer


class PreferencePair(NamedTuple):
  prompt: str
  chosen: str
  rejected: str
  margin: float | None = None
  subset: str | None = None


class PairBatch(NamedTuple):
  """Chosen rows [0, B) and rejected rows [B, 2B) of right-padded sequences, so one
  forward pass scores both. tokens/valid/loss_mask: [2B, T]; ref_logps: [2B] summed
  reference log-probs of each completion (zeros for reference-free objectives)."""
  tokens: np.ndarray
  valid: np.ndarray
  loss_mask: np.ndarray
  ref_logps: np.ndarray


REQUIRED = ("prompt", "chosen", "rejected")


def load_preference_jsonl(path: str) -> list[PreferencePair]:
  """Reads {"prompt", "chosen", "rejected"[, "margin", "subset"]} lines.
  A malformed line raises ValueError naming file:line and the problem; nothing is skipped."""
  pairs = []
  with open(path) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      try:
        row = json.loads(line)
      except json.JSONDecodeError as e:
        raise ValueError(f"{path}:{lineno}: not valid JSON ({e.msg})") from None
      if not isinstance(row, dict):
        raise ValueError(f"{path}:{lineno}: expected a JSON object, got {type(row).__name__}")
      for field in REQUIRED:
        if not isinstance(row.get(field), str):
          raise ValueError(f"{path}:{lineno}: missing or non-string field {field!r}")
      if row["chosen"] == row["rejected"]:
        raise ValueError(f"{path}:{lineno}: chosen equals rejected")
      if not row["chosen"] or not row["rejected"]:
        raise ValueError(f"{path}:{lineno}: empty completion")
      pairs.append(PreferencePair(row["prompt"], row["chosen"], row["rejected"],
                                  row.get("margin"), row.get("subset")))
  return pairs


def gold_reward(completion: str, answer: str) -> float:
  """The known "true" reward of the synthetic studies: 1 for the exact answer, otherwise
  partial credit for right-aligned matching digits minus a penalty per wrong length."""
  got = extract_answer(completion)
  if got == answer:
    return 1.0
  matches = sum(a == b for a, b in zip(reversed(got), reversed(answer)))
  return 0.5 * matches / max(len(answer), 1) - 0.1 * abs(len(got) - len(answer))


def corrupt_answer(answer: str, rng: np.random.Generator) -> str:
  """A plausible wrong answer: change one digit, drop or add one."""
  digits = list(answer)
  kind = rng.integers(3) if len(digits) > 1 else 0
  if kind == 0:
    i = int(rng.integers(len(digits)))
    digits[i] = str((int(digits[i]) + int(rng.integers(1, 10))) % 10)
  elif kind == 1:
    del digits[int(rng.integers(len(digits)))]
  else:
    digits.insert(int(rng.integers(len(digits) + 1)), str(int(rng.integers(10))))
  out = "".join(digits).lstrip("0") or "0"
  return out if out != answer else answer + "1"


def synthetic_pairs(task: Task, rng: np.random.Generator, n: int, label_noise: float = 0.0,
                    split: str = "train", p_answer: float = 0.5) -> list[PreferencePair]:
  """Pairs ranked by `gold_reward`: two candidates per prompt (the answer with prob
  `p_answer`, else two corruptions), chosen = higher gold; labels flipped with prob
  `label_noise`."""
  pairs = []
  while len(pairs) < n:
    p = task.sample(rng, split)
    a = p.answer if rng.random() < p_answer else corrupt_answer(p.answer, rng)
    b = corrupt_answer(p.answer, rng)
    ga, gb = gold_reward(a, p.answer), gold_reward(b, p.answer)
    if a == b or ga == gb:
      continue
    chosen, rejected = (a, b) if ga > gb else (b, a)
    if rng.random() < label_noise:
      chosen, rejected = rejected, chosen
    pairs.append(PreferencePair(p.prompt, chosen, rejected, abs(ga - gb), task.name))
  return pairs


def pair_batch(pairs: Sequence[PreferencePair], tokenizer, seq_len: int,
               ref_logps: np.ndarray | None = None) -> PairBatch:
  """Encodes `BOS prompt completion EOS` for chosen then rejected; loss on completion+EOS."""
  from rewardlab.data.batching import sft_batch
  rows = [Problem(p.prompt, p.chosen) for p in pairs] + [Problem(p.prompt, p.rejected) for p in pairs]
  b = sft_batch(rows, tokenizer, seq_len)
  ref = np.zeros((2 * len(pairs),), np.float32) if ref_logps is None else ref_logps
  return PairBatch(b.tokens, b.valid, b.loss_mask, ref.astype(np.float32))
