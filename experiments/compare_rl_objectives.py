"""Every RL objective on the same task and budget, over seeds, through the sweep runner.

    python experiments/compare_rl_objectives.py [--variant tiny] [--seeds 5] [--out runs/compare_rl]
        [--objectives grpo,dapo,...] [--parallel 1] [--table experiments/rl_objectives_tiny.md]

One sweep (`rewardlab.sweep`) over objective.name on configs/grpo_arithmetic.py[:variant]:
seed s of every objective starts from the same SFT warm-up (trained once per seed by the
runner) and draws the same prompts, so objectives are compared paired by seed. Re-running
skips finished runs. Writes <out>/summary.md|csv, curves.png (the runner's) and <out>/table.md:
held-out greedy accuracy before (= the warm-up's) and after RL, its gain, pass@1 / pass@4
after, final KL to the reference, the train reward over the last 10 iterations and the mean
response length, each as mean [95% t interval] over seeds, then every objective vs GRPO.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

import grpo_arithmetic  # noqa: E402
from rewardlab.objectives.policy_gradient import PG_OBJECTIVES  # noqa: E402
from rewardlab.sweep import SweepSpec, product, run_sweep  # noqa: E402
from rewardlab.sweep.report import (change, ci_table, comparisons, derived_summary, experiment_arguments, first,  # noqa: E402
                                    last, mean_last, write_table)
from rewardlab.sweep.spec import seed_list  # noqa: E402

METRICS = {"acc_before": first("accuracy"), "acc_after": last("accuracy"), "gain": change("accuracy"),
           "pass@1": last("pass@1"), "pass@4": last("pass@4"), "kl_ref": last("train/kl_ref"),
           "reward_last10": mean_last("train/reward", 10), "length": last("train/response_length")}
COMPARED = ("acc_after", "pass@4", "kl_ref")


def main():
  ap = experiment_arguments("runs/compare_rl", seeds=5)
  ap.add_argument("--objectives", default=",".join(PG_OBJECTIVES))
  args = ap.parse_args()
  config = grpo_arithmetic.get_config(args.variant)
  config.train.progress = False
  points = product({"objective.name": args.objectives.split(",")})
  spec = SweepSpec(points, seed_list(args.seeds, config.seed), ("accuracy", "pass@4", "train/kl_ref"))
  out = run_sweep(config, spec, args.out, parallel=args.parallel,
                  config_arg=f"configs/grpo_arithmetic.py:{args.variant}")
  rows = derived_summary(out["summary"]["results"], points, METRICS)
  name = lambda r: r.overrides["objective.name"]  # noqa: E731
  table = ci_table(rows, {"objective": name})
  lines = comparisons(rows, {"objective.name": "grpo"}, COMPARED, names=name) if "grpo" in args.objectives.split(",") else []
  print(write_table(table, lines, args.out, args.table, header(args, config, spec)))


def header(args, config, spec) -> str:
  rc = config.rl
  return (f"# RL objectives on {config.data.task_kwargs.min_digits}-{config.data.task_kwargs.max_digits}-digit "
          f"addition ({args.variant or 'default'} variant, {len(spec.seeds)} seeds)\n\n"
          f"`python experiments/compare_rl_objectives.py --variant {args.variant} --seeds {len(spec.seeds)}` "
          f"(a `rewardlab.sweep` over objective.name, seeds {list(spec.seeds)}). Each seed: one SFT warm-up "
          f"({config.sft_warmup.steps} steps) shared by every objective, then {config.train.steps} iterations x "
          f"{rc.num_prompts} prompts x {rc.group_size} samples at lr {config.optim.lr}, each objective with its "
          f"PG_OBJECTIVES defaults. Accuracy: greedy exact match on {config.eval.num_problems} held-out prompts "
          f"(acc_before = the warm-up's, identical for every objective of a seed); pass@k from "
          f"{config.eval.pass_n} samples of {config.eval.passk_problems} prompts; kl_ref: the last iteration's "
          f"k3 KL to the reference; reward_last10: mean train reward of the last 10 iterations. Cells: mean over "
          f"seeds [95% Student-t interval]. Comparisons are paired by seed (`rewardlab.sweep.compare`).\n\n")


if __name__ == "__main__":
  main()
