"""Sweeps: grid points x seeds as ordinary run directories, summarised with confidence intervals.

    from rewardlab.sweep import SweepSpec, product, run_sweep, compare
    spec = SweepSpec(product({"objective.name": ["dpo", "ipo"]}), seeds=(0, 1, 2))
    out = run_sweep(config, spec, "runs/my_sweep")          # resumable; summary.md/.csv, curves.png
    compare(out["summary"]["rows"], {"objective.name": "ipo"}, {"objective.name": "dpo"}, "gold_reward")

`rewardlab sweep` is the command-line form (rewardlab/cli.py). Modules: `spec` (grid, seeds,
each run's config and folder), `runner` (resumable execution, shared SFT warm-ups, parallel
processes), `summary` (t intervals, tables, curves with bands, paired comparisons),
`vmapped` (a point's seeds as one vmapped update step).
"""
from rewardlab.sweep.runner import is_finished, run_sweep
from rewardlab.sweep.spec import Run, SweepError, SweepSpec, plan, point_name, product
from rewardlab.sweep.summary import compare, load_sweep, summarize_sweep

__all__ = ["SweepSpec", "SweepError", "Run", "product", "plan", "point_name", "run_sweep", "is_finished",
           "compare", "summarize_sweep", "load_sweep"]
