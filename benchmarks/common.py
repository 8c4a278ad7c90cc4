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


def matmul_peak_flops(n: int = 2048, dtype=jnp.float32) -> float:
  """Measured FLOP/s of an n x n x n matmul on the default device (the MFU denominator)."""
  a = jax.random.normal(jax.random.PRNGKey(0), (n, n), dtype)
  b = jax.random.normal(jax.random.PRNGKey(1), (n, n), dtype)
  f = jax.jit(lambda a, b: a @ b)
  return 2 * n ** 3 / time_fn(f, a, b, warmup=2, iters=7)
