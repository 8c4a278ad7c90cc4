"""Per-seed and mean [95% t interval] report of a main-job sweep (README main job over seeds).

    python -m rewardlab sweep --config configs/grpo_arithmetic.py --seeds 3 --workdir runs/main_3seeds
    python experiments/main_job_report.py runs/main_3seeds

For every run of the sweep: held-out greedy accuracy after the SFT warm-up (the RL run's
step-0 evaluation), at the end of RL, its best over RL's evaluations, RL's gain (end minus
warm-up) and end minus best (how far the last evaluation sits below the peak). Then each as
mean over seeds with its 95% Student-t interval (rewardlab.eval.stats.mean_ci).
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

from rewardlab.sweep.report import best, change, ci_table, derived_summary, first, last  # noqa: E402
from rewardlab.sweep.summary import load_runs, load_sweep  # noqa: E402

METRICS = {"warmup_acc": first("accuracy"), "final_acc": last("accuracy"), "best_acc": best("accuracy"),
           "rl_gain": change("accuracy"), "final_minus_best": lambda r: last("accuracy")(r) - best("accuracy")(r)}


def report(workdir: str) -> str:
  """Markdown: one row per (point, seed), then one row per point with mean [95% t interval]."""
  sweep = load_sweep(workdir)
  results = load_runs([(r["point"], r["seed"], os.path.join(workdir, r["dir"])) for r in sweep["runs"]])
  points = [p["overrides"] for p in sweep["points"]]
  rows = derived_summary(results, points, METRICS)
  lines = ["| point | seed | " + " | ".join(METRICS) + " |", "|" + "---|" * (len(METRICS) + 2)]
  for row in rows:
    for i, seed in enumerate(row.seeds):
      lines.append(f"| {row.point} | {seed} | " + " | ".join(f"{row.values[m][i]:.3f}" for m in METRICS) + " |")
  return "\n".join(lines) + "\n\n" + ci_table(rows, {"point": lambda r: r.point, "n": lambda r: len(r.seeds)})


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("workdir", help="a sweep directory of configs/grpo_arithmetic.py (sweep.json)")
  print(report(ap.parse_args().workdir))


if __name__ == "__main__":
  main()
