"""rewardlab vs what users would run instead: the SFT and DPO update steps of rewardlab and of
transformers + torch (eager, and torch.compile) on the same Qwen2-shaped model, vocab 32k,
f32, the same batch and the same initial weights (the step-0 losses are checked equal).

    python benchmarks/vs_torch.py [--sizes 256x4,512x8] [--batch 8] [--seq 256] [--rounds 5]
                                  [--no-compile]

All contenders, and each library's own f32 2048^3 matmul (its peak), are timed in
interleaved rounds (medians), so a machine whose speed drifts moves them alike. Reported:
ms per step, rewardlab's speed-up over each torch variant, and MFU = 3 x forward FLOPs per
token x tokens/s over the library's own measured peak. Every step is AdamW (lr 1e-5, no
weight decay) after clipping the gradient norm to 1, as the configs do. Not a test.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402

from common import peak_matmul_fn  # noqa: E402
from rewardlab.data.preference import PairBatch  # noqa: E402
from rewardlab.data import SequenceBatch  # noqa: E402
from rewardlab.models.hf import load_hf_model  # noqa: E402
from rewardlab.pipelines.preference import make_preference_loss_fn  # noqa: E402
from rewardlab.pipelines.sft import make_sft_loss_fn  # noqa: E402
from rewardlab.sharding import batch_sharding, make_mesh, shard_batch  # noqa: E402
from rewardlab.train.state import create_train_state, shardings_of  # noqa: E402
from rewardlab.train.step import make_update_step  # noqa: E402

VOCAB, LR, BETA = 32_768, 1e-5, 0.1
# d_model x layers -> (heads, kv heads, mlp); head_dim 64
SIZES = {"256x4": (4, 2, 768), "512x8": (8, 4, 1536)}


def qwen2_folder(size: str, seq: int, folder: str) -> str:
  """A random Qwen2ForCausalLM of `size` saved as a HF folder (torch.manual_seed(0))."""
  import torch
  from transformers import Qwen2Config, Qwen2ForCausalLM
  d, layers = (int(x) for x in size.split("x"))
  heads, kv, mlp = SIZES[size]
  torch.manual_seed(0)
  cfg = Qwen2Config(vocab_size=VOCAB, hidden_size=d, num_hidden_layers=layers, num_attention_heads=heads,
                    num_key_value_heads=kv, intermediate_size=mlp, max_position_embeddings=seq,
                    tie_word_embeddings=True, attn_implementation="sdpa")
  Qwen2ForCausalLM(cfg).save_pretrained(folder)
  return folder


def batches(batch: int, seq: int):
  """(SFT batch, DPO pair batch, the pairs' reference log-probs): random tokens, the loss on
  each row's second half; DPO rows are pair-major (chosen 0, rejected 0, chosen 1, ...)."""
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, VOCAB, (batch, seq)).astype(np.int32)
  valid = np.ones((batch, seq), bool)
  loss_mask = np.zeros((batch, seq), bool)
  loss_mask[:, seq // 2:] = True
  ref = rng.normal(-float(seq) * 5, 1.0, batch).astype(np.float32)
  ones, zeros = np.ones(batch, np.float32), np.zeros((batch, 1), np.float32)
  return (SequenceBatch(tokens, valid, loss_mask),
          PairBatch(tokens, valid, loss_mask, ref, ones, zeros[:, 0], zeros, zeros), ref)


def rewardlab_steps(folder: str, sft_batch, pair_batch, mesh):
  """{"sft": fn, "dpo": fn} zero-argument update steps (state carried inside) + step-0 losses."""
  _, model_cfg, graphdef, params = load_hf_model(folder, mesh)
  optimizer = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(LR, weight_decay=0.0))
  objectives = {"sft": (make_sft_loss_fn(ml_collections.ConfigDict({"name": "sft", "aggregation": "token_mean"})),
                        sft_batch),
                "dpo": (make_preference_loss_fn(ml_collections.ConfigDict({"name": "dpo", "beta": BETA}), 4096),
                        pair_batch)}
  fns, first = {}, {}
  for name, (loss_fn, host) in objectives.items():
    state = create_train_state(jax.tree.map(lambda x: x.copy(), params), optimizer, mesh, 0)
    step = make_update_step(graphdef, loss_fn, optimizer, None, shardings_of(state), batch_sharding(mesh))
    batch = shard_batch(host, mesh)
    box = {"state": state}

    def run(step=step, batch=batch, box=box):
      box["state"], metrics = step(box["state"], batch)
      return metrics["loss"]
    first[name] = float(run())
    fns[name] = run
  return fns, first, model_cfg


def torch_steps(folder: str, sft_batch, ref, compile_: bool):
  """The same two steps in transformers + torch (eager, or the model torch.compile'd)."""
  import torch
  import torch.nn.functional as F
  from transformers import AutoModelForCausalLM
  ids = torch.as_tensor(sft_batch.tokens, dtype=torch.long)
  attn = torch.ones_like(ids)
  mask = torch.as_tensor(sft_batch.loss_mask[:, 1:], dtype=torch.float32)
  ref_t = torch.as_tensor(ref)

  def token_logps(model):
    logits = model(input_ids=ids, attention_mask=attn).logits[:, :-1].float()
    return torch.log_softmax(logits, -1).gather(-1, ids[:, 1:, None])[..., 0]

  def sft_loss(model):
    return -(token_logps(model) * mask).sum() / mask.sum()

  def dpo_loss(model):
    pairs = ((token_logps(model) * mask).sum(-1) - ref_t).reshape(-1, 2)   # pair-major rows
    return -F.logsigmoid(BETA * (pairs[:, 0] - pairs[:, 1])).mean()

  fns, first = {}, {}
  for name, loss_of in (("sft", sft_loss), ("dpo", dpo_loss)):
    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, attn_implementation="sdpa")
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=0.0)
    run_model = torch.compile(model) if compile_ else model

    def run(model=run_model, opt=opt, loss_of=loss_of, params=list(model.parameters())):
      loss = loss_of(model)
      opt.zero_grad(set_to_none=True)
      loss.backward()
      torch.nn.utils.clip_grad_norm_(params, 1.0)
      opt.step()
      return loss.detach()
    first[name] = float(run())
    fns[name] = run
  return fns, first


def torch_peak_fn(n: int = 2048):
  import torch
  a, b = torch.randn(n, n), torch.randn(n, n)
  return lambda: a @ b


def timed(fns: dict, rounds: int) -> dict:
  """Median seconds of each zero-argument fn in interleaved rounds (torch or JAX results)."""
  block = lambda x: jax.block_until_ready(x) if isinstance(x, jax.Array) else x  # noqa: E731
  for fn in fns.values():
    block(fn())
  times = {k: [] for k in fns}
  for _ in range(rounds):
    for k, fn in fns.items():
      t = time.perf_counter()
      block(fn())
      times[k].append(time.perf_counter() - t)
  return {k: float(np.median(v)) for k, v in times.items()}


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--sizes", default="256x4,512x8")
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--seq", type=int, default=256)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--no-compile", dest="compile", action="store_false")
  args = ap.parse_args()
  import torch
  torch.set_num_threads(os.cpu_count() or 1)
  mesh = make_mesh({"data": -1})
  jax_peak, peak_flops = peak_matmul_fn()
  print(f"{jax.devices()[0].device_kind} x{jax.device_count()}, torch {torch.__version__} "
        f"({torch.get_num_threads()} threads); batch {args.batch} x seq {args.seq}, vocab {VOCAB}, f32")
  print("| model | step | rewardlab ms | torch eager ms | torch.compile ms | vs eager | vs compile | "
        "MFU rewardlab | MFU eager | MFU compile |")
  print("|---|---|---|---|---|---|---|---|---|---|")
  for size in args.sizes.split(","):
    with tempfile.TemporaryDirectory() as tmp:
      folder = qwen2_folder(size, args.seq, tmp)
      sft_b, pair_b, ref = batches(args.batch, args.seq)
      ours, ours_first, cfg = rewardlab_steps(folder, sft_b, pair_b, mesh)
      eager, eager_first = torch_steps(folder, sft_b, ref, compile_=False)
      compiled, compiled_first = torch_steps(folder, sft_b, ref, compile_=True) if args.compile else ({}, {})
    for name in ("sft", "dpo"):
      for other in (eager_first, compiled_first):
        if name in other and not np.isclose(ours_first[name], other[name], rtol=1e-4):
          raise SystemExit(f"{size} {name}: step-0 losses differ: rewardlab {ours_first[name]} vs torch {other[name]}")
    contenders = {"jax_peak": jax_peak, "torch_peak": torch_peak_fn()}
    for name in ("sft", "dpo"):
      contenders.update({f"ours_{name}": ours[name], f"eager_{name}": eager[name]})
      if args.compile:
        contenders[f"compile_{name}"] = compiled[name]
    t = timed(contenders, args.rounds)
    flops = 3 * cfg.flops_per_token(args.seq) * args.batch * (args.seq - 1)
    jax_pk, torch_pk = peak_flops / t["jax_peak"], peak_flops / t["torch_peak"]
    for name in ("sft", "dpo"):
      o, e = t[f"ours_{name}"], t[f"eager_{name}"]
      c = t.get(f"compile_{name}", float("nan"))
      print(f"| d={size} | {name} | {o * 1e3:.0f} | {e * 1e3:.0f} | {c * 1e3:.0f} | {e / o:.2f}x | {c / o:.2f}x | "
            f"{flops / o / jax_pk:.0%} | {flops / e / torch_pk:.0%} | {flops / c / torch_pk:.0%} |")
    print(f"  peaks: JAX {jax_pk / 1e9:.0f} GFLOP/s, torch {torch_pk / 1e9:.0f} GFLOP/s; "
          f"step-0 losses equal (sft {ours_first['sft']:.4f}, dpo {ours_first['dpo']:.4f})", flush=True)


if __name__ == "__main__":
  main()
