"""Exact-match accuracy of greedy decoding on held-out synthetic problems."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np

from rewardlab.data import ByteTokenizer, Problem, Task, prompt_batch
from rewardlab.distributed import to_host


def exact_match(generate: Callable, params, task: Task, problems: Sequence[Problem],
                tokenizer: ByteTokenizer, max_prompt_len: int, batch_size: int,
                place: Callable = lambda x: x) -> dict:
  """generate(params, tokens, valid) -> (completion ids, mask). Returns accuracy + examples.

  The last batch is padded by repeating problems (so shapes stay static); only the real
  problems are counted.
  """
  correct, examples = [], []
  for start in range(0, len(problems), batch_size):
    chunk = list(problems[start:start + batch_size])
    n_real = len(chunk)
    chunk += [chunk[-1]] * (batch_size - n_real)
    batch = prompt_batch([p.prompt for p in chunk], tokenizer, max_prompt_len)
    ids, _ = generate(params, *place((batch.tokens, batch.valid)))
    texts = tokenizer.decode_batch(np.asarray(to_host(ids)))[:n_real]
    for prob, text in zip(chunk[:n_real], texts):
      ok = task.verify(text, prob.answer)
      correct.append(ok)
      if len(examples) < 4:
        examples.append(f"{prob.prompt}{text}  [{'ok' if ok else 'want ' + prob.answer}]")
  return {"accuracy": float(np.mean(correct)) if correct else 0.0, "n": len(correct),
          "examples": examples}
