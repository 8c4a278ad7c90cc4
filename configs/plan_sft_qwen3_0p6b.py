"""SFT with Qwen3-0.6B shapes at 2048 tokens: a planning config (`rewardlab plan` reads
shapes from the preset; no weights, no data).

Plan:  rewardlab plan --config configs/plan_sft_qwen3_0p6b.py --topology v5e:2x2
Train: add --config.model.hf_path=/models/Qwen3-0.6B (a local HF folder with this shape) and
       your data (configs/sft_arithmetic.py documents the data fields).
Precision: f32 parameters and Adam moments, bf16 activations and matmuls (log-probs and the
loss stay f32); remat full (each layer keeps only its input). Mesh: FSDP over every chip.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sft_arithmetic  # noqa: E402


def get_config(variant: str = ""):
  if variant:
    raise ValueError(f"plan_sft_qwen3_0p6b: unknown variant {variant!r}; allowed: ''")
  c = sft_arithmetic.get_config()
  c.workdir = "runs/plan_sft_qwen3_0p6b"
  c.model.preset = "qwen3-0.6b"
  c.model.update(dtype="bfloat16", param_dtype="float32", remat="full")
  c.data.update(seq_len=2048, batch_size=16)
  c.mesh.update(data=1, fsdp=-1, tensor=1)
  c.train.micro_batches = 1
  return c
