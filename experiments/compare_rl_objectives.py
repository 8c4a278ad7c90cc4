"""Runs every RL objective on the same task, seed and budget and writes a comparison table.

    python experiments/compare_rl_objectives.py [--variant tiny] [--out runs/compare_rl]

All runs share one SFT warm-up (copied, so each objective starts from identical weights).
Writes <out>/table.md and <out>/results.json: held-out greedy accuracy and pass@1/pass@k
before and after RL, final KL to the reference, mean response length, wall time.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

import grpo_arithmetic  # noqa: E402
from rewardlab.eval.tables import run_sharing_sft_warmup, write_results  # noqa: E402
from rewardlab.objectives.policy_gradient import PG_OBJECTIVES  # noqa: E402
from rewardlab.pipelines import rl  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--variant", default="tiny")
  ap.add_argument("--out", default="runs/compare_rl")
  ap.add_argument("--objectives", default=",".join(PG_OBJECTIVES))
  args = ap.parse_args()
  os.makedirs(args.out, exist_ok=True)
  shared_warmup = os.path.join(args.out, "_shared_sft_warmup")
  results = []
  for name in args.objectives.split(","):
    config = grpo_arithmetic.get_config(args.variant, objective=name)
    config.train.progress = False
    workdir = os.path.join(args.out, name)
    summary = run_sharing_sft_warmup(rl.run, config, workdir, shared_warmup)
    start, end = summary["evals"][0], summary["evals"][-1]
    train = [r for r in summary["records"] if r["split"] == "train"]
    k = max(config.eval.pass_k)
    results.append({
        "objective": name, "acc_before": start["accuracy"], "acc_after": end["accuracy"],
        "pass1_before": start["pass@1"], "pass1_after": end["pass@1"],
        f"pass{k}_after": end[f"pass@{k}"], "kl_ref_final": train[-1]["kl_ref"],
        "reward_last10": sum(r["reward"] for r in train[-10:]) / 10,
        "length": train[-1]["response_length"], "wall_s": summary["wall_s"]})
    print(results[-1], flush=True)
  print(write_results(results, args.out))


if __name__ == "__main__":
  main()
