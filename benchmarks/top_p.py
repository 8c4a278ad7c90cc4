"""Top-p (nucleus) truncation per decode step: the sampler's bisection on the logit
threshold (`rewardlab.sampling.nucleus_threshold`) vs sorting the vocabulary, side by side.

    python benchmarks/top_p.py [--batch 16] [--vocabs 512,32768,151936] [--top-p 0.9]

Both keep the smallest set of top tokens whose softmax mass reaches top_p, each up to f32
rounding of that mass; the table also counts the rows where they kept different tokens.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import time_interleaved  # noqa: E402
from rewardlab.sampling import SamplingParams, process_logits  # noqa: E402


def nucleus_by_sorting(logits: jax.Array, top_p: float) -> jax.Array:
  """The sort-based truncation the sampler used before: descending sort, cumulative mass."""
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  keep_sorted = jnp.cumsum(probs, axis=-1) - probs < top_p
  threshold = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits >= threshold, logits, -jnp.inf)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--vocabs", default="512,32768,151936")
  ap.add_argument("--top-p", type=float, default=0.9)
  ap.add_argument("--rounds", type=int, default=7)
  args = ap.parse_args()
  sp = SamplingParams(temperature=1.0, top_p=args.top_p)
  bisect = jax.jit(lambda x: process_logits(x, sp))
  sort = jax.jit(lambda x: nucleus_by_sorting(x, args.top_p))
  print(f"batch {args.batch}, top_p {args.top_p}; medians of {args.rounds} interleaved rounds")
  print(f"{'vocab':>7} {'sort ms':>9} {'bisection ms':>13} {'speed-up':>9} {'rows kept differently':>22}")
  for vocab in map(int, args.vocabs.split(",")):
    logits = jax.random.normal(jax.random.PRNGKey(vocab), (args.batch, vocab)) * 3.0
    t = time_interleaved({"sort": lambda: sort(logits), "bisect": lambda: bisect(logits)}, rounds=args.rounds)
    differ = int(np.sum(np.any(np.isfinite(sort(logits)) != np.isfinite(bisect(logits)), axis=-1)))
    print(f"{vocab:>7} {t['sort'] * 1e3:>9.2f} {t['bisect'] * 1e3:>13.2f} {t['sort'] / t['bisect']:>8.1f}x "
          f"{differ:>15} of {args.batch}")


if __name__ == "__main__":
  main()
