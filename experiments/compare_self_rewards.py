"""Self-rewarding and label-free methods on the synthetic task at equal budget, over seeds,
through the sweep runner.

    python experiments/compare_self_rewards.py [--variant tiny] [--seeds 3] [--out runs/compare_self]
        [--parallel 1] [--table experiments/self_rewards_tiny.md]

Two sweeps (`rewardlab.sweep`) with the same seeds. GRPO runs: one sweep over
configs/grpo_arithmetic.py whose points turn it into each method's config
(`overrides_between`): verifier-reward GRPO, GRPO + LaSeR, GRPO + SPARK (judge AUC = the
model judging its own held-out samples), label-free GRPO with self-certainty and with
majority vote; seed s of every method starts from the same SFT warm-up (trained once per
seed by the runner), so they are compared paired by seed. Then the self-rewarding DPO loop
(configs/self_rewarding.py; its own warm-up also teaches judging). Reports held-out greedy
accuracy before/after, pass@1, test-time selection over 8 samples (plain majority,
self-certainty Borda, LaSeR-weighted majority, LaSeR best-of-8), the AUCs of self-certainty /
LaSeR / the self-judge for correct vs wrong samples, as mean [95% t interval] over seeds, and
every GRPO variant vs verifier GRPO. Writes <out>/table.md.
"""
from __future__ import annotations

import math
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
from rewardlab.sweep import SweepSpec, run_sweep  # noqa: E402
from rewardlab.sweep.report import (ci_table, comparisons, derived_summary, experiment_arguments, first, last,  # noqa: E402
                                    mean_last, optional, write_table)
from rewardlab.sweep.spec import overrides_between, point_name, seed_list  # noqa: E402

GRPO_RUNS = {
    "GRPO (verifier)": lambda v: grpo_arithmetic.get_config(v),
    "GRPO + LaSeR": lambda v: grpo_laser.get_config(v),
    "GRPO + SPARK": lambda v: grpo_spark.get_config(v),
    "GRPO self-certainty (label-free)": lambda v: grpo_label_free.get_config(f"{v},self_certainty"),
    "GRPO majority vote (label-free)": lambda v: grpo_label_free.get_config(f"{v},majority_vote"),
}
SELECTION = ("majority@8", "sc_borda@8", "laser_weighted_majority@8", "laser_best_of_8", "sc_auc", "laser_auc")
GRPO_METRICS = {"acc_before": first("accuracy"), "acc_after": last("accuracy"), "pass1_after": last("pass@1"),
                **{k: optional(last(k)) for k in SELECTION}, "judge_auc": optional(last("judge_auc"))}
# the loop has no pass@1 / selection columns (NaN: n/a); its judge AUC is the mean over every round
LOOP_METRICS = {**{m: lambda r: math.nan for m in GRPO_METRICS}, "acc_before": first("accuracy"),
                "acc_after": last("accuracy"), "judge_auc": mean_last("round/ranker_auc", 10 ** 9)}
COMPARED = ("acc_after", "pass1_after", "majority@8")


def main():
  args = experiment_arguments("runs/compare_self").parse_args()
  base = grpo_arithmetic.get_config(args.variant)
  base.train.progress = False
  points = [overrides_between(base, make(args.variant)) for make in GRPO_RUNS.values()]
  names = dict(zip(map(point_name, points), GRPO_RUNS))
  seeds = seed_list(args.seeds, base.seed)
  grpo = run_sweep(base, SweepSpec(tuple(points), seeds, ("accuracy",)), os.path.join(args.out, "grpo"),
                   parallel=args.parallel, config_arg=f"configs/grpo_arithmetic.py:{args.variant}")
  rows = derived_summary(grpo["summary"]["results"], points, GRPO_METRICS)

  loop = self_rewarding.get_config(args.variant)
  loop.train.progress = False
  loop.online.min_margin = 0.01
  loop.online.prompts_per_round = 512   # 256 left seed 2's first round with 55 pairs, under a batch of 64
  done = run_sweep(loop, SweepSpec(({},), seeds, ("accuracy",)), os.path.join(args.out, "self_rewarding_dpo"),
                   parallel=args.parallel, config_arg=f"configs/self_rewarding.py:{args.variant}")
  loop_row = derived_summary(done["summary"]["results"], [{}], LOOP_METRICS)[0]._replace(
      point="self-rewarding DPO loop")

  label = lambda r: names.get(r.point, r.point)  # noqa: E731
  table = ci_table(rows + [loop_row], {"run": label}, metrics=list(GRPO_METRICS))
  lines = comparisons(rows, points[0], COMPARED, names=label)
  print(write_table(table, lines, args.out, args.table, header(args, base, loop, seeds)))


def header(args, config, loop, seeds) -> str:
  rc = config.rl
  return (f"# Self-rewarding and label-free methods ({args.variant or 'default'} variant, {len(seeds)} seeds)\n\n"
          f"`python experiments/compare_self_rewards.py --variant {args.variant} --seeds {len(seeds)}` (two "
          f"`rewardlab.sweep`s, seeds {list(seeds)}). GRPO runs: {config.train.steps} iterations x {rc.num_prompts} "
          f"prompts x {rc.group_size} samples after an SFT warm-up ({config.sft_warmup.steps} steps) shared per "
          f"seed by every GRPO variant; selection columns over {config.eval.pass_n} samples of "
          f"{config.eval.passk_problems} held-out prompts. The self-rewarding DPO loop ({loop.train.steps} steps, "
          f"{loop.online.prompts_per_round} prompts per round, min margin {loop.online.min_margin}) has its own "
          f"warm-up ({loop.sft_warmup.steps} steps, also teaching "
          f"judging), hence a different acc_before; its judge_auc is the mean over its rounds of the self-judge's AUC "
          f"for correct vs wrong samples. n/a: the column does not apply. Cells: mean over seeds [95% Student-t "
          f"interval]. Comparisons are paired by seed against verifier GRPO (`rewardlab.sweep.compare`).\n\n")


if __name__ == "__main__":
  main()
