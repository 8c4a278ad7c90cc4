"""N seeds as one vmapped program vs N separate runs (rewardlab.sweep.vmapped).

    python benchmarks/vmap_seeds.py [--config configs/sft_arithmetic.py:tiny] [--seeds 4]
                                    [--steps 100] [--eval_every 0] [--rounds 2]
                                    [--set data.batch_size=8 --set model.d_model=32 ...]

Two measurements, side by side in the same process:
  runs:  wall time of N whole runs one after another (`PIPELINES[pipeline]`) vs one
         `run_seeds` call (build, compile, data, steps, checkpoints; SFT warm-ups of
         DPO/RM configs included, vmapped the same way), alternated `--rounds` times, fresh
         run directories each time; the minimum of each (least disturbed by other load);
  steps: the update step alone, N single-seed steps vs one vmapped N-seed step, timed in
         interleaved rounds (benchmarks/common.py) on the config's batch shapes.
No persistent compilation cache, so both sides compile. Not a test.

Measured on the lab's 2-core CPU, shared with other jobs (load average 16-18 during the
runs, so absolute times are inflated; the ratios are the result), N = 4, 100 steps, no eval:
  sft_arithmetic:tiny (d_model 64, 2 layers, batch 128 x 16 tokens):
    update step 378 ms sequential vs 426 ms vmapped -> 0.89x; whole runs 102.5 s vs 115.5 s -> 0.89x
  the same at micro size (--set model.d_model=32 model.n_layers=1 n_heads=2 n_kv_heads=1
  mlp_dim=64 data.batch_size=16):
    update step 15.1 ms vs 12.5 ms -> 1.21x; whole runs 58.1 s vs 33.2 s -> 1.75x
On 2 cores the tiny step already keeps both cores busy, so one program doing 4x the work
gains nothing (and per-seed-weight batched matmuls are a little slower); vmapping pays where
per-step overhead dominates: micro models, and compiling once instead of N times. On an
accelerator a tiny model leaves the chip mostly idle, which is where vmapped seeds should
pay most; not measured here (this task had no device).
"""
from __future__ import annotations

import argparse
import copy
import importlib.util
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from common import time_interleaved  # noqa: E402
from rewardlab.pipelines import BUILDERS, PIPELINES  # noqa: E402
from rewardlab.sharding import batch_sharding, shard_batch  # noqa: E402
from rewardlab.sweep.spec import parse_grid, set_field  # noqa: E402
from rewardlab.sweep.vmapped import run_seeds  # noqa: E402
from rewardlab.train.state import shardings_of  # noqa: E402
from rewardlab.train.step import make_update_step  # noqa: E402


def load(config_arg: str):
  path, _, variant = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location("bench_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def seed_configs(base, n: int, steps: int, eval_every: int, warmup_steps: int | None):
  configs = []
  for seed in range(n):
    c = copy.deepcopy(base)
    c.seed = seed
    c.train.update(steps=steps, eval_every=eval_every, checkpoint_every=steps, progress=False, tensorboard=False)
    if warmup_steps is not None and "sft_warmup" in c:
      c.sft_warmup.steps = warmup_steps
    configs.append(c)
  return configs


def time_runs(configs, rounds: int) -> dict:
  out = {"sequential": [], "vmapped": []}
  for _ in range(rounds):
    with tempfile.TemporaryDirectory() as tmp:
      t = time.perf_counter()
      for c in configs:
        PIPELINES[c.pipeline](c, os.path.join(tmp, "seq", f"seed_{c.seed}"))
      out["sequential"].append(time.perf_counter() - t)
      t = time.perf_counter()
      run_seeds(configs, [os.path.join(tmp, "vmap", f"seed_{c.seed}") for c in configs])
      out["vmapped"].append(time.perf_counter() - t)
  return {k: min(v) for k, v in out.items()} | {f"{k}_all": v for k, v in out.items()}


def time_steps(configs, rounds: int) -> dict:
  """Update step only: N separate single-seed steps vs one vmapped step, same batches."""
  with tempfile.TemporaryDirectory() as tmp:
    builts = [BUILDERS[c.pipeline](c, os.path.join(tmp, f"seed_{c.seed}")) for c in configs]
    p0, mesh = builts[0].pipeline, builts[0].mesh
    step = make_update_step(p0.graphdef, p0.loss_fn, p0.optimizer, p0.schedule, shardings_of(p0.state),
                            batch_sharding(mesh), donate=False, merge=p0.merge)
    vstep = jax.jit(jax.vmap(step))
    states = [b.pipeline.state for b in builts]
    batches = [b.pipeline.source(0, b.pipeline.state)[1].batches[0] for b in builts]
    placed = [shard_batch(x, mesh) for x in batches]
    stacked = jax.tree.map(lambda *xs: jnp.stack(xs), *states)
    stacked_batch = jax.tree.map(lambda *xs: np.stack(xs), *batches)
    times = time_interleaved({
        "sequential": lambda: [step(s, b) for s, b in zip(states, placed)],
        "vmapped": lambda: vstep(stacked, stacked_batch)}, rounds=rounds * 10, warmup=2)
  return times


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--config", default="configs/sft_arithmetic.py:tiny")
  ap.add_argument("--seeds", type=int, default=4)
  ap.add_argument("--steps", type=int, default=100)
  ap.add_argument("--eval_every", type=int, default=0)
  ap.add_argument("--warmup_steps", type=int, default=None, help="override sft_warmup.steps (DPO/RM configs)")
  ap.add_argument("--rounds", type=int, default=2)
  ap.add_argument("--set", action="append", default=[], help="FIELD=VALUE config override (repeatable)")
  args = ap.parse_args()
  base = load(args.config)
  for flag in args.set:
    field, (value,) = parse_grid(flag)
    set_field(base, field, value)
  configs = seed_configs(base, args.seeds, args.steps, args.eval_every, args.warmup_steps)
  print(f"{args.config} {' '.join(args.set)}: {args.seeds} seeds x {args.steps} steps (eval_every={args.eval_every}), "
        f"{jax.device_count()} {jax.devices()[0].platform} device(s), {os.cpu_count()} cores")
  steps = time_steps(configs, args.rounds)
  print(f"update step: {args.seeds} sequential {steps['sequential'] * 1e3:.1f} ms, one vmapped "
        f"{steps['vmapped'] * 1e3:.1f} ms -> {steps['sequential'] / steps['vmapped']:.2f}x")
  runs = time_runs(configs, args.rounds)
  print(f"whole runs: {args.seeds} sequential {runs['sequential']:.1f} s, vmapped {runs['vmapped']:.1f} s "
        f"-> {runs['sequential'] / runs['vmapped']:.2f}x  (all rounds: seq "
        f"{[round(x, 1) for x in runs['sequential_all']]}, vmap {[round(x, 1) for x in runs['vmapped_all']]})")


if __name__ == "__main__":
  main()
