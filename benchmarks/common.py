"""Shared benchmark helpers: timing and the machine's measured dense-matmul peak."""
from __future__ import annotations

import time

import jax
import jax.numpy as jnp


def time_fn(fn, *args, warmup: int = 2, iters: int = 5) -> float:
  """Median seconds per call of fn(*args) (blocks on the result)."""
  for _ in range(warmup):
    jax.block_until_ready(fn(*args))
  times = []
  for _ in range(iters):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return sorted(times)[len(times) // 2]


def time_interleaved(fns: dict, rounds: int = 5, warmup: int = 1) -> dict:
  """Median seconds per call of each zero-argument fn, timed in interleaved rounds
  (A B C, A B C, ...) so that a machine whose speed drifts affects all alike: ratios
  between them are what this is for."""
  for fn in fns.values():
    for _ in range(warmup):
      jax.block_until_ready(fn())
  times = {name: [] for name in fns}
  for _ in range(rounds):
    for name, fn in fns.items():
      t = time.perf_counter()
      jax.block_until_ready(fn())
      times[name].append(time.perf_counter() - t)
  return {name: sorted(ts)[len(ts) // 2] for name, ts in times.items()}


def peak_matmul_fn(n: int = 2048, dtype=jnp.float32):
  """(fn, flops): a zero-argument n x n x n matmul and its FLOP count, for measuring the
  dense-matmul peak (the MFU denominator) inside `time_interleaved`."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  return (lambda: f(a, b)), 2 * n ** 3


def matmul_peak_flops(n: int = 2048, dtype=jnp.float32) -> float:
  """Measured FLOP/s of an n x n x n matmul on the default device (the MFU denominator)."""
  fn, flops = peak_matmul_fn(n, dtype)
  return flops / time_fn(fn, warmup=2, iters=7)
