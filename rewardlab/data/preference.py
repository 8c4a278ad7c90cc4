"""Preference data: the prompt/chosen/rejected shape (TRL's standard and conversational
preference formats, explicit or implicit prompt; see formats.py), JSONL / Parquet loading
with file:line errors, synthetic pairs labelled by a known gold reward (with label noise, ties,
a spurious length correlate, attribute ratings and step labels), and paired batching.

Row fields: chosen, rejected (non-empty, chosen != rejected) and prompt (absent = implicit
prompt), all strings or all message lists; optional margin (float), subset, category (str), tie (bool), chosen_ratings /
rejected_ratings (lists of floats, one per attribute), chosen_steps / rejected_steps
(lists of 0/1 labels, one per reasoning step).
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from rewardlab.data.chat import ChatFormat
from rewardlab.data.formats import (RowError, check_completion_messages, check_completion_text, check_messages,
                                    check_prompt_messages, is_conversational, load_rows, mixed_format_error,
                                    need_chat, render_completion, render_prompt, require_object, resolve_chat,
                                    shared_message_prefix, shared_text_prefix, string_field)
from rewardlab.data.tasks import Problem, Task, extract_answer


class PreferencePair(NamedTuple):
  prompt: str
  chosen: str
  rejected: str
  margin: float | None = None
  subset: str | None = None
  category: str | None = None
  tie: bool = False
  chosen_ratings: tuple | None = None
  rejected_ratings: tuple | None = None
  chosen_steps: tuple | None = None
  rejected_steps: tuple | None = None
  win_probs: tuple | None = None   # (P(chosen > pi), P(rejected > pi)) from on-policy groups (SPPO)
  smoothing: float = 0.0           # per-pair label smoothing (CREAM: 1 - judge consistency)
  chosen_token_rewards: tuple | None = None    # one reward per completion token (TGDPO)
  rejected_token_rewards: tuple | None = None


class PairBatch(NamedTuple):
  """Pair-major rows (`pair_rows`: chosen 0, rejected 0, chosen 1, ...) of right-padded
  sequences, so one forward pass scores both and any contiguous block of rows (a device's, a
  process's) holds whole pairs. tokens/valid/loss_mask: [2B, T]; ref_logps: [2B] summed
  reference log-probs of each completion (zeros for reference-free objectives);
  win_prob: [2B] each completion's estimated P(y > pi) (SPPO; 1 / 0 for labelled pairs);
  smoothing: [2B] the pair's label smoothing on both of its rows (CREAM);
  token_rewards: [2B, T-1] per-token rewards aligned with next-token log-probs (TGDPO; else [2B, 1]);
  ref_token_logps: [2B, T-1] the reference's per-token log-probs (TGDPO; else [2B, 1])."""
  rows_per_example = 2   # train.step.micro_split keeps a pair's rows together
  tokens: np.ndarray
  valid: np.ndarray
  loss_mask: np.ndarray
  ref_logps: np.ndarray
  win_prob: np.ndarray
  smoothing: np.ndarray
  token_rewards: np.ndarray
  ref_token_logps: np.ndarray


REQUIRED = ("prompt", "chosen", "rejected")
_LISTS = ("chosen_ratings", "rejected_ratings", "chosen_steps", "rejected_steps",
          "chosen_token_rewards", "rejected_token_rewards")


def _standard_texts(row: dict, where: str) -> tuple[str, str, str]:
  """(prompt, chosen, rejected) of a standard row; no "prompt" = implicit prompt."""
  chosen, rejected = string_field(row, "chosen", where), string_field(row, "rejected", where)
  if "prompt" in row:
    prompt = string_field(row, "prompt", where)
  else:
    k = shared_text_prefix(chosen, rejected)
    if k == 0:
      raise RowError(where, "no 'prompt' field, and chosen / rejected share no text up to a whitespace "
                     "to take as the implicit prompt", "implicit prompt not found")
    prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
  for field, text in (("chosen", chosen), ("rejected", rejected)):
    check_completion_text(text, field, where)
  return prompt, chosen, rejected


def _conversational_texts(row: dict, where: str, chat: ChatFormat | None) -> tuple[str, str, str]:
  """(prompt, chosen, rejected) of a conversational row, rendered with the chat template;
  no "prompt" = implicit prompt (the messages chosen and rejected share)."""
  mixed_format_error(row, REQUIRED, where)
  chosen = check_messages(row.get("chosen"), "chosen", where)
  rejected = check_messages(row.get("rejected"), "rejected", where)
  if "prompt" in row:
    prompt = check_messages(row["prompt"], "prompt", where)
  else:
    k = shared_message_prefix(chosen, rejected)
    if k == 0 or k == len(chosen) or k == len(rejected):
      raise RowError(where, f"no 'prompt' field, and chosen / rejected share {k} leading messages: the "
                     "implicit prompt needs at least one shared message and a different reply after it",
                     "implicit prompt not found")
    prompt, chosen, rejected = chosen[:k], chosen[k:], rejected[k:]
  check_prompt_messages(prompt, "prompt", where)
  check_completion_messages(chosen, "chosen", where)
  check_completion_messages(rejected, "rejected", where)
  fmt = need_chat(chat, where)
  texts = render_prompt(fmt, prompt, where), *(render_completion(fmt, prompt, c, where) for c in (chosen, rejected))
  for field, text in zip(("chosen", "rejected"), texts[1:]):
    check_completion_text(text, field, where)
  return texts


def pair_from_row(row, where: str, chat: ChatFormat | None = None) -> PreferencePair:
  """Validates one row (a dict) into a PreferencePair; errors name `where` and the field.

  Standard (strings) or conversational (message lists, rendered with `chat`, see
  rewardlab.data.chat), with an explicit or implicit prompt (formats.py)."""
  row = require_object(row, where, REQUIRED)
  if is_conversational(row, REQUIRED):
    prompt, chosen, rejected = _conversational_texts(row, where, chat)
  else:
    prompt, chosen, rejected = _standard_texts(row, where)
  if chosen == rejected:
    raise RowError(where, "chosen equals rejected")
  margin = row.get("margin")
  if margin is not None and (isinstance(margin, bool) or not isinstance(margin, (int, float))):
    raise RowError(where, f"field 'margin' must be a number, got {margin!r}", "non-numeric field 'margin'")
  for field in ("subset", "category"):
    if row.get(field) is not None and not isinstance(row[field], str):
      raise RowError(where, f"field {field!r} must be a string, got {row[field]!r}", f"non-string field {field!r}")
  if row.get("tie") is not None and not isinstance(row["tie"], bool):
    raise RowError(where, f"field 'tie' must be true or false, got {row['tie']!r}", "non-boolean field 'tie'")
  lists = {}
  for field in _LISTS:
    v = row.get(field)
    if v is not None:
      v = list(v) if not isinstance(v, (str, bytes)) and hasattr(v, "__iter__") else v
      if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool) for x in v):
        raise RowError(where, f"field {field!r} must be a list of numbers, got {row[field]!r}",
                       f"bad field {field!r}")
      v = tuple(float(x) for x in v)
    lists[field] = v
  return PreferencePair(prompt, chosen, rejected, None if margin is None else float(margin), row.get("subset"),
                        row.get("category"), bool(row.get("tie") or False), **lists)


def load_preference_jsonl(path: str, skipped: dict | None = None, tokenizer=None) -> list[PreferencePair]:
  """Reads one JSON object per line. A malformed line raises ValueError naming file:line and
  the problem, or, when a `skipped` dict is given, is counted there by reason. `tokenizer`
  renders conversational rows (required for them; the byte tokenizer has a default template)."""
  if not path.endswith((".jsonl", ".json")):
    raise ValueError(f"{path}: expected a .jsonl / .json file")
  return load_preferences(path, skipped, tokenizer)


def load_preference_parquet(path: str, skipped: dict | None = None, tokenizer=None) -> list[PreferencePair]:
  """Reads a Parquet table with the same columns; errors name file:row (1-based)."""
  if not path.endswith(".parquet"):
    raise ValueError(f"{path}: expected a .parquet file")
  return load_preferences(path, skipped, tokenizer)


def load_preferences(path: str, skipped: dict | None = None, tokenizer=None) -> list[PreferencePair]:
  """JSONL (.jsonl/.json) or Parquet (.parquet) by extension, in TRL's standard or
  conversational preference format (explicit or implicit prompt). Conversational rows are
  rendered with `tokenizer`'s chat template and need it."""
  chat = resolve_chat(tokenizer)
  return load_rows(path, lambda row, where: pair_from_row(row, where, chat), skipped, "preference")


def preference_file(path: str, skipped: dict | None = None, tokenizer=None, seq_len: int | None = None):
  """The pairs of a JSONL / Parquet preference file as a `row_file.RowFile`: indexed a share per
  process, each pair read when a batch needs it. With seq_len, a pair whose chosen or rejected
  row does not fit is a bad row ("too_long"): skipped and counted with `skipped`, else an error."""
  from rewardlab.data.row_file import RowFile
  chat = resolve_chat(tokenizer)
  check = None if seq_len is None else length_check(tokenizer, seq_len)
  return RowFile(path, lambda row, where: pair_from_row(row, where, chat), check, skipped, "preference")


def row_tokens(item, tokenizer, completions=lambda p: (p.chosen, p.rejected)) -> int:
  """Tokens of `BOS prompt completion EOS` for the longest of the item's completions."""
  return len(tokenizer.encode(item.prompt, bos=True)) + max(len(tokenizer.encode(c, eos=True))
                                                            for c in completions(item))


def length_check(tokenizer, seq_len: int, completions=lambda p: (p.chosen, p.rejected)):
  """check(item, where) for RowFile: a RowError ("too_long") when the item does not fit seq_len."""
  def check(item, where: str):
    n = row_tokens(item, tokenizer, completions)
    if n > seq_len:
      raise RowError(where, f"needs {n} tokens, over data.seq_len={seq_len}", "too_long")
  return check


def drop_too_long(pairs, tokenizer, seq_len: int, skipped: dict | None = None,
                  completions=lambda p: (p.chosen, p.rejected), what: str = "preference pair") -> list:
  """Rows whose `BOS prompt completion EOS` fits seq_len for each of their completions (a
  pair's chosen and rejected by default); the others raise ValueError naming the row, or are
  counted in `skipped["too_long"]`."""
  kept = []
  for i, p in enumerate(pairs):
    n = row_tokens(p, tokenizer, completions)
    if n <= seq_len:
      kept.append(p)
    elif skipped is None:
      raise ValueError(f"{what} {i} ({p.prompt[:30]!r}...) needs {n} tokens, over "
                       f"data.seq_len={seq_len}")
    else:
      skipped["too_long"] = skipped.get("too_long", 0) + 1
  return kept


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


def arithmetic_slip(answer: str, rng: np.random.Generator) -> str:
  """The errors a model that half-learned the task makes: off by a small amount or a
  dropped/extra carry (+-1, +-2, +-10, +-100), never negative, never the answer."""
  deltas = [d for d in (-100, -10, -2, -1, 1, 2, 10, 100) if int(answer) + d >= 0]
  return str(int(answer) + int(rng.choice(deltas)))


def rm_corruption(answer: str, rng: np.random.Generator, p_slip: float) -> str:
  """A wrong answer for reward-model data: an arithmetic slip with prob `p_slip`, else a
  digit-level `corrupt_answer`."""
  return arithmetic_slip(answer, rng) if rng.random() < p_slip else corrupt_answer(answer, rng)


def synthetic_pairs(task: Task, rng: np.random.Generator, n: int, label_noise: float = 0.0,
                    split: str = "train", p_answer: float = 0.5,
                    token_rewards: bool = False) -> list[PreferencePair]:
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
    tok = dict(chosen_token_rewards=gold_token_rewards(chosen, p.answer),
               rejected_token_rewards=gold_token_rewards(rejected, p.answer)) if token_rewards else {}
    pairs.append(PreferencePair(p.prompt, chosen, rejected, abs(ga - gb), task.name, **tok))
  return pairs


def gold_token_rewards(completion: str, answer: str) -> tuple:
  """Token-level gold reward for byte-tokenised synthetic answers: per character of the
  completion (then 0 for its EOS), +1 for a digit that matches the answer's digit at the
  same right-aligned place, -1 for a wrong or extra digit, 0 for anything else."""
  first = completion.split("\n", 1)[0]
  rewards = [0.0] * len(completion.encode("utf-8"))
  for k, ch in enumerate(first):
    if ch.isdigit():
      place = len(first) - 1 - k
      rewards[k] = 1.0 if place < len(answer) and answer[len(answer) - 1 - place] == ch else -1.0
  return tuple(rewards) + (0.0,)


def pair_rows(chosen: Sequence, rejected: Sequence) -> list:
  """The pair-major row order of PairBatch / RMBatch: [c0, r0, c1, r1, ...]."""
  return [x for pair in zip(chosen, rejected) for x in pair]


def split_pair_rows(x):
  """[2B, ...] pair-major rows -> (chosen [B, ...], rejected [B, ...]), numpy or jax. A
  reshape, so a row block sharded over devices splits without moving data."""
  pairs = x.reshape(x.shape[0] // 2, 2, *x.shape[1:])
  return pairs[:, 0], pairs[:, 1]


def pair_batch(pairs: Sequence[PreferencePair], tokenizer, seq_len: int,
               ref_logps: np.ndarray | None = None, ref_token_logps: np.ndarray | None = None,
               token_rewards: bool = False) -> PairBatch:
  """Encodes `BOS prompt completion EOS` for each pair's chosen and rejected completion,
  pair-major (`pair_rows`); loss on completion+EOS. ref_logps [2B] / ref_token_logps
  [2B, T-1] in the same row order (a [B, 2, ...] cache reshaped)."""
  from rewardlab.data.batching import sft_batch
  rows = pair_rows([Problem(p.prompt, p.chosen) for p in pairs], [Problem(p.prompt, p.rejected) for p in pairs])
  b = sft_batch(rows, tokenizer, seq_len)
  ref = np.zeros((2 * len(pairs),), np.float32) if ref_logps is None else ref_logps
  win = np.array([w for p in pairs for w in (p.win_probs or (1.0, 0.0))], np.float32)
  smooth = np.repeat(np.array([p.smoothing for p in pairs], np.float32), 2)
  n = 2 * len(pairs)
  tok_r = np.zeros((n, seq_len - 1 if token_rewards else 1), np.float32)
  if token_rewards:
    for i, r in enumerate(pair_rows([p.chosen_token_rewards for p in pairs], [p.rejected_token_rewards for p in pairs])):
      if r is None:
        raise ValueError(f"pair_batch: row {i // 2} has no token rewards (TGDPO needs "
                         "chosen_token_rewards / rejected_token_rewards)")
      start = int(np.argmax(b.loss_mask[i])) - 1        # log-prob index of the first completion token
      if len(r) != int(b.loss_mask[i].sum()):
        raise ValueError(f"pair_batch: row {i // 2} has {len(r)} token rewards for "
                         f"{int(b.loss_mask[i].sum())} completion tokens (incl. EOS)")
      tok_r[i, start:start + len(r)] = r
  ref_tok = (np.zeros((n, 1), np.float32) if ref_token_logps is None else ref_token_logps.astype(np.float32))
  return PairBatch(b.tokens, b.valid, b.loss_mask, ref.astype(np.float32), win, smooth, tok_r, ref_tok)


class UnpairedBatch(NamedTuple):
  """KTO's unpaired rows (formats.UnpairedExample), right-padded.

  tokens/valid/loss_mask:          [B, T] `BOS prompt completion EOS`, loss on completion + EOS
  desirable:                       [B] bool, the row's label
  kl_tokens/kl_valid/kl_loss_mask: [B, T] prompt i with completion i-1 (a mismatched pair, as
                                   TRL builds them): KTO's estimate of KL(pi || ref) for z
  ref_logps / kl_ref_logps:        [B] the reference's summed completion log-probs of each
                                   (zeros until computed)"""
  tokens: np.ndarray
  valid: np.ndarray
  loss_mask: np.ndarray
  desirable: np.ndarray
  kl_tokens: np.ndarray
  kl_valid: np.ndarray
  kl_loss_mask: np.ndarray
  ref_logps: np.ndarray
  kl_ref_logps: np.ndarray


def unpaired_batch(examples: Sequence, tokenizer, seq_len: int, ref_logps: np.ndarray | None = None,
                   kl_ref_logps: np.ndarray | None = None, kl_completions: Sequence[str] | None = None) -> UnpairedBatch:
  """Encodes UnpairedExamples and their mismatched KL pairs (see UnpairedBatch): prompt i with
  `kl_completions[i]`, by default the previous example's completion."""
  from rewardlab.data.batching import sft_batch
  if kl_completions is None:
    if len(examples) < 2:
      raise ValueError("unpaired_batch: KTO's mismatched KL pairs need at least 2 examples per batch")
    kl_completions = [examples[i - 1].completion for i in range(len(examples))]
  b = sft_batch([Problem(e.prompt, e.completion) for e in examples], tokenizer, seq_len)
  kl = sft_batch([Problem(e.prompt, c) for e, c in zip(examples, kl_completions)], tokenizer, seq_len)
  zeros = np.zeros((len(examples),), np.float32)
  return UnpairedBatch(b.tokens, b.valid, b.loss_mask, np.array([e.label for e in examples], bool),
                       kl.tokens, kl.valid, kl.loss_mask,
                       zeros if ref_logps is None else np.asarray(ref_logps, np.float32),
                       zeros if kl_ref_logps is None else np.asarray(kl_ref_logps, np.float32))


# --- synthetic reward-model data -----------------------------------------------------------

ATTRIBUTES = ("correctness", "format", "verbosity")   # ratings of the synthetic data
STEP_SEPARATOR = ";"


def verbose_suffix(rng: np.random.Generator) -> str:
  """Filler after the answer line: longer, never changes the gold reward (first line only)."""
  return "\n" + "." * int(rng.integers(1, 4))


def step_text(digits: str) -> str:
  """A completion written as one step per digit, least significant first (the order column
  addition produces them): '123' -> '3;2;1;'."""
  return "".join(d + STEP_SEPARATOR for d in reversed(digits))


def step_labels(digits: str, answer: str) -> tuple:
  """Labels of the steps of `step_text(digits)`: step k is correct iff the k+1 lowest
  digits are right; the last step is correct only if the whole answer is (no digit missing
  or extra). These agree with `gold_reward`'s right-aligned partial credit."""
  rd, ra = digits[::-1], answer[::-1]
  labels = [float(rd[:k + 1] == ra[:k + 1]) for k in range(len(rd))]
  labels[-1] = float(digits == answer)
  return tuple(labels)


def _ratings(text: str, answer: str) -> tuple:
  first = text.split("\n", 1)[0]
  return (gold_reward(text, answer), float(first.isdigit()), float(len(text) - len(first)) / 3.0)


def _pair(problem, chosen: str, rejected: str, margin, subset, category, steps: bool,
          tie: bool = False) -> PreferencePair:
  """Attaches ratings (or, for step-formatted text, step labels) computed from the text."""
  if steps:
    digits = [t.split("\n", 1)[0].replace(STEP_SEPARATOR, "")[::-1] for t in (chosen, rejected)]
    labels = [step_labels(d, problem.answer) for d in digits]
    return PreferencePair(problem.prompt, chosen, rejected, margin, subset, category, tie,
                          chosen_steps=labels[0], rejected_steps=labels[1])
  return PreferencePair(problem.prompt, chosen, rejected, margin, subset, category, tie,
                        _ratings(chosen, problem.answer), _ratings(rejected, problem.answer))


def synthetic_rm_pairs(task: Task, rng: np.random.Generator, n: int, *, split: str = "train",
                       label_noise: float = 0.0, length_bias: float = 0.0, tie_frac: float = 0.0,
                       p_answer: float = 0.5, rejected_per_prompt: int = 1, length_trap: float = 0.0,
                       steps: bool = False, p_slip: float = 0.5) -> list[PreferencePair]:
  """Gold-labelled pairs for reward modelling.

  Each prompt gets a chosen response (the answer with prob `p_answer`, else a wrong answer)
  and `rejected_per_prompt` lower-gold wrong answers (`rm_corruption`: arithmetic slips
  with prob `p_slip`, else digit edits) (3 gives RewardBench's best-of-4 groups).
  Spurious correlate: every response gets a verbose suffix with prob 1/2, except that with
  prob `length_bias` the chosen is made verbose and the rejected terse (train-time
  correlation), and with prob `length_trap` the reverse (the held-out "length_trap" subset).
  `tie_frac` of rows are ties (the same answer, with and without the suffix); labels of
  non-tied pairs flip with prob `label_noise`. `steps=True` writes completions as
  'd;d;d;' with per-step labels for process reward models.
  Subsets: answer_vs_wrong / wrong_vs_wrong / length_trap / tie; category: answer length.
  """
  pairs = []
  while len(pairs) < n:
    p = task.sample(rng, split)
    category = f"{len(p.answer)}-digit"
    render = step_text if steps else (lambda d: d)
    if rng.random() < tie_frac:
      a = render(p.answer if rng.random() < p_answer else rm_corruption(p.answer, rng, p_slip))
      pairs.append(_pair(p, a + verbose_suffix(rng), a, 0.0, "tie", category, steps, tie=True))
      continue
    good = p.answer if rng.random() < p_answer else rm_corruption(p.answer, rng, p_slip)
    bads = []
    for _ in range(50 * rejected_per_prompt):
      b = rm_corruption(p.answer, rng, p_slip)
      if b not in bads and gold_reward(b, p.answer) < gold_reward(good, p.answer):
        bads.append(b)
      if len(bads) == rejected_per_prompt:
        break
    if len(bads) < rejected_per_prompt:
      continue
    u = rng.random()
    for b in bads:
      subset = "answer_vs_wrong" if good == p.answer else "wrong_vs_wrong"
      c_text, r_text = render(good), render(b)
      if u < length_bias:
        c_text += verbose_suffix(rng)
      elif u < length_bias + length_trap:
        r_text += verbose_suffix(rng)
        subset = "length_trap"
      else:
        c_text += verbose_suffix(rng) if rng.random() < 0.5 else ""
        r_text += verbose_suffix(rng) if rng.random() < 0.5 else ""
      margin = gold_reward(good, p.answer) - gold_reward(b, p.answer)
      if rng.random() < label_noise:
        c_text, r_text = r_text, c_text
      pairs.append(_pair(p, c_text, r_text, margin, subset, category, steps))
  return pairs[:n]


class RMBatch(NamedTuple):
  """Pair-major rows (`pair_rows`: chosen 0, rejected 0, chosen 1, ...) of right-padded
  `BOS prompt completion EOS`.

  tokens/valid [2B, T]; completion_start [2B] (first completion token); margin/tie [B];
  ratings/ratings_mask [2B, k] (attribute ratings where given); steps/steps_mask [2B, S]
  (step labels where given)."""
  rows_per_example = 2   # train.step.micro_split keeps a pair's rows together
  tokens: np.ndarray
  valid: np.ndarray
  completion_start: np.ndarray
  margin: np.ndarray
  tie: np.ndarray
  ratings: np.ndarray
  ratings_mask: np.ndarray
  steps: np.ndarray
  steps_mask: np.ndarray


def _fill(rows, width: int, what: str, where: str):
  out = np.zeros((len(rows), width), np.float32)
  mask = np.zeros((len(rows), width), bool)
  for i, v in enumerate(rows):
    if v is None:
      continue
    if len(v) > width:
      raise ValueError(f"rm_batch: {where} row {i}: {len(v)} {what}, over the configured {width}")
    out[i, :len(v)] = v
    mask[i, :len(v)] = True
  return out, mask


def rm_batch(pairs: Sequence[PreferencePair], tokenizer, seq_len: int, num_attributes: int = 0,
             max_steps: int = 0) -> RMBatch:
  from rewardlab.data.batching import sft_batch
  rows = pair_rows([Problem(p.prompt, p.chosen) for p in pairs], [Problem(p.prompt, p.rejected) for p in pairs])
  b = sft_batch(rows, tokenizer, seq_len)
  start = np.argmax(b.loss_mask, axis=1).astype(np.int32)
  ratings, rmask = _fill(pair_rows([p.chosen_ratings for p in pairs], [p.rejected_ratings for p in pairs]),
                         num_attributes, "ratings", "attribute")
  steps, smask = _fill(pair_rows([p.chosen_steps for p in pairs], [p.rejected_steps for p in pairs]),
                       max_steps, "step labels", "step")
  margin = np.array([p.margin or 0.0 for p in pairs], np.float32)
  tie = np.array([p.tie for p in pairs], bool)
  return RMBatch(b.tokens, b.valid, start, margin, tie, ratings, rmask, steps, smask)
