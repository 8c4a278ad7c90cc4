"""Every preference objective on the same synthetic pairs and budget, offline and online.

    python experiments/compare_preference_objectives.py [--variant tiny] [--out runs/compare_pref]

Offline: configs/dpo_synthetic.py with each objective (DPO, cDPO, robust DPO, IPO, hinge,
SimPO, ORPO, RPO, KTO) on the same gold-labelled pairs. Online: configs/online_dpo_synthetic.py
(on-policy pairs ranked by the gold reward) with DPO and RPO. All runs share one SFT
warm-up (copied). Reports the greedy gold reward vs the reference, win rate vs the
reference, exact-match accuracy, sampled KL to the reference, the implicit-reward accuracy,
and the trend of the chosen log-prob (last minus first logged). Writes <out>/table.md, results.json.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

import dpo_synthetic  # noqa: E402
import online_dpo_synthetic  # noqa: E402
from rewardlab.eval.tables import run_sharing_sft_warmup, write_results  # noqa: E402
from rewardlab.pipelines import online_preference, preference  # noqa: E402
from rewardlab.pipelines.preference import PAIR_OBJECTIVES  # noqa: E402

ONLINE = ("dpo", "rpo")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--variant", default="tiny")
  ap.add_argument("--out", default="runs/compare_pref")
  args = ap.parse_args()
  os.makedirs(args.out, exist_ok=True)
  shared = os.path.join(args.out, "_shared_sft_warmup")
  runs = [("offline", o) for o in PAIR_OBJECTIVES] + [("online", o) for o in ONLINE]
  results = []
  for mode, objective in runs:
    make = dpo_synthetic if mode == "offline" else online_dpo_synthetic
    config = make.get_config(args.variant, objective)
    config.train.progress = False
    workdir = os.path.join(args.out, f"{mode}_{objective}")
    pipeline = preference if mode == "offline" else online_preference
    summary = run_sharing_sft_warmup(pipeline.run, config, workdir, shared)
    evals = [r for r in summary["records"] if r["split"] == "eval"]
    train = [r for r in summary["records"] if r["split"] == "train"]
    end = evals[-1]
    row = {"mode": mode, "objective": objective, "gold_ref": end["gold_reward_ref"], "gold": end["gold_reward"],
           "win_rate_vs_ref": end["win_rate_vs_ref"], "accuracy": end["accuracy"], "kl_to_ref": end["kl_to_ref"],
           "reward_accuracy": train[-1].get("reward_accuracy", float("nan")),
           "logp_chosen_trend": train[-1]["logp_chosen"] - train[0]["logp_chosen"]}
    results.append(row)
    print(row, flush=True)
  print(write_results(results, args.out))


if __name__ == "__main__":
  main()
