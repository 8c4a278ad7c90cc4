"""Turning text into padded token batches with attention and loss masks."""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np

from rewardlab.data.tokenizer import ByteTokenizer
from rewardlab.data.tasks import Problem


class SequenceBatch(NamedTuple):
  """Right-padded prompt+completion sequences.

  tokens:    [B, T] int32  BOS prompt completion EOS PAD...
  valid:     [B, T] bool   real tokens (attention mask)
  loss_mask: [B, T] bool   completion tokens incl. EOS: the targets the loss scores
  """
  tokens: np.ndarray
  valid: np.ndarray
  loss_mask: np.ndarray


class PromptBatch(NamedTuple):
  """Left-padded prompts for generation: tokens/valid [B, P]."""
  tokens: np.ndarray
  valid: np.ndarray


def epoch_batch_indices(key, k: int, n_items: int, batch_size: int) -> np.ndarray:
  """Indices of batch k of a dataset reshuffled every epoch: a pure function of
  (key, k), so a resumed run sees the same batches. key: ints identifying the stream."""
  epoch, j = divmod(k, n_items // batch_size)
  order = np.random.default_rng([*key, epoch]).permutation(n_items)
  return order[j * batch_size:(j + 1) * batch_size]


def sft_batch(problems: Sequence[Problem], tokenizer: ByteTokenizer, seq_len: int) -> SequenceBatch:
  """Encodes (prompt, answer) pairs as `BOS prompt answer EOS`, loss on `answer EOS` only."""
  b = len(problems)
  tokens = np.full((b, seq_len), tokenizer.pad_id, np.int32)
  valid = np.zeros((b, seq_len), bool)
  loss_mask = np.zeros((b, seq_len), bool)
  for i, (prompt, answer) in enumerate(problems):
    p = tokenizer.encode(prompt, bos=True)
    c = tokenizer.encode(answer, eos=True)
    n = len(p) + len(c)
    if n > seq_len:
      raise ValueError(f"sft_batch: example {i} ({prompt!r} -> {answer!r}) has {n} tokens, "
                       f"over data.seq_len={seq_len}")
    tokens[i, :n] = p + c
    valid[i, :n] = True
    loss_mask[i, len(p):n] = True
  return SequenceBatch(tokens, valid, loss_mask)


def prompt_batch(prompts: Sequence[str], tokenizer: ByteTokenizer, max_prompt_len: int) -> PromptBatch:
  """Left-pads `BOS prompt` to max_prompt_len (the last real token sits at the end)."""
  if not prompts:
    raise ValueError("prompt_batch: empty prompt list")
  b = len(prompts)
  tokens = np.full((b, max_prompt_len), tokenizer.pad_id, np.int32)
  valid = np.zeros((b, max_prompt_len), bool)
  for i, prompt in enumerate(prompts):
    ids = tokenizer.encode(prompt, bos=True)
    if len(ids) > max_prompt_len:
      raise ValueError(f"prompt_batch: prompt {i} ({prompt[:40]!r}...) has {len(ids)} tokens, "
                       f"over max_prompt_len={max_prompt_len}")
    tokens[i, max_prompt_len - len(ids):] = ids
    valid[i, max_prompt_len - len(ids):] = True
  return PromptBatch(tokens, valid)
