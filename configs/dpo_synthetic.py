"""Offline DPO on synthetic addition preference pairs labelled by a gold reward
(exact answer = 1, partial credit for matching digits), after a short SFT warm-up.

Run:   rewardlab train --config configs/dpo_synthetic.py[:tiny]
Other objectives on the same data and budget:
       --config.objective.name=cdpo | robust_dpo | ipo | hinge | simpo | orpo | rpo | kto | sppo | tgdpo
       (or configs/dpo_<objective>.py)
Hyperparameters: --config.objective.beta=0.2 --config.objective.label_smoothing=0.1 ...
TGDPO reads per-token rewards: the synthetic data's gold digit rewards, or
  chosen_token_rewards / rejected_token_rewards lists in your rows (one per completion token + EOS).
Sweep (get_sweep below: DPO, IPO, RPO x beta 0.05, 0.1 x 3 seeds, mean and 95% CI per point):
       rewardlab sweep --config configs/dpo_synthetic.py:tiny [--vmap_seeds] [--parallel 2]
Your own pairs: --config.data.pref_path=pairs.jsonl|.parquet  (TRL's preference rows: {"prompt",
               "chosen", "rejected"} strings or {"role", "content"} message lists, prompt optional)
KTO on unpaired rows: --config.objective.name=kto --config.data.unpaired_path=rows.jsonl
               ({"prompt", "completion", "label": true|false} rows)
               --config.data.on_bad_pair=skip  counts bad rows (chosen == rejected, empty,
               too long for data.seq_len) instead of stopping at the first
"""
import ml_collections
from ml_collections.config_dict import placeholder

from rewardlab.train.config import base_config


def get_config(variant: str = "", objective: str = "dpo"):
  c = base_config()
  c.pipeline = "dpo"
  c.workdir = f"runs/{objective}_synthetic"
  # None = the objective function's own default
  c.objective = ml_collections.ConfigDict(dict(
      name=objective, beta=placeholder(float), label_smoothing=placeholder(float),
      gamma=placeholder(float), lam=placeholder(float), alpha=placeholder(float),
      eta=placeholder(float), token_alpha=placeholder(float),
      # IPO: average log-probs per completion token (True, TRL's convention) or sum them
      length_normalize=placeholder(bool)))
  c.data.update(num_pairs=4096, label_noise=0.0, p_answer=1.0, batch_size=64)
  c.data.pref_path = ""
  c.data.unpaired_path = ""      # KTO only: (prompt, completion, label) rows instead of pairs
  c.data.on_bad_pair = "error"   # or "skip": count chosen==rejected / empty / too-long pairs and go on
  c.sft_warmup = ml_collections.ConfigDict(dict(steps=300, lr=2e-3))
  c.optim.update(lr=1e-4, schedule="constant", warmup_steps=0, weight_decay=0.0)
  c.train.update(steps=200, log_every=10, eval_every=100, checkpoint_every=100)
  c.eval.update(num_problems=256, batch_size=128)
  if variant == "tiny":
    c.workdir = f"runs/{objective}_synthetic_tiny"
    c.model.update(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=192,
                   max_seq_len=32)
    c.data.task_kwargs.max_digits = 2
    c.data.update(num_pairs=1024, batch_size=64)
    c.sft_warmup.update(steps=300, lr=3e-3)
    c.optim.lr = 1e-4
    c.train.update(steps=100, eval_every=50, checkpoint_every=50)
    c.eval.update(num_problems=128, batch_size=64, max_new_tokens=4)
  elif variant:
    raise ValueError(f"dpo_synthetic: unknown variant {variant!r}; allowed: '', 'tiny'")
  return c


def get_sweep(variant: str = ""):
  """The objective x beta ablation `rewardlab sweep --config configs/dpo_synthetic.py[:variant]`
  runs (flags --grid / --seeds / --metrics replace these)."""
  del variant   # the same grid at every size
  return dict(grid={"objective.name": ("dpo", "ipo", "rpo"), "objective.beta": (0.05, 0.1)},
              seeds=3, metrics=("gold_reward", "win_rate_vs_ref", "accuracy", "kl_to_ref"))
