"""Reward-model overoptimization study (experiments/overoptimization.py): proxy reward models
trained on N gold-labelled synthetic pairs, a policy optimised against them by best-of-n and
by GRPO, gold and proxy reward against d = sqrt(KL), mitigations, length hacking, STARC.

Run:   python experiments/overoptimization.py --config configs/overoptimization.py[:tiny]
       [--out runs/overoptimization] [--config.seeds="(0,1,2)"] [--config.proxy.num_pairs="(128,1024)"]
Variants: '' (3 seeds, the full sweep), 'tiny' (1 seed, few RL iterations: a smoke run for
laptops and the notebook).

This is an experiment config, not a pipeline config: the script builds the SFT / "rm" / "rl"
pipeline configs from configs/rm_synthetic.py and configs/grpo_arithmetic.py with the model,
task and budgets below, so every run of a seed shares one SFT policy (also the RM trunk init).
"""
import ml_collections


def get_config(variant: str = ""):
  c = ml_collections.ConfigDict()
  c.seeds = (0, 1, 2)
  c.model = ml_collections.ConfigDict(dict(
      d_model=64, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16, mlp_dim=192, max_seq_len=32))
  c.task_kwargs = ml_collections.ConfigDict(dict(min_digits=1, max_digits=2))
  c.sft = ml_collections.ConfigDict(dict(steps=400, lr=3e-3))
  # proxy reward models: scalar BT heads trained on N gold-labelled pairs each, at a fixed
  # budget (steps x batch), so a smaller N means more epochs over fewer pairs; `members` of
  # them at the mitigation N (same pairs, different init and order) form the ensembles.
  # data: "policy" = pairs of the SFT policy's own samples (as Gao et al.), "synthetic" =
  # `synthetic_rm_pairs` (the answer vs digit edits and arithmetic slips; p_answer applies)
  c.proxy = ml_collections.ConfigDict(dict(
      num_pairs=(1024, 4096, 16384), members=3, data="policy", label_noise=0.0, p_answer=0.5,
      steps=300, batch_size=64, lr=1e-3, eval_pairs=256,
      length_bias=0.8,            # the length-hacking proxy: verbose chosen, terse rejected
      uwo_lambda=1.0))
  # best-of-n over K samples of the SFT policy per held-out prompt (exact expectation for n <= K)
  c.bon = ml_collections.ConfigDict(dict(num_prompts=64, samples=256, max_new_tokens=8,
                                         ns=(1, 2, 3, 4, 5, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256)))
  # GRPO against the proxy; KL(pi || pi_init) from the logged per-token k3 x mean length
  c.rl = ml_collections.ConfigDict(dict(
      objective="grpo", iterations=60, num_prompts=16, group_size=8, max_new_tokens=8,
      lr=2e-4, beta=0.0, kl_betas=(0.05, 0.2), d_bins=10))
  # the N the mitigations (and the length-biased proxy) are compared at, and which to run
  c.mitigation_num_pairs = 4096
  c.mitigations = ("ensemble_mean", "ensemble_wco", "ensemble_uwo", "log_sigmoid", "par", "kl")
  c.length_hacking = True   # a proxy trained with the length correlate, plain and length-controlled
  c.compilation_cache = True  # <out>/jax_cache: the study's runs share programs, compile once
  if variant == "tiny":
    c.seeds = (0,)
    c.proxy.update(num_pairs=(1024, 4096), members=2, eval_pairs=128)
    c.bon.update(num_prompts=32, samples=128, ns=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64, 128))
    c.rl.update(iterations=30, kl_betas=(0.2,), d_bins=6)
    c.mitigations = ("ensemble_wco", "par", "kl")
  elif variant:
    raise ValueError(f"overoptimization: unknown variant {variant!r}; allowed: '', 'tiny'")
  return c
