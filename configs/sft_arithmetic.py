"""SFT of the embedded default policy on multi-digit addition (byte tokenizer).

Run:   rewardlab train --config configs/sft_arithmetic.py
Tiny:  rewardlab train --config configs/sft_arithmetic.py:tiny   (tests, laptops)
Override any field: --config.optim.lr=3e-4 --config.data.task_kwargs.max_digits=4
"""
from rewardlab.train.config import base_config


def get_config(variant: str = ""):
  c = base_config()
  c.pipeline = "sft"
  c.workdir = "runs/sft_arithmetic"
  c.data.task = "addition"
  c.data.task_kwargs.min_digits = 1
  c.data.task_kwargs.max_digits = 3
  if variant == "tiny":
    c.workdir = "runs/sft_arithmetic_tiny"
    c.model.update(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=192,
                   max_seq_len=32)
    c.data.task_kwargs.max_digits = 2
    c.data.batch_size = 128
    c.optim.update(lr=3e-3, warmup_steps=20)
    c.train.update(steps=400, log_every=10, eval_every=200, checkpoint_every=200)
    c.eval.update(num_problems=128, batch_size=64, max_new_tokens=4)
  elif variant:
    raise ValueError(f"sft_arithmetic: unknown variant {variant!r}; allowed: '', 'tiny'")
  return c
