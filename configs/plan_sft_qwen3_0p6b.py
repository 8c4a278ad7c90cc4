"""SFT with Qwen3-0.6B shapes at 2048 tokens: a planning config (`rewardlab plan` reads
shapes from the preset; no weights, no data).

Plan:  rewardlab plan --config configs/plan_sft_qwen3_0p6b.py --topology v5e:2x2
Train: add --config.model.hf_path=/models/Qwen3-0.6B (a local HF folder with this shape) and
       your data (configs/sft_arithmetic.py documents the data fields).
Precision, remat and mesh: `rewardlab.plan.at_real_size` (log-probs and the loss stay f32).
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import sft_arithmetic  # noqa: E402
from rewardlab.plan import at_real_size  # noqa: E402


def get_config(variant: str = ""):
  if variant:
    raise ValueError(f"plan_sft_qwen3_0p6b: unknown variant {variant!r}; allowed: ''")
  c = sft_arithmetic.get_config()
  c.workdir = "runs/plan_sft_qwen3_0p6b"
  c.data.update(seq_len=2048, batch_size=16)
  return at_real_size(c, "qwen3-0.6b", micro_batches=1)
