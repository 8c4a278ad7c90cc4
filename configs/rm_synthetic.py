"""Reward model (scalar Bradley-Terry head by default) on synthetic addition preference pairs
labelled by a known gold reward, after a short SFT warm-up of the trunk.

Run:   rewardlab train --config configs/rm_synthetic.py[:tiny]
Heads: get_config(variant, head) with head in scalar | ensemble | gated | ordinal | general |
       process (configs/rm_<head>.py), or --config.rm.head.type=... plus its fields.
Data knobs: --config.data.label_noise=0.2 --config.data.length_bias=0.5 --config.data.tie_frac=0.1
Your own pairs: --config.data.pref_path=train.jsonl|.parquet --config.data.eval_path=test.jsonl
LoRA: --config.lora.rank=8 [--config.lora.targets="('q','v')"]: the trunk trains through adapters,
      the head in full; the export is the merged model.
Outputs: <workdir>/rm_eval.md|json (per subset/category accuracy, best-of-4, calibration),
         <workdir>/reward_model (what config.rl.reward_model_path takes).
"""
import ml_collections

from rewardlab.train.config import base_config

HEADS = ("scalar", "ensemble", "gated", "ordinal", "general", "process")


def get_config(variant: str = "", head: str = "scalar"):
  if head not in HEADS:
    raise ValueError(f"rm_synthetic: unknown head {head!r}; allowed: {list(HEADS)}")
  c = base_config()
  c.pipeline = "rm"
  c.workdir = f"runs/rm_{head}_synthetic"
  c.objective = ml_collections.ConfigDict(dict(name="reward_model"))
  c.rm = ml_collections.ConfigDict(dict(
      head=ml_collections.ConfigDict(dict(
          type=head, num_members=4, independent_trunks=False, aggregation="mean", uwo_lambda=1.0,
          num_attributes=3, gate_hidden=64, levels=5, embed_dim=8, max_steps=8,
          step_aggregation="min")),
      label_smoothing=0.0, use_margin=False, margin_scale=1.0, center_coef=0.0,
      mse_weight=1.0,                 # gated: attribute regression weight
      ordinal_ce_weight=0.0, rating_range=(0.0, 1.0),   # ordinal: CE on the first rating's level
      step_separator=";"))
  c.data.update(num_pairs=8192, eval_pairs=768, label_noise=0.0, length_bias=0.0, tie_frac=0.0,
                p_answer=0.5, p_slip=0.5, eval_length_trap=0.25, batch_size=64, seq_len=24)
  c.data.pref_path = ""
  c.data.eval_path = ""
  c.sft_warmup = ml_collections.ConfigDict(dict(steps=300, lr=2e-3))
  c.optim.update(lr=1e-3, schedule="cosine", warmup_steps=20, weight_decay=0.0)
  c.train.update(steps=400, log_every=20, eval_every=200, checkpoint_every=200)
  c.eval.update(batch_size=128)
  if head == "process":
    c.data.seq_len = 28
  if variant == "tiny":
    c.workdir = f"runs/rm_{head}_synthetic_tiny"
    # 3 layers, not 2: verifying a sum at the EOS token needs the depth (2 layers: ~0.75-0.85)
    c.model.update(d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=192,
                   max_seq_len=32)
    c.data.task_kwargs.max_digits = 2
    c.data.update(num_pairs=16384, eval_pairs=384)
    c.sft_warmup.update(steps=500, lr=3e-3)
    c.rm.label_smoothing = 0.05
    c.optim.weight_decay = 0.05
    c.train.update(steps=1000, eval_every=500, checkpoint_every=500)
    c.eval.update(batch_size=64, max_new_tokens=4)
  elif variant:
    raise ValueError(f"rm_synthetic: unknown variant {variant!r}; allowed: '', 'tiny'")
  return c
