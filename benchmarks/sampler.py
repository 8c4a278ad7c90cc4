"""Decode throughput of the KV-cache sampler vs naive full-recompute generation vs
Hugging Face `transformers.generate(use_cache=True)`, on identical weights and settings.

    python benchmarks/sampler.py [--batches 1,16,64] [--new 32] [--prompt 16]

The model is a random Llama written by transformers and imported into rewardlab, so both
sides run the same weights. Greedy decoding, no stop token (every row generates exactly
--new tokens). Decode FLOP/s = 2 x params x generated tokens / s, reported as a fraction
of the f32 dense-matmul peak measured in the same run. Needs the test extra (torch).
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
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from common import matmul_peak_flops, time_fn  # noqa: E402
from rewardlab.models.hf import load_hf_model  # noqa: E402
from rewardlab.sampling import SamplingParams, make_naive_generate, make_sample_fn  # noqa: E402
from rewardlab.sharding import make_mesh  # noqa: E402
from rewardlab.train.state import num_params  # noqa: E402


def build(folder: str, d: int, layers: int):
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=d, intermediate_size=3 * d,
                                 num_hidden_layers=layers, num_attention_heads=d // 64,
                                 num_key_value_heads=max(d // 128, 1), head_dim=64,
                                 max_position_embeddings=256, tie_word_embeddings=True)
  model = transformers.LlamaForCausalLM(cfg).eval()
  model.save_pretrained(folder)
  return model


def hf_generate_time(model, ids, new: int, iters: int = 3) -> tuple[float, np.ndarray]:
  ids_t = torch.tensor(ids)
  kwargs = dict(attention_mask=torch.ones_like(ids_t), max_new_tokens=new, min_new_tokens=new,
                do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)
  with torch.no_grad():
    out = model.generate(ids_t, **kwargs)
    times = []
    for _ in range(iters):
      t = time.perf_counter()
      model.generate(ids_t, **kwargs)
      times.append(time.perf_counter() - t)
  return sorted(times)[len(times) // 2], out[:, ids.shape[1]:].numpy()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batches", default="1,16,64")
  ap.add_argument("--new", type=int, default=64)
  ap.add_argument("--prompt", type=int, default=16)
  ap.add_argument("--d", type=int, default=512)
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--skip-naive-above", type=int, default=16, help="naive is quadratic; skip big batches")
  args = ap.parse_args()
  torch.set_num_threads(os.cpu_count() or 1)
  folder = tempfile.mkdtemp()
  hf_model = build(folder, args.d, args.layers)
  mesh = make_mesh({"data": 1}, jax.devices()[:1])
  _, cfg, graphdef, params = load_hf_model(folder, mesh)
  n_params = num_params(params)
  peak = matmul_peak_flops()
  sample = make_sample_fn(graphdef, SamplingParams(max_new_tokens=args.new, temperature=0.0), 0)
  naive = make_naive_generate(graphdef, args.new, -1, 0)
  print(f"model: Llama d={args.d} layers={args.layers} params={n_params:,}; prompt {args.prompt}, "
        f"new {args.new}; f32 matmul peak {peak / 1e9:.1f} GFLOP/s; torch threads {torch.get_num_threads()}")
  print(f"{'batch':>5} {'ours tok/s':>11} {'naive tok/s':>12} {'HF tok/s':>9} {'vs naive':>9} "
        f"{'vs HF':>7} {'ours %peak':>10} {'HF %peak':>9} {'same tokens as HF':>18}")
  for b in map(int, args.batches.split(",")):
    ids = np.random.default_rng(b).integers(3, 512, (b, args.prompt)).astype(np.int32)
    valid = np.ones_like(ids, bool)
    rng = jax.random.PRNGKey(0)
    t_ours = time_fn(lambda: sample(params, ids, valid, rng).tokens, warmup=1, iters=5)
    ours_tokens = np.asarray(sample(params, ids, valid, rng).tokens)
    t_naive = (time_fn(lambda: naive(params, ids, valid)[0], warmup=1, iters=2)
               if b <= args.skip_naive_above else float("nan"))
    t_hf, hf_tokens = hf_generate_time(hf_model, ids, args.new)
    gen = b * args.new
    rate = lambda t: gen / t
    frac = lambda t: 2 * n_params * gen / t / peak
    same = float(np.mean(ours_tokens == hf_tokens))
    print(f"{b:>5} {rate(t_ours):>11.0f} {rate(t_naive):>12.0f} {rate(t_hf):>9.0f} "
          f"{t_naive / t_ours:>8.1f}x {t_hf / t_ours:>6.1f}x {frac(t_ours):>10.1%} {frac(t_hf):>9.1%} "
          f"{same:>18.1%}")


if __name__ == "__main__":
  main()
