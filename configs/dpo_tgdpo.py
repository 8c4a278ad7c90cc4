"""Offline TGDPO (token-level guided DPO; token rewards = the synthetic data's gold digit
rewards) on the pairs and budget of configs/dpo_synthetic.py.

Run:   rewardlab train --config configs/dpo_tgdpo.py[:tiny]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import dpo_synthetic  # noqa: E402


def get_config(variant: str = ""):
  return dpo_synthetic.get_config(variant, objective="tgdpo")
