"""DPO with Llama-3.1-8B shapes: a planning config (`rewardlab plan` reads shapes from the
preset; no weights, no data). Policy + cached reference log-probs (one reference pass
before training); sequences of 2048 tokens; 64 pairs per update, accumulated over
`train.micro_batches` micro-batches.

Plan:  rewardlab plan --config configs/plan_dpo_llama3_8b.py --topology v5e:4x4
       rewardlab plan --config configs/plan_dpo_llama3_8b.py --topology v6e:4x4
Train: add --config.model.hf_path=/models/Llama-3.1-8B --config.data.pref_path=pairs.jsonl
Precision, remat and mesh: `rewardlab.plan.at_real_size`.
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dpo_synthetic  # noqa: E402
from rewardlab.plan import at_real_size  # noqa: E402


def get_config(variant: str = ""):
  if variant:
    raise ValueError(f"plan_dpo_llama3_8b: unknown variant {variant!r}; allowed: ''")
  c = dpo_synthetic.get_config()
  c.workdir = "runs/plan_dpo_llama3_8b"
  c.data.update(seq_len=2048, batch_size=64)
  c.eval.batch_size = 64
  return at_real_size(c, "llama-3.1-8b", micro_batches=4)
