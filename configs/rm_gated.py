"""Reward model with the gated head on the synthetic pairs of configs/rm_synthetic.py.

Run:   rewardlab train --config configs/rm_gated.py[:tiny]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import rm_synthetic  # noqa: E402


def get_config(variant: str = ""):
  return rm_synthetic.get_config(variant, head="gated")
