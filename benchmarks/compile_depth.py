"""Compile time vs depth of rewardlab's SFT update step, AOT-compiled for a TPU topology on
this (CPU) machine, scanned vs unrolled layers, and the step's collectives by kind.

    pip install -e '.[tpu]'      # libtpu: XLA compiles for TPU without a TPU
    python benchmarks/compile_depth.py [--preset qwen3-0.6b] [--depths 2,14,28]
        [--topology v5p:2x2x2] [--mesh fsdp=8] [--seq 2048] [--batch 16] [--remat full]
        [--modes scan,unrolled] [--no-constraints]

Each (depth, mode) builds the real step (`train.step.make_update_step` around the SFT loss,
the configured optimizer, remat on) on ShapeDtypeStructs carrying NamedShardings on a mesh
of the topology's abstract devices, lowers it under `jax.set_mesh` (so the model's
activation sharding constraints apply; --no-constraints traces without the mesh context,
as before they existed) and compiles it. Nothing runs. Reported per step: seconds to lower
and to compile, HLO size, collectives by kind counted in `compiled.as_text()` (all-reduce,
reduce-scatter, all-gather, all-to-all, collective-permute; async -start ops counted once),
and per-chip argument / temp memory from `memory_analysis()`.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from contextlib import nullcontext

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
from flax import nnx  # noqa: E402
from jax.sharding import NamedSharding, PartitionSpec as P  # noqa: E402

from rewardlab.aot import COLLECTIVES, abstract_train_state, count_collectives, tpu_devices  # noqa: E402
from rewardlab.data import SequenceBatch  # noqa: E402
from rewardlab.models import Transformer  # noqa: E402
from rewardlab.models.presets import model_config_from_preset  # noqa: E402
from rewardlab.pipelines.sft import make_sft_loss_fn  # noqa: E402
from rewardlab.sharding import BATCH_AXES, make_mesh  # noqa: E402
from rewardlab.train.config import base_config  # noqa: E402
from rewardlab.train.optim import make_optimizer  # noqa: E402
from rewardlab.train.step import make_update_step  # noqa: E402



def compile_step(model_cfg, mesh, batch: int, seq: int, constraints: bool = True, dump: str = "") -> dict:
  config = base_config()
  optimizer, schedule = make_optimizer(config.optim, 1000)
  graphdef, state = abstract_train_state(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)), optimizer, mesh)
  bs = NamedSharding(mesh, P(BATCH_AXES))
  sds = lambda dtype: jax.ShapeDtypeStruct((batch, seq), dtype, sharding=bs)  # noqa: E731
  host_batch = SequenceBatch(sds(jnp.int32), sds(jnp.bool_), sds(jnp.bool_))
  step = make_update_step(graphdef, make_sft_loss_fn(config.objective, config.train.logprob_chunk), optimizer,
                          schedule, jax.tree.map(lambda x: x.sharding, state), jax.tree.map(lambda x: x.sharding, host_batch))
  with jax.set_mesh(mesh) if constraints else nullcontext():
    t = time.perf_counter()
    lowered = step.lower(state, host_batch)
    t_lower = time.perf_counter() - t
    t = time.perf_counter()
    compiled = lowered.compile()
    t_compile = time.perf_counter() - t
  hlo = compiled.as_text()
  if dump:
    os.makedirs(dump, exist_ok=True)
    name = f"{model_cfg.n_layers}l_{'scan' if model_cfg.scan_layers else 'unrolled'}_{'c' if constraints else 'nc'}.hlo"
    with open(os.path.join(dump, name), "w") as f:
      f.write(hlo)
  mem = compiled.memory_analysis()
  return dict(lower_s=round(t_lower, 1), compile_s=round(t_compile, 1), hlo_chars=len(hlo),
              collectives=count_collectives(hlo),
              argument_gib=round(mem.argument_size_in_bytes / 2 ** 30, 2),
              temp_gib=round(mem.temp_size_in_bytes / 2 ** 30, 2))


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="qwen3-0.6b")
  ap.add_argument("--depths", default="2,14,28")
  ap.add_argument("--modes", default="scan,unrolled")
  ap.add_argument("--topology", default="v5p:2x2x2")
  ap.add_argument("--mesh", default="fsdp=8", help="comma-separated axis=size (data, fsdp, tensor)")
  ap.add_argument("--seq", type=int, default=2048)
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--remat", default="full")
  ap.add_argument("--attention", default="xla")
  ap.add_argument("--no-constraints", action="store_true", help="trace without the mesh context")
  ap.add_argument("--dump", default="", help="write each compiled HLO text into this folder")
  args = ap.parse_args()
  spec = {k: int(v) for k, v in (kv.split("=") for kv in args.mesh.split(","))}
  mesh = make_mesh({"data": 1, "fsdp": 1, "tensor": 1, **spec}, tpu_devices(args.topology))
  print(f"# {args.preset} seq {args.seq} batch {args.batch} remat {args.remat} attention {args.attention} "
        f"on {args.topology} mesh {dict(mesh.shape)} constraints {not args.no_constraints}", flush=True)
  rows = []
  for depth in (int(d) for d in args.depths.split(",")):
    for mode in args.modes.split(","):
      cfg = model_config_from_preset(args.preset, n_layers=depth, max_seq_len=args.seq, remat=args.remat,
                                     attention=args.attention, scan_layers=mode == "scan")
      row = dict(layers=depth, mode=mode, **compile_step(cfg, mesh, args.batch, args.seq, not args.no_constraints, args.dump))
      rows.append(row)
      print(json.dumps(row), flush=True)
  print("\n| layers | mode | lower s | compile s | HLO chars | " + " | ".join(COLLECTIVES) + " | args GiB | temp GiB |")
  print("|---" * (7 + len(COLLECTIVES)) + "|")
  for r in rows:
    print(f"| {r['layers']} | {r['mode']} | {r['lower_s']} | {r['compile_s']} | {r['hlo_chars']} | "
          + " | ".join(str(r["collectives"][k]) for k in COLLECTIVES) + f" | {r['argument_gib']} | {r['temp_gib']} |")
  for mode in args.modes.split(","):
    mine = [r for r in rows if r["mode"] == mode]
    if len(mine) > 1:
      print(f"{mode}: compile {mine[-1]['layers']} layers / {mine[0]['layers']} layers = "
            f"{(mine[-1]['lower_s'] + mine[-1]['compile_s']) / (mine[0]['lower_s'] + mine[0]['compile_s']):.2f}x")


if __name__ == "__main__":
  main()
