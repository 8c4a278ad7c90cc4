"""STARC distance between reward functions on a finite (prompt, response) space (METHODS.md G).

Skalse et al. 2023, "STARC: A General Framework For Quantifying Differences Between Reward
Functions" (arXiv:2309.15257): d(R1, R2) = m(s(R1), s(R2)) with s(R) = c(R) / n(c(R)), where
c is a canonicalisation (linear; c(R1) = c(R2) iff R1 and R2 differ by potential shaping
and S'-redistribution, i.e. induce the same ordering of policies for every transition
model), n a norm and m a metric.

What is implemented, for the single-step (contextual bandit) setting of a prompt x and a
response y, seen as an episodic MDP: s = x, a = y, then a terminal state with value 0.

- canonicalisation: the paper's value-adjusted levelling, c(R)(s, a, s') = R(s, a, s')
  - V^pi(s) + gamma V^pi(s'), for a fixed reference policy pi. Here s' is terminal
  (V^pi = 0) and V^pi(x) = E_{y~pi(.|x)} R(x, y), so c(R)(x, y) = R(x, y) - E_pi R(x, .):
  remove the per-prompt mean under the reference distribution. Potential shaping adds
  gamma Phi(terminal) - Phi(x), a function of the prompt only, and S'-redistribution is
  vacuous (the next state is determined), so the invariances are exactly R -> R + f(x);
  c removes those and nothing else (c(R1) = c(R2) iff R1 - R2 depends on x alone).
- normalisation: the (optionally weighted) L2 norm over the (x, y) entries,
  ||c||_w = sqrt(sum_xy w(x, y) c(x, y)^2); s(R) = c(R) / ||c(R)||_w, or 0 when c(R) = 0
  (R is pure shaping: every policy is optimal), as in the paper.
- distance: ||s(R1) - s(R2)||_w / 2. Unit vectors are at most 2 apart, so d is in [0, 1]:
  0 iff R2 is a positive multiple of R1 up to shaping, 1 iff a negative multiple
  (s(-R) = -s(R)), 1/2 between a non-trivial reward and a trivial one.

With w(x, y) = mu(x) pi(y | x) (the reference distribution itself), ||u - v||^2 = 2 - 2 rho
for rho the pi-weighted correlation of the per-prompt-centred rewards, so d = sqrt((1 - rho) / 2),
the form of EPIC (Gleave et al. 2021) with the reference distribution as coverage.

Arrays: rewards [P, Y] over P prompts and up to Y candidate responses each; `mask` [P, Y]
marks real entries (ragged candidate sets); `ref_probs` [P, Y] the reference policy's
distribution over each prompt's candidates (rows sum to 1 over the mask).
"""
from __future__ import annotations

import collections

import numpy as np


def _prepare(rewards, ref_probs, mask, weights, where: str):
  r = np.asarray(rewards, np.float64)
  if r.ndim != 2:
    raise ValueError(f"{where}: rewards must be [P, Y], got shape {r.shape}")
  m = np.ones(r.shape, bool) if mask is None else np.asarray(mask, bool)
  p = np.asarray(ref_probs, np.float64)
  w = np.ones(r.shape) if weights is None else np.asarray(weights, np.float64)
  for name, a in (("ref_probs", p), ("mask", m), ("weights", w)):
    if a.shape != r.shape:
      raise ValueError(f"{where}: {name} {a.shape} must match rewards {r.shape}")
  if not np.all(np.isfinite(np.where(m, r, 0.0))):
    raise ValueError(f"{where}: rewards have non-finite entries inside the mask")
  p = np.where(m, p, 0.0)
  if (p < 0).any() or (w < 0).any():
    raise ValueError(f"{where}: ref_probs and weights must be >= 0")
  sums = p.sum(1)
  bad = np.flatnonzero(np.abs(sums - 1.0) > 1e-6)
  if len(bad):
    raise ValueError(f"{where}: ref_probs row {bad[0]} sums to {sums[bad[0]]:.6g} over the mask, not 1")
  return np.where(m, r, 0.0), p, m, np.where(m, w, 0.0)


def canonicalise(rewards, ref_probs, mask=None) -> np.ndarray:
  """c(R)(x, y) = R(x, y) - sum_y' pi(y' | x) R(x, y'): [P, Y] -> [P, Y] (0 outside the mask)."""
  r, p, m, _ = _prepare(rewards, ref_probs, mask, None, "canonicalise")
  return np.where(m, r - np.sum(p * r, 1, keepdims=True), 0.0)


def standardise(rewards, ref_probs, mask=None, weights=None) -> np.ndarray:
  """s(R) = c(R) / ||c(R)||_w (0 if c(R) = 0): [P, Y] -> [P, Y]."""
  _, _, m, w = _prepare(rewards, ref_probs, mask, weights, "standardise")
  c = canonicalise(rewards, ref_probs, mask)
  norm = np.sqrt(np.sum(w * c * c))
  # relative threshold: a reward that is shaping up to float rounding counts as trivial
  scale = np.sqrt(np.sum(w * np.square(np.where(m, np.asarray(rewards, np.float64), 0.0))))
  return c / norm if norm > 1e-12 * max(scale, 1.0) else np.zeros_like(c)


def starc_distance(r1, r2, ref_probs, mask=None, weights=None) -> float:
  """||s(R1) - s(R2)||_w / 2 in [0, 1]; symmetric, a pseudometric on rewards."""
  _, _, _, w = _prepare(r1, ref_probs, mask, weights, "starc_distance")
  s1, s2 = standardise(r1, ref_probs, mask, weights), standardise(r2, ref_probs, mask, weights)
  return float(np.sqrt(np.sum(w * np.square(s1 - s2))) / 2.0)


def starc_matrix(rewards: dict, ref_probs, mask=None, weights=None) -> dict:
  """Pairwise distances {(name_a, name_b): d} for a dict of named [P, Y] rewards."""
  names = list(rewards)
  return {(a, b): starc_distance(rewards[a], rewards[b], ref_probs, mask, weights)
          for i, a in enumerate(names) for b in names[i + 1:]}


def empirical_space(samples_per_prompt):
  """The finite space spanned by samples of the reference policy.

  samples_per_prompt: P lists of sampled completions (repeats allowed) -> (candidates: P
  lists of the distinct completions, sorted; ref_probs [P, Y] their empirical frequencies;
  mask [P, Y]; first [U]: each candidate's first position in the concatenated samples, so
  per-sample values `v[first]` are per-candidate values in `candidates` order), Y the
  largest number of distinct completions of any prompt, U the total number of candidates."""
  candidates, counts, first, offset = [], [], [], 0
  for i, samples in enumerate(samples_per_prompt):
    samples = list(samples)
    if not samples:
      raise ValueError(f"empirical_space: prompt {i} has no samples")
    seen = {}
    for j, text in enumerate(samples):
      seen.setdefault(text, offset + j)
    cands, tally = sorted(seen), collections.Counter(samples)
    candidates.append(cands)
    counts.append(np.array([tally[c] for c in cands], np.float64))
    first += [seen[c] for c in cands]
    offset += len(samples)
  probs = np.zeros((len(candidates), max(len(u) for u in candidates)))
  mask = np.zeros(probs.shape, bool)
  for i, c in enumerate(counts):
    probs[i, :len(c)], mask[i, :len(c)] = c / c.sum(), True
  return candidates, probs, mask, np.asarray(first, np.int64)


def to_grid(values, candidates) -> np.ndarray:
  """Flat per-candidate values (prompt-major, in `candidates` order) -> [P, Y] (0 padded)."""
  values = np.asarray(values, np.float64)
  sizes = [len(u) for u in candidates]
  if values.shape != (sum(sizes),):
    raise ValueError(f"to_grid: {values.shape} values for {sum(sizes)} candidates")
  out = np.zeros((len(candidates), max(sizes)))
  for i, part in enumerate(np.split(values, np.cumsum(sizes)[:-1])):
    out[i, :len(part)] = part
  return out
