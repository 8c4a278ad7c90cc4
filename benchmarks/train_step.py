"""Update-step throughput and model-FLOPs utilisation (MFU) of the SFT step.

    python benchmarks/train_step.py [--sizes small,base] [--batch 32] [--seq 64]

MFU = (3 x forward FLOPs per token x tokens/s) / measured dense-matmul peak, where the
peak is an f32 2048^3 matmul timed in the same run on the same device. Not a test.
"""
from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from common import matmul_peak_flops, time_fn  # noqa: E402
from rewardlab.data import SequenceBatch  # noqa: E402
from rewardlab.models import ModelConfig, Transformer  # noqa: E402
from rewardlab.train.config import base_config  # noqa: E402
from rewardlab.train.optim import make_optimizer  # noqa: E402
from rewardlab.pipelines.sft import make_sft_loss_fn  # noqa: E402
from rewardlab.sharding import batch_sharding, make_mesh, shard_batch  # noqa: E402
from rewardlab.train.state import create_train_state, init_params, num_params, shardings_of  # noqa: E402
from rewardlab.train.step import make_update_step  # noqa: E402

SIZES = {
    "tiny": dict(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=192),
    "small": dict(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=384),
    "base": dict(d_model=256, n_layers=6, n_heads=8, n_kv_heads=4, head_dim=32, mlp_dim=768),
    "large": dict(d_model=512, n_layers=8, n_heads=8, n_kv_heads=4, head_dim=64, mlp_dim=1536),
}


def bench_size(name: str, batch: int, seq: int, mesh) -> dict:
  cfg = ModelConfig(vocab_size=264, max_seq_len=seq, **SIZES[name])
  config = base_config()
  optimizer, schedule = make_optimizer(config.optim, 1000)
  graphdef, params = init_params(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh)
  state = create_train_state(params, optimizer, mesh, 0)
  step = make_update_step(graphdef, make_sft_loss_fn(config.objective), optimizer, schedule,
                          shardings_of(state), batch_sharding(mesh), donate=False)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, 256, (batch, seq)).astype(np.int32)
  host = SequenceBatch(tokens, np.ones((batch, seq), bool), np.ones((batch, seq), bool))
  b = shard_batch(host, mesh)
  secs = time_fn(lambda s, b: step(s, b)[1]["loss"], state, b, warmup=2, iters=5)
  tok_s = batch * (seq - 1) / secs
  flops = 3 * cfg.flops_per_token(seq) * tok_s
  return {"size": name, "params": num_params(state.params), "step_ms": secs * 1e3,
          "tokens_per_s": tok_s, "model_flops": flops}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="small,base,large")
  ap.add_argument("--batch", type=int, default=32)
  ap.add_argument("--seq", type=int, default=64)
  args = ap.parse_args()
  mesh = make_mesh({"data": -1})
  peak = matmul_peak_flops()
  print(f"device: {jax.devices()[0].device_kind} x{jax.device_count()}; "
        f"measured f32 matmul peak {peak / 1e9:.1f} GFLOP/s")
  print(f"{'size':>6} {'params':>10} {'step ms':>9} {'tokens/s':>10} {'GFLOP/s':>9} {'MFU':>6}")
  for name in args.sizes.split(","):
    r = bench_size(name, args.batch, args.seq, mesh)
    print(f"{r['size']:>6} {r['params']:>10,} {r['step_ms']:>9.1f} {r['tokens_per_s']:>10.0f} "
          f"{r['model_flops'] / 1e9:>9.1f} {r['model_flops'] / peak:>6.1%}")


if __name__ == "__main__":
  main()
