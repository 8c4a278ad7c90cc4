"""Self-rewarding and label-free methods on the synthetic task at equal budget.

    python experiments/compare_self_rewards.py [--variant tiny] [--out runs/compare_self]

Runs (one shared SFT warm-up for the GRPO runs, copied): verifier-reward GRPO, GRPO + LaSeR,
GRPO + SPARK (judge AUC = the model judging its own held-out samples),
label-free GRPO with self-certainty, label-free GRPO with majority vote, and the
self-rewarding DPO loop (its own warm-up also teaches judging). Reports held-out greedy
accuracy before/after, pass@1, test-time selection over 8 samples (plain majority,
self-certainty Borda, LaSeR-weighted majority, LaSeR best-of-8), the AUCs of
self-certainty / LaSeR / the self-judge for correct vs wrong samples, and wall time.
Writes <out>/table.md and <out>/results.json.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

import grpo_arithmetic  # noqa: E402
import grpo_label_free  # noqa: E402
import grpo_laser  # noqa: E402
import grpo_spark  # noqa: E402
import self_rewarding  # noqa: E402
from rewardlab.eval.tables import run_sharing_sft_warmup, write_results  # noqa: E402
from rewardlab.pipelines import online_preference, rl  # noqa: E402

RL_RUNS = {
    "GRPO (verifier)": lambda v: grpo_arithmetic.get_config(v),
    "GRPO + LaSeR": lambda v: grpo_laser.get_config(v),
    "GRPO + SPARK": lambda v: grpo_spark.get_config(v),
    "GRPO self-certainty (label-free)": lambda v: grpo_label_free.get_config(f"{v},self_certainty"),
    "GRPO majority vote (label-free)": lambda v: grpo_label_free.get_config(f"{v},majority_vote"),
}
SELECTION = ("majority@8", "sc_borda@8", "laser_weighted_majority@8", "laser_best_of_8", "sc_auc", "laser_auc")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--variant", default="tiny")
  ap.add_argument("--out", default="runs/compare_self")
  args = ap.parse_args()
  os.makedirs(args.out, exist_ok=True)
  shared = os.path.join(args.out, "_shared_sft_warmup")
  results = []
  for name, make in RL_RUNS.items():
    config = make(args.variant)
    config.train.progress = False
    workdir = os.path.join(args.out, name.split(" (")[0].replace(" ", "_").replace("+", "plus"))
    summary = run_sharing_sft_warmup(rl.run, config, workdir, shared)
    evals = [r for r in summary["records"] if r["split"] == "eval"]   # also when resumed
    start, end = evals[0], evals[-1]
    row = {"run": name, "acc_before": start["accuracy"], "acc_after": end["accuracy"],
           "pass1_after": end["pass@1"], **{k: end.get(k, float("nan")) for k in SELECTION},
           "judge_auc": end.get("judge_auc", float("nan")), "wall_s": summary["wall_s"]}
    results.append(row)
    print(row, flush=True)
  config = self_rewarding.get_config(args.variant)
  config.train.progress = False
  config.online.min_margin = 0.01
  summary = online_preference.run(config, os.path.join(args.out, "self_rewarding_dpo"))
  evals = [r for r in summary["records"] if r["split"] == "eval"]
  rounds = [r for r in summary["records"] if r["split"] == "round"]
  row = {"run": "self-rewarding DPO loop", "acc_before": evals[0]["accuracy"], "acc_after": evals[-1]["accuracy"],
         "pass1_after": float("nan"), **{k: float("nan") for k in SELECTION},
         "judge_auc": sum(r["ranker_auc"] for r in rounds) / len(rounds), "wall_s": summary.get("wall_s", float("nan"))}
  results.append(row)
  print(row, flush=True)
  print(write_results(results, args.out))


if __name__ == "__main__":
  main()
