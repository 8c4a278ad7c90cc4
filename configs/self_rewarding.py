"""Self-rewarding loop: each round the policy samples 8 answers per prompt, judges them
itself (P("Y") after "<question><answer>\\nok?"), and trains with DPO on best-vs-worst pairs;
the updated model is the next round's policy, judge and reference.

The SFT warm-up mixes in pointwise judge examples (judge_fraction of each batch, labelled by
the verifier) so the model starts with some judging ability, as the self-rewarding recipe
starts from a model fine-tuned on evaluation data.

Run:   rewardlab train --config configs/self_rewarding.py[:tiny]
Variants: --config.online.cream=True (CREAM), --config.online.temporal=True (temporal)
"""
import os
import sys

import ml_collections

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import online_dpo_synthetic  # noqa: E402


def get_config(variant: str = "", objective: str = "dpo"):
  c = online_dpo_synthetic.get_config(variant, objective)
  c.workdir = c.workdir.replace("online_", "self_rewarding_")
  # cream: smooth each pair by 1 - the rank agreement (Kendall tau) of this and the previous
  #   round's judge (conservative DPO per pair); temporal: the rejected comes from the initial
  #   (older) model's samples, the chosen from the current model's
  c.online.update(ranker="self_judge", reference="previous", min_margin=0.1, cream=False, temporal=False)
  c.judge = ml_collections.ConfigDict(dict(
      template="{question}{answer}\nok?", mode="p_yes", score_tokens=("Y", "N"), max_len=20))
  c.sft_warmup.judge_fraction = 0.3
  c.data.seq_len = 20
  if variant == "tiny":
    c.sft_warmup.steps = 500
  return c
