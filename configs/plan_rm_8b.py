"""A Bradley-Terry reward model (scalar head) on a Llama-3.1-8B trunk: a planning config
(`rewardlab plan` reads shapes from the preset; no weights, no data). Pairs of 2048-token
sequences, 64 pairs per update, accumulated over `train.micro_batches` micro-batches.

Plan:  rewardlab plan --config configs/plan_rm_8b.py --topology v5p:2x2x2
Train: add --config.model.hf_path=/models/Llama-3.1-8B --config.data.pref_path=pairs.jsonl
Precision, remat and mesh: `rewardlab.plan.at_real_size`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rm_synthetic  # noqa: E402
from rewardlab.plan import at_real_size  # noqa: E402


def get_config(variant: str = ""):
  if variant:
    raise ValueError(f"plan_rm_8b: unknown variant {variant!r}; allowed: ''")
  c = rm_synthetic.get_config(head="scalar")
  c.workdir = "runs/plan_rm_8b"
  c.data.update(seq_len=2048, batch_size=64)
  c.eval.batch_size = 64
  return at_real_size(c, "llama-3.1-8b", micro_batches=2)
