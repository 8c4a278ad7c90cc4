"""gspo on the same task and budget as configs/grpo_arithmetic.py (SFT warm-up, then RL).

Run:   rewardlab train --config configs/rl_gspo.py[:tiny]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpo_arithmetic  # noqa: E402


def get_config(variant: str = ""):
  return grpo_arithmetic.get_config(variant, objective="gspo")
