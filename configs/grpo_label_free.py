"""Label-free GRPO: no verifier in the reward. get_config(variant, reward) with reward
"self_certainty" (mean_t KL(U || p_t) from the sampler, an intrinsic reward) or
"majority_vote" (1 if the answer equals its group's majority answer). Accuracy is still
measured by the verifier, only for reporting.

Run:   rewardlab train --config configs/grpo_label_free.py[:tiny]            (self-certainty)
       rewardlab train --config 'configs/grpo_label_free.py:tiny,majority_vote'
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpo_arithmetic  # noqa: E402

REWARDS = ("self_certainty", "majority_vote")


def get_config(arg: str = ""):
  variant, _, reward = arg.partition(",")
  reward = reward or "self_certainty"
  if reward not in REWARDS:
    raise ValueError(f"grpo_label_free: unknown reward {reward!r}; allowed: {list(REWARDS)}")
  c = grpo_arithmetic.get_config(variant)
  c.workdir = c.workdir.replace("grpo_", f"grpo_{reward}_")
  c.rl.rewards = {reward: 1.0}
  return c
