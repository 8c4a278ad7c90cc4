"""GRPO + SPARK: every RL batch's rollouts, labelled by the verifier, also train the same
model as a pointwise judge ("<question><answer>\\nok?" -> Y/N), mixed into the update with
weight spark.coef. Evaluation reports the model's judging AUC/accuracy on its own samples.

Run:   rewardlab train --config configs/grpo_spark.py[:tiny]
"""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import grpo_arithmetic  # noqa: E402


def get_config(variant: str = ""):
  c = grpo_arithmetic.get_config(variant)
  c.workdir = c.workdir.replace("grpo_", "grpo_spark_")
  c.spark.coef = 0.5
  return c
