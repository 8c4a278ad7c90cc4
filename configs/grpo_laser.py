"""GRPO + LaSeR: the verifier-reward GRPO of configs/grpo_arithmetic.py plus the last-token
self-reward beta (log pi("#" | x, y) - c) trained toward the verifier outcome (MSE, coef 1).
Evaluation reports the self-reward's AUC for correct vs wrong samples and test-time
selection by it (weighted majority, best-of-n).

Run:   rewardlab train --config configs/grpo_laser.py[:tiny]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpo_arithmetic  # noqa: E402


def get_config(variant: str = ""):
  c = grpo_arithmetic.get_config(variant)
  c.workdir = c.workdir.replace("grpo_", "grpo_laser_")
  c.laser.update(coef=1.0, beta=0.1, token="#")
  return c
