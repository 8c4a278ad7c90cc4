"""Trains every reward-model head (and a few data/aggregation variants) on the same
synthetic gold-labelled pairs and budget, and writes a comparison table.

    python experiments/compare_rm_heads.py [--variant tiny] [--out runs/compare_rm]

All runs share one SFT warm-up of the trunk (copied). Per run: held-out pairwise accuracy
(overall, answer-vs-wrong, the length-trap subset where the rejected is the verbose one),
best-of-4, calibration ECE, Spearman with the gold reward, and best-of-8 over the warm-up
policy's samples (gold of the RM's pick vs a random pick). Writes <out>/table.md, results.json.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

import numpy as np  # noqa: E402

import rm_synthetic  # noqa: E402
from rewardlab.eval.tables import run_sharing_sft_warmup, write_results  # noqa: E402
from rewardlab.data import make_task  # noqa: E402
from rewardlab.eval.best_of_n import policy_best_of_n  # noqa: E402
from rewardlab.rewards.reward_model import RewardModelScorer  # noqa: E402
from rewardlab.sharding import make_mesh  # noqa: E402
from rewardlab.pipelines import reward_model, sft  # noqa: E402
from rewardlab.train.policy import PolicySpec, build_policy  # noqa: E402

# (name, head, config overrides as {dotted.field: value})
RUNS = [
    ("scalar", "scalar", {}),
    ("ensemble mean (4 heads)", "ensemble", {}),
    ("ensemble min (4 heads)", "ensemble", {"rm.head.aggregation": "min"}),
    ("ensemble uwo (4 heads)", "ensemble", {"rm.head.aggregation": "uwo"}),
    ("gated (3 attributes)", "gated", {}),
    ("ordinal (5 levels)", "ordinal", {"rm.ordinal_ce_weight": 0.5}),
    ("general preference (2k=8)", "general", {}),
    ("process (min over steps)", "process", {}),
    ("scalar, label noise 0.2", "scalar", {"data.label_noise": 0.2}),
    ("scalar, label noise 0.2 + smoothing 0.2", "scalar", {"data.label_noise": 0.2, "rm.label_smoothing": 0.2}),
    ("scalar, length bias 0.8", "scalar", {"data.length_bias": 0.8}),
]


def set_field(config, dotted: str, value):
  *path, last = dotted.split(".")
  node = config
  for p in path:
    node = node[p]
  node[last] = value


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--variant", default="tiny")
  ap.add_argument("--out", default="runs/compare_rm")
  ap.add_argument("--runs", default="", help="comma-separated run indices (default all)")
  args = ap.parse_args()
  os.makedirs(args.out, exist_ok=True)
  shared = os.path.join(args.out, "_shared_sft_warmup")
  chosen = [RUNS[int(i)] for i in args.runs.split(",")] if args.runs else RUNS
  mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  results = []
  for name, head, overrides in chosen:
    config = rm_synthetic.get_config(args.variant, head)
    config.data.p_answer = 1.0
    config.train.progress = False
    for k, v in overrides.items():
      set_field(config, k, v)
    workdir = os.path.join(args.out, name.replace(" ", "_").replace(",", "").replace("(", "").replace(")", ""))
    summary = run_sharing_sft_warmup(reward_model.run, config, workdir, shared)
    rep = summary["report"]
    row = {"run": name, "accuracy": rep["accuracy"],
           "answer_vs_wrong": rep["by_subset"].get("answer_vs_wrong", {}).get("accuracy", float("nan")),
           "length_trap": rep["by_subset"].get("length_trap", {}).get("accuracy", float("nan")),
           "best_of_4": rep["best_of_4"]["accuracy"], "ece": rep["calibration"]["ece"],
           "gold_spearman": rep.get("gold", {}).get("spearman", float("nan"))}
    if head != "process":   # process RMs score step-formatted text, not the policy's answers
      policy = build_policy(PolicySpec.from_config(config), mesh)
      params = sft.warm_start(config, workdir)[0]
      task = make_task(config.data.task, **config.data.task_kwargs)
      problems = task.sample_many(np.random.default_rng(5), 128, split="eval")
      scorer = RewardModelScorer(summary["export"], mesh)
      bon = policy_best_of_n(policy.graphdef, params, policy.tokenizer, mesh, problems,
                             lambda p, c: scorer.score(p, c, group_size=8), n=8,
                             max_new_tokens=config.eval.max_new_tokens,
                             max_prompt_len=config.eval.max_prompt_len, seed=3)
      row.update(bo8_gold=bon["gold_best_of_n"], random_gold=bon["gold_random"], oracle_gold=bon["gold_oracle"])
    row["wall_s"] = summary["wall_s"]
    results.append(row)
    print(row, flush=True)
  print(write_results(results, args.out))


if __name__ == "__main__":
  main()
