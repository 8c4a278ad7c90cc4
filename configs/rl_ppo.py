"""PPO (value head + GAE, clipped value loss, KL in the reward) on the same task and budget
as configs/grpo_arithmetic.py.

Run:   rewardlab train --config configs/rl_ppo.py[:tiny]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpo_arithmetic  # noqa: E402


def get_config(variant: str = ""):
  return grpo_arithmetic.get_config(variant, objective="ppo")
