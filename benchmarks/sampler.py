"""Decode throughput of the KV-cache sampler vs naive full-recompute generation vs
Hugging Face `transformers.generate(use_cache=True)`, on identical weights and settings.

    python benchmarks/sampler.py [--models 256x4,512x4] [--batches 1,16,64] [--new 64]

Each model is a random Llama (d_model x layers) written by transformers and imported into
rewardlab, so both sides run the same weights. Greedy decoding, no stop token (every row
generates exactly --new tokens). Decode FLOP/s = 2 x params x generated tokens / s,
reported as a fraction of the f32 dense-matmul peak measured in the same run.

"matmul floor" is the time of the decode step's weight matmuls alone at that batch (every
weight matrix once, all distinct, so weights stream from memory as in decoding): the part
of a step no attention or sampling work can remove; "ours/floor" says how close the whole
sampler gets to it. "vs full cache" is the same sampler with every KV slot preallocated
(grow_cache_every=0): the gain from attending to about the filled prefix, which shows
for generations longer than the default 64-token segment (--new 256). Needs the test
extra (torch).

--groups 4x8 adds a group-sampling table (4 prompts x 8 samples, temperature 1, as GRPO
rolls out) at each --group-prompt length: the sampler with the prompt's keys/values shared
by its n rows (the default) vs repeated n times (share_prefix=False), side by side.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402
import transformers  # noqa: E402

from common import peak_matmul_fn, time_interleaved  # noqa: E402
from rewardlab.models.hf import load_hf_model  # noqa: E402
from rewardlab.sampling import SamplingParams, make_naive_generate, make_sample_fn  # noqa: E402
from rewardlab.sharding import make_mesh  # noqa: E402
from rewardlab.train.state import num_params  # noqa: E402


def build(folder: str, d: int, layers: int):
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=512, hidden_size=d, intermediate_size=3 * d,
                                 num_hidden_layers=layers, num_attention_heads=d // 64,
                                 num_key_value_heads=max(d // 128, 1), head_dim=64,
                                 max_position_embeddings=1024, tie_word_embeddings=True)
  model = transformers.LlamaForCausalLM(cfg).eval()
  model.save_pretrained(folder)
  return model


FLOOR_REPS = 16  # matmul-only steps per call, so dispatch is amortised as in the decode loop


def matmul_floor_fn(params, batch: int):
  """Zero-argument fn running FLOOR_REPS decode steps' worth of weight matmuls at `batch`
  rows: each 2-D view of a weight (embedding as the tied unembedding) times a
  [batch, in] activation."""
  mats = []
  for path, w in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = str(path[-1])  # e.g. "DictKey(key='o')"
    if w.ndim < 2:
      continue
    mats.append(w.reshape(-1, w.shape[-1]) if "'o'" in name else
                w.T if "embed" in name else w.reshape(w.shape[0], -1))
  xs = [jnp.ones((batch, m.shape[0]), m.dtype) for m in mats]

  @jax.jit
  def steps(xs, mats):
    def body(_, acc):  # inputs depend on the carry, so the dots cannot be hoisted
      return acc + sum(jnp.sum((x + acc * 1e-30) @ m) for x, m in zip(xs, mats))
    return jax.lax.fori_loop(0, FLOOR_REPS, body, jnp.zeros((), jnp.float32))

  return lambda: steps(xs, mats)


def hf_generate_fn(model, ids, new: int):
  """Zero-argument greedy `generate(use_cache=True)` returning the completion ids."""
  ids_t = torch.tensor(ids)
  kwargs = dict(attention_mask=torch.ones_like(ids_t), max_new_tokens=new, min_new_tokens=new,
                do_sample=False, use_cache=True, pad_token_id=0, eos_token_id=None)

  def run():
    with torch.no_grad():
      return model.generate(ids_t, **kwargs)[:, ids.shape[1]:].numpy()
  return run


def bench_model(d: int, layers: int, args):
  folder = tempfile.mkdtemp()
  hf_model = build(folder, d, layers)
  mesh = make_mesh({"data": 1}, jax.devices()[:1])
  _, cfg, graphdef, params = load_hf_model(folder, mesh)
  n_params = num_params(params)
  sample = make_sample_fn(graphdef, SamplingParams(max_new_tokens=args.new, temperature=0.0), 0)
  prealloc = make_sample_fn(graphdef, SamplingParams(max_new_tokens=args.new, temperature=0.0,
                                                     grow_cache_every=0), 0)
  naive = make_naive_generate(graphdef, args.new, -1, 0)
  print(f"\nmodel: Llama d={d} layers={layers} params={n_params:,} ({4 * n_params / 2**20:.0f} MiB f32); "
        f"prompt {args.prompt}, new {args.new}")
  print(f"{'batch':>5} {'ours tok/s':>11} {'naive tok/s':>12} {'HF tok/s':>9} {'vs naive':>9} "
        f"{'vs HF':>7} {'ours %peak':>10} {'HF %peak':>9} {'ours/floor':>10} {'vs full cache':>13} "
        f"{'same tokens as HF':>18} {'peak GF/s':>9}")
  peak_fn, peak_flops = peak_matmul_fn()
  for b in [int(x) for x in args.batches.split(",") if x]:   # --batches "" skips this table
    ids = np.random.default_rng(b).integers(3, 512, (b, args.prompt)).astype(np.int32)
    valid = np.ones_like(ids, bool)
    rng = jax.random.PRNGKey(0)
    fns = dict(ours=lambda: sample(params, ids, valid, rng).tokens,
               prealloc=lambda: prealloc(params, ids, valid, rng).tokens,
               hf=hf_generate_fn(hf_model, ids, args.new), floor=matmul_floor_fn(params, b),
               peak=peak_fn)
    if b <= args.skip_naive_above:
      fns["naive"] = lambda: naive(params, ids, valid)[0]
    t = time_interleaved(fns, rounds=args.rounds)
    t_ours, t_prealloc, t_hf = t["ours"], t["prealloc"], t["hf"]
    t_naive = t.get("naive", float("nan"))
    t_floor = t["floor"] / FLOOR_REPS * args.new
    peak = peak_flops / t["peak"]
    ours_tokens = np.asarray(sample(params, ids, valid, rng).tokens)
    hf_tokens = fns["hf"]()
    gen = b * args.new
    rate = lambda t: gen / t
    frac = lambda t: 2 * n_params * gen / t / peak
    same = float(np.mean(ours_tokens == hf_tokens))
    print(f"{b:>5} {rate(t_ours):>11.0f} {rate(t_naive):>12.0f} {rate(t_hf):>9.0f} "
          f"{t_naive / t_ours:>8.1f}x {t_hf / t_ours:>6.1f}x {frac(t_ours):>10.1%} {frac(t_hf):>9.1%} "
          f"{t_floor / t_ours:>10.1%} {t_prealloc / t_ours:>12.2f}x {same:>18.1%} {peak / 1e9:>9.1f}")
  if args.groups:
    bench_groups(params, graphdef, args)


def bench_groups(params, graphdef, args):
  prompts, n = map(int, args.groups.split("x"))
  print(f"\ngroup sampling: {prompts} prompts x {n} samples, temperature 1, {args.new} new tokens")
  print(f"{'prompt len':>10} {'shared tok/s':>13} {'repeated tok/s':>15} {'shared vs repeated':>19}")
  for length in map(int, args.group_prompt.split(",")):
    ids = np.random.default_rng(length).integers(3, 512, (prompts, length)).astype(np.int32)
    valid = np.ones_like(ids, bool)
    rng = jax.random.PRNGKey(0)
    fns = {}
    for share in (True, False):
      fn = make_sample_fn(graphdef, SamplingParams(max_new_tokens=args.new, n=n, temperature=1.0,
                                                   share_prefix=share), 0)
      fns[share] = lambda fn=fn: fn(params, ids, valid, rng).tokens
    t = time_interleaved(fns, rounds=args.rounds)
    gen = prompts * n * args.new
    print(f"{length:>10} {gen / t[True]:>13.0f} {gen / t[False]:>15.0f} {t[False] / t[True]:>18.2f}x")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--models", default="512x4", help="comma-separated d_model x layers")
  ap.add_argument("--batches", default="1,16,64")
  ap.add_argument("--new", type=int, default=64)
  ap.add_argument("--prompt", type=int, default=16)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--skip-naive-above", type=int, default=16, help="naive is quadratic; skip big batches")
  ap.add_argument("--groups", default="", help="prompts x samples, e.g. 4x8: add the group-sampling table")
  ap.add_argument("--group-prompt", default="16,128", help="prompt lengths of the group table")
  args = ap.parse_args()
  torch.set_num_threads(os.cpu_count() or 1)
  print(f"torch threads {torch.get_num_threads()}; every row's timings (and the f32 matmul "
        f"peak behind %peak) come from {args.rounds} interleaved rounds, medians")
  for model in args.models.split(","):
    d, layers = map(int, model.split("x"))
    bench_model(d, layers, args)


if __name__ == "__main__":
  main()
