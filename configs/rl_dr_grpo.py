"""dr_grpo on the same task and budget as configs/grpo_arithmetic.py (SFT warm-up, then RL).

Run:   rewardlab train --config configs/rl_dr_grpo.py[:tiny]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpo_arithmetic  # noqa: E402


def get_config(variant: str = ""):
  return grpo_arithmetic.get_config(variant, objective="dr_grpo")
