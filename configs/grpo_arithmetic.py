"""GRPO on multi-digit addition: SFT warm-up of a small policy (d_model 128, 4 layers), then
online RL with the exact-answer verifier. The README main job; its sizes, warm-up schedule
and RL lr were chosen by the sweeps in experiments/main_job_sweep.md.

Run:   rewardlab train --config configs/grpo_arithmetic.py
Tiny:  rewardlab train --config configs/grpo_arithmetic.py:tiny   (tests, laptops)
Other objectives on the same task and budget:
       --config.objective.name=dr_grpo | dapo | gspo | rloo | reinforce_pp
       (configs/rl_<name>.py hold the same thing as files)
Override a loss setting: --config.objective.beta=0.0 --config.objective.clip_high=0.28
  conventions: --config.objective.advantage_std=population --config.objective.adv_eps=1e-6
               --config.objective.kl_clamp=0 (off)
"""
import ml_collections
from ml_collections.config_dict import placeholder

from rewardlab.train.config import base_config


def get_config(variant: str = "", objective: str = "grpo"):
  c = base_config()
  c.pipeline = "rl"
  c.workdir = f"runs/{objective}_arithmetic"
  # None = the method's default from rewardlab.objectives.policy_gradient.PG_OBJECTIVES
  c.objective = ml_collections.ConfigDict(dict(
      name=objective, clip_low=placeholder(float), clip_high=placeholder(float),
      beta=placeholder(float), kl=placeholder(str), aggregation=placeholder(str),
      ratio_level=placeholder(str),
      # group advantage: std "unbiased" | "population", eps added to it (TRL/verl conventions,
      # see PG_OBJECTIVES); the k3 KL penalty clamped to [-kl_clamp, kl_clamp] (0 = off)
      advantage_std=placeholder(str), adv_eps=placeholder(float), kl_clamp=placeholder(float)))
  c.rl = ml_collections.ConfigDict(dict(
      num_prompts=64, group_size=8, max_new_tokens=6, temperature=1.0, top_p=1.0, epochs=1,
      minibatch_size=256, max_refill_rounds=2,
      # a trained RM (`<rm workdir>/reward_model` or a HF seq-cls folder) adds the reward
      # "reward_model" usable in `rewards`, e.g. --config.rl.rewards.reward_model=1.0
      reward_model_path="",
      rewards=ml_collections.ConfigDict({"exact_answer": 1.0, "format": 0.1})))
  # LaSeR: coef > 0 adds (beta (log pi(token | x, y) - c) - verifier)^2 to the loss
  c.laser = ml_collections.ConfigDict(dict(coef=0.0, beta=0.1, token="#"))
  # SPARK: coef > 0 adds the NLL of judging each rollout (verifier-labelled yes/no) to the loss
  # (pairwise: one "which is better?" example per group that has a right and a wrong rollout)
  c.spark = ml_collections.ConfigDict(dict(coef=0.0, pairwise=True))
  c.judge = ml_collections.ConfigDict(dict(
      template="{question}{answer}\nok?", mode="p_yes", score_tokens=("Y", "N"), max_len=28))
  # the warm-up's optimizer is config.optim's but for lr and these, when set (None: inherit)
  c.sft_warmup = ml_collections.ConfigDict(dict(
      steps=400, lr=2e-3, schedule=placeholder(str), warmup_steps=placeholder(int),
      min_lr_ratio=placeholder(float), weight_decay=placeholder(float)))
  c.optim.update(lr=2e-4, schedule="constant", warmup_steps=0, weight_decay=0.0)
  c.train.update(steps=150, log_every=1, eval_every=50, checkpoint_every=50)
  c.eval.update(num_problems=256, batch_size=128, passk_problems=64, pass_n=8, pass_k=(1, 4))
  if variant == "tiny":
    c.workdir = f"runs/{objective}_arithmetic_tiny"
    c.model.update(d_model=64, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=192,
                   max_seq_len=32)
    c.data.task_kwargs.max_digits = 2
    c.sft_warmup.update(steps=150, lr=3e-3)
    c.rl.update(num_prompts=32, group_size=8, max_new_tokens=6, minibatch_size=128)
    c.optim.lr = 3e-4
    c.train.update(steps=150, eval_every=75, checkpoint_every=75)
    c.eval.update(num_problems=128, batch_size=64, max_new_tokens=4, passk_problems=32)
  elif variant:
    raise ValueError(f"grpo_arithmetic: unknown variant {variant!r}; allowed: '', 'tiny'")
  else:   # the README main job; choices measured in experiments/main_job_sweep.md
    c.model.update(d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32, mlp_dim=384)
    c.sft_warmup.update(steps=800, lr=2e-3, schedule="cosine", warmup_steps=50, min_lr_ratio=0.1,
                        weight_decay=0.01)
    c.optim.lr = 3e-5   # 1e-4 and 2e-4 dip below the warm-up first (Adam steps of lr size on noisy PG)
    c.train.update(steps=100, eval_every=25, checkpoint_every=50)
  return c
