"""Every reward-model head (and a few data / aggregation variants) on the same synthetic
gold-labelled pairs and budget, over seeds, through the sweep runner.

    python experiments/compare_rm_heads.py [--variant tiny] [--seeds 3] [--out runs/compare_rm]
        [--parallel 1] [--table experiments/rm_heads_tiny.md]

One sweep (`rewardlab.sweep`) over configs/rm_synthetic.py (chosen = the exact answer):
each row is the point that turns the scalar head's config into the row's
(`overrides_between`), and seed s of every row starts from the same SFT warm-up of the trunk
(trained once per seed by the runner), so rows are compared paired by seed against the
scalar head. Per run, from its held-out report (rm_eval.json): pairwise accuracy (overall,
answer-vs-wrong, the length-trap subset where the rejected is the verbose one), best-of-4,
calibration ECE, Spearman with the gold reward; and, evaluated after the run into
best_of_8.json, best-of-8 over the warm-up policy's samples (gold of the RM's pick vs a
random pick and the oracle). Writes <out>/table.md.
"""
from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

import numpy as np  # noqa: E402

import rm_synthetic  # noqa: E402
from rewardlab.data import make_task  # noqa: E402
from rewardlab.eval.best_of_n import policy_best_of_n  # noqa: E402
from rewardlab.pipelines import sft  # noqa: E402
from rewardlab.rewards.reward_model import RewardModelScorer  # noqa: E402
from rewardlab.sharding import make_mesh  # noqa: E402
from rewardlab.sweep import SweepSpec, plan, run_sweep  # noqa: E402
from rewardlab.sweep.report import (ci_table, comparisons, derived_summary, experiment_arguments, from_json,  # noqa: E402
                                    write_table)
from rewardlab.sweep.spec import overrides_between, point_name, seed_list  # noqa: E402
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
REPORT = "rm_eval.json"
METRICS = {"accuracy": from_json(REPORT, "accuracy"),
           "answer_vs_wrong": from_json(REPORT, "by_subset", "answer_vs_wrong", "accuracy"),
           "length_trap": from_json(REPORT, "by_subset", "length_trap", "accuracy"),
           "best_of_4": from_json(REPORT, "best_of_4", "accuracy"), "ece": from_json(REPORT, "calibration", "ece"),
           "gold_spearman": from_json(REPORT, "gold", "spearman"),
           "bo8_gold": from_json("best_of_8.json", "gold_best_of_n"),
           "random_gold": from_json("best_of_8.json", "gold_random"),
           "oracle_gold": from_json("best_of_8.json", "gold_oracle")}
COMPARED = ("accuracy", "length_trap", "best_of_4", "ece", "bo8_gold")


def row_config(variant: str, head: str, overrides: dict):
  config = rm_synthetic.get_config(variant, head)
  config.data.p_answer = 1.0
  for field, value in overrides.items():
    node, *path = config, *field.split(".")
    for p in path[:-1]:
      node = node[p]
    node[path[-1]] = value
  return config


def best_of_8(config, workdir: str, mesh) -> dict:
  """Gold reward of the run's RM pick among 8 samples of its warm-up policy on 128 held-out
  prompts (vs a random pick and the oracle), written to <workdir>/best_of_8.json. The process
  head scores step-formatted text, not the policy's answers: no entry."""
  path = os.path.join(workdir, "best_of_8.json")
  if not os.path.exists(path):
    out = {}
    if config.rm.head.type != "process":
      policy = build_policy(PolicySpec.from_config(config), mesh)
      params = sft.warm_start(config, workdir)[0]
      task = make_task(config.data.task, **config.data.task_kwargs)
      problems = task.sample_many(np.random.default_rng(5), 128, split="eval")
      scorer = RewardModelScorer(os.path.join(workdir, "reward_model"), mesh)
      out = policy_best_of_n(policy.graphdef, params, policy.tokenizer, mesh, problems,
                             lambda p, c: scorer.score(p, c, group_size=8), n=8,
                             max_new_tokens=config.eval.max_new_tokens,
                             max_prompt_len=config.eval.max_prompt_len, seed=3)
    with open(path, "w") as f:
      json.dump({k: float(v) for k, v in out.items() if np.ndim(v) == 0}, f)
  with open(path) as f:
    return json.load(f)


def main():
  args = experiment_arguments("runs/compare_rm").parse_args()
  base = row_config(args.variant, "scalar", {})
  base.train.progress = False
  points = tuple(overrides_between(base, row_config(args.variant, head, o)) for _, head, o in RUNS)
  names = {point_name(p): name for p, (name, _, _) in zip(points, RUNS)}
  spec = SweepSpec(points, seed_list(args.seeds, base.seed), ("accuracy", "best_of_4"))
  out = run_sweep(base, spec, args.out, parallel=args.parallel, config_arg=f"configs/rm_synthetic.py:{args.variant}")
  mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  for run in plan(base, spec, args.out):
    best_of_8(run.config, run.workdir, mesh)
  rows = derived_summary(out["summary"]["results"], points, METRICS)
  label = lambda r: names[r.point]  # noqa: E731
  table = ci_table(rows, {"run": label})
  lines = comparisons(rows, points[0], COMPARED, names=label)
  print(write_table(table, lines, args.out, args.table, header(args, base, spec)))


def header(args, c, spec) -> str:
  return (f"# Reward-model heads on synthetic addition pairs ({args.variant or 'default'} variant, "
          f"{len(spec.seeds)} seeds)\n\n"
          f"`python experiments/compare_rm_heads.py --variant {args.variant} --seeds {len(spec.seeds)}` (a "
          f"`rewardlab.sweep`, seeds {list(spec.seeds)}). Trunk d={c.model.d_model}, {c.model.n_layers} layers, SFT "
          f"warm-up {c.sft_warmup.steps} steps shared per seed by every row; {c.train.steps} RM steps x "
          f"{c.data.batch_size} pairs; chosen = the exact answer, rejected = arithmetic slips / digit edits. "
          f"Held-out: {c.data.eval_pairs} clean pairs on eval-split prompts (3 rejected per prompt -> best-of-4 "
          f"groups; a length-trap subset where the rejected is the verbose one). bo8_gold: gold reward of the RM's "
          f"pick among 8 samples of the warm-up policy on 128 held-out prompts (random pick = random_gold, oracle = "
          f"oracle_gold); the process head scores step-formatted text, so it has no best-of-8 (n/a). Cells: mean "
          f"over seeds [95% Student-t interval]. Comparisons are paired by seed against the scalar head "
          f"(`rewardlab.sweep.compare`).\n\n")


if __name__ == "__main__":
  main()
