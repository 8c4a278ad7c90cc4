"""Every preference objective on the same synthetic pairs and budget, offline and online, over
seeds, through the sweep runner.

    python experiments/compare_preference_objectives.py [--variant tiny] [--seeds 3]
        [--out runs/compare_pref] [--parallel 1] [--table experiments/preference_objectives_tiny.md]

Offline: one sweep over configs/dpo_synthetic.py with each objective in PAIR_OBJECTIVES (DPO,
cDPO, robust DPO, IPO, hinge, SimPO, ORPO, RPO, KTO, SPPO) and TGDPO (gold digit token
rewards; the points that turn the DPO config into each objective's, `overrides_between`) on
the same gold-labelled pairs.
Online: one sweep over configs/online_dpo_synthetic.py (on-policy pairs ranked by the gold
reward) with DPO and RPO. Seed s of every objective of a sweep starts from the same SFT
warm-up (trained once per seed by the runner), so objectives are compared paired by seed,
against DPO of the same mode. Reports the greedy gold reward vs the reference, win rate vs
the reference, exact-match accuracy, sampled KL to the reference, the implicit-reward
accuracy and the trend of the chosen log-prob (last minus first logged), as mean [95% t
interval] over seeds. Writes <out>/table.md.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

import dpo_synthetic  # noqa: E402
import online_dpo_synthetic  # noqa: E402
from rewardlab.pipelines.preference import PAIR_OBJECTIVES  # noqa: E402
from rewardlab.sweep import SweepSpec, run_sweep  # noqa: E402
from rewardlab.sweep.report import (change, ci_table, comparisons, derived_summary, experiment_arguments, last,  # noqa: E402
                                    optional, write_table)
from rewardlab.sweep.spec import overrides_between, seed_list  # noqa: E402

ONLINE = ("dpo", "rpo")
METRICS = {"gold_ref": last("gold_reward_ref"), "gold": last("gold_reward"), "win_rate_vs_ref": last("win_rate_vs_ref"),
           "accuracy": last("accuracy"), "kl_to_ref": last("kl_to_ref"),
           "reward_accuracy": optional(last("train/reward_accuracy")),
           "logp_chosen_trend": optional(change("train/logp_chosen"))}
COMPARED = ("gold", "win_rate_vs_ref", "accuracy", "kl_to_ref")


def sweep_rows(mode: str, module, objectives, args, seeds):
  """One sweep over the mode's config (each objective a point) -> its PointSummary rows."""
  base = module.get_config(args.variant, "dpo")
  base.train.progress = False
  points = tuple(overrides_between(base, module.get_config(args.variant, o)) for o in objectives)
  out = run_sweep(base, SweepSpec(points, seeds, ("gold_reward", "accuracy")), os.path.join(args.out, mode),
                  parallel=args.parallel, config_arg=f"configs/{module.__name__}.py:{args.variant}")
  rows = derived_summary(out["summary"]["results"], points, METRICS)
  return base, [r._replace(point=f"{mode} {o}") for r, o in zip(rows, objectives)]


def main():
  args = experiment_arguments("runs/compare_pref").parse_args()
  seeds = seed_list(args.seeds, dpo_synthetic.get_config(args.variant).seed)
  offline_cfg, offline = sweep_rows("offline", dpo_synthetic, list(PAIR_OBJECTIVES) + ["tgdpo"], args, seeds)
  online_cfg, online = sweep_rows("online", online_dpo_synthetic, list(ONLINE), args, seeds)
  rows = offline + online
  table = ci_table(rows, {"mode": lambda r: r.point.split()[0], "objective": lambda r: r.point.split()[1]})
  lines = comparisons(offline, "offline dpo", COMPARED) + comparisons(online, "online dpo", COMPARED)
  print(write_table(table, lines, args.out, args.table, header(args, offline_cfg, online_cfg, seeds)))


def header(args, off, on, seeds) -> str:
  o = on.online
  return (f"# Preference objectives on synthetic addition ({args.variant or 'default'} variant, {len(seeds)} seeds)\n\n"
          f"`python experiments/compare_preference_objectives.py --variant {args.variant} --seeds {len(seeds)}` (two "
          f"`rewardlab.sweep`s, seeds {list(seeds)}). Offline: {off.train.steps} steps x {off.data.batch_size} of "
          f"{off.data.num_pairs} gold-labelled pairs (chosen = exact answer, rejected = a digit edit), lr "
          f"{off.optim.lr}. Online: {on.train.steps // o.steps_per_round} rounds x {o.steps_per_round} steps; each "
          f"round samples {o.samples_per_prompt} completions for {o.prompts_per_round} prompts from the current "
          f"policy, ranks them by the gold reward and keeps best-vs-worst pairs with gap >= {o.min_margin}. SFT "
          f"warm-up ({off.sft_warmup.steps} steps) shared per seed within each sweep. Gold/accuracy are of greedy "
          f"completions on {off.eval.num_problems} held-out prompts; kl_to_ref is a sampled KL(pi || ref); "
          f"logp_chosen_trend = last minus first logged training log-prob of the chosen completions. Cells: mean "
          f"over seeds [95% Student-t interval]; n/a: the objective does not log the column. Comparisons are paired "
          f"by seed against DPO of the same mode (`rewardlab.sweep.compare`).\n\n")


if __name__ == "__main__":
  main()
