"""GRPO with Qwen3 shapes at real lengths: a planning config (`rewardlab plan` reads shapes
from the preset; no weights, no data). Policy + frozen reference; prompts of 512 tokens,
completions of 1536; a rollout of 64 prompts x 8 samples = 512 sequences, all of them one
update, accumulated over `train.micro_batches` micro-batches.

Plan:  rewardlab plan --config configs/plan_grpo_qwen3.py:8b --topology v5p:2x2x2
       rewardlab plan --config configs/plan_grpo_qwen3.py:1.7b --topology v5e:4x4
Train: add --config.model.hf_path=/models/Qwen3-8B and the math data of configs/grpo_gsm8k.py.
Precision, remat and mesh: `rewardlab.plan.at_real_size`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpo_arithmetic  # noqa: E402
from rewardlab.plan import at_real_size  # noqa: E402

SIZES = {"8b": ("qwen3-8b", 8), "1.7b": ("qwen3-1.7b", 4), "0.6b": ("qwen3-0.6b", 2)}


def get_config(variant: str = ""):
  variant = variant or "8b"
  if variant not in SIZES:
    raise ValueError(f"plan_grpo_qwen3: unknown variant {variant!r}; allowed: {sorted(SIZES)}")
  preset, micro = SIZES[variant]
  c = grpo_arithmetic.get_config()
  c.workdir = f"runs/plan_grpo_qwen3_{variant}"
  c.rl.update(num_prompts=64, group_size=8, max_new_tokens=1536, minibatch_size=512, epochs=1)
  c.eval.update(max_prompt_len=512, max_new_tokens=1536, batch_size=64)
  c.data.batch_size = 64
  return at_real_size(c, preset, micro_batches=micro)
