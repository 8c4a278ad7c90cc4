"""A sweep's results: final metrics per run, mean and 95% t interval over seeds per grid point
(summary.md, summary.csv), learning curves with bands (curves.png), and comparisons.

Final metrics: "name" means the eval split, "split/name" another split ("train/loss");
by default every scalar of the last eval record (the last train record's when a run has no
evaluation). The interval is Student's t over seeds; comparisons are paired by seed when
both points ran the same seeds, else Welch (`rewardlab.eval.stats` says why).
"""
from __future__ import annotations

import csv
import json
import math
import os
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from rewardlab.eval.stats import Interval, describe_difference, diff_ci, mean_ci
from rewardlab.sweep.spec import Run, SweepError, point_name
from rewardlab.train.metrics import read_metrics

SPLITS = ("train", "eval", "round")
TIMING = ("tokens_per_s", "iter_s", "wall_s")   # machine speed, not results


def parse_metric(metric: str) -> tuple[str, str]:
  """'gold_reward' -> ('eval', 'gold_reward'); 'train/loss' -> ('train', 'loss');
  'accuracy/math' (an eval metric with a slash) -> ('eval', 'accuracy/math')."""
  split, sep, name = metric.partition("/")
  return (split, name) if sep and split in SPLITS else ("eval", metric)


def metric_label(split: str, name: str) -> str:
  return name if split == "eval" else f"{split}/{name}"


class RunResult(NamedTuple):
  point: str
  seed: int
  workdir: str
  records: list


def load_runs(runs: Sequence[tuple[str, int, str]]) -> list[RunResult]:
  """(point name, seed, run dir) -> the run's metrics records; a missing file is an error."""
  out = []
  for point, seed, workdir in runs:
    path = os.path.join(workdir, "metrics.jsonl")
    if not os.path.exists(path):
      raise SweepError(f"{path}: missing (run {point} seed {seed} has not run)")
    out.append(RunResult(point, seed, workdir, read_metrics(path)))
  return out


def _scalar_keys(record: Mapping) -> list[str]:
  return [k for k, v in record.items()
          if k not in ("step", "split") + TIMING and isinstance(v, (int, float)) and not isinstance(v, bool)]


def default_metrics(result: RunResult) -> tuple[str, ...]:
  """Every scalar of the run's last eval record, or of its last train record without evals."""
  for split in ("eval", "train"):
    rows = [r for r in result.records if r["split"] == split]
    if rows:
      return tuple(metric_label(split, k) for k in _scalar_keys(rows[-1]))
  raise SweepError(f"{result.workdir}/metrics.jsonl: no train or eval records")


def final_value(result: RunResult, metric: str) -> float:
  """The metric in the run's last record of its split."""
  split, name = parse_metric(metric)
  rows = [r for r in result.records if r["split"] == split]
  if not rows or name not in rows[-1]:
    have = _scalar_keys(rows[-1]) if rows else []
    raise SweepError(f"{result.workdir}/metrics.jsonl: no {name!r} in the last {split} record; "
                     f"it has {have}")
  value = rows[-1][name]
  return math.nan if value is None else float(value)   # metrics.jsonl writes non-finite values as null


def curve(result: RunResult, metric: str) -> tuple[np.ndarray, np.ndarray]:
  """(steps, values) of the metric over the run."""
  split, name = parse_metric(metric)
  pts = [(r["step"], r[name]) for r in result.records if r["split"] == split and name in r]
  return np.array([p[0] for p in pts]), np.array([p[1] for p in pts], np.float64)


class PointSummary(NamedTuple):
  point: str
  overrides: Mapping[str, Any]
  seeds: tuple
  intervals: Mapping[str, Interval]     # metric -> mean and 95% t interval over seeds
  values: Mapping[str, tuple]           # metric -> per-seed values, in `seeds` order


def summarize(results: Sequence[RunResult], points: Sequence[tuple[str, Mapping[str, Any]]],
              metrics: Sequence[str] = ()) -> list[PointSummary]:
  """One PointSummary per grid point ((name, overrides), in order) over its runs' final values."""
  metrics = tuple(metrics) or default_metrics(results[0])
  rows = []
  for name, overrides in points:
    mine = [r for r in results if r.point == name]
    if not mine:
      raise SweepError(f"sweep point {name}: no runs")
    values = {m: tuple(final_value(r, m) for r in mine) for m in metrics}
    rows.append(PointSummary(name, dict(overrides), tuple(r.seed for r in mine),
                             {m: mean_ci(v) for m, v in values.items()}, values))
  return rows


def _cell(value) -> str:
  if isinstance(value, float):
    return f"{value:.4g}"
  return str(value)


def summary_markdown(rows: Sequence[PointSummary], title: str = "") -> str:
  """A table: one row per point, its overrides, then 'mean [low, high]' per metric."""
  fields = list(dict.fromkeys(k for r in rows for k in r.overrides))
  metrics = list(rows[0].intervals)
  seeds = ", ".join(str(s) for s in rows[0].seeds)
  lines = [f"# {title or 'Sweep summary'}", "",
           f"Mean over seeds ({seeds}; n = {len(rows[0].seeds)}) and its 95% Student-t confidence interval "
           "[low, high] of each run's final value (eval metrics: the last evaluation).", "",
           "| " + " | ".join(fields + metrics) + " |", "|" + "---|" * (len(fields) + len(metrics))]
  for r in rows:
    lines.append("| " + " | ".join([_cell(r.overrides.get(f, "")) for f in fields]
                                   + [str(r.intervals[m]) for m in metrics]) + " |")
  return "\n".join(lines) + "\n"


def write_summary(rows: Sequence[PointSummary], out_dir: str, title: str = "") -> dict:
  """<out_dir>/summary.md and summary.csv (one row per point and metric: overrides, metric,
  n, mean, ci_low, ci_high, std, seeds, values)."""
  os.makedirs(out_dir, exist_ok=True)
  md = summary_markdown(rows, title)
  with open(os.path.join(out_dir, "summary.md"), "w") as f:
    f.write(md)
  fields = list(dict.fromkeys(k for r in rows for k in r.overrides))
  with open(os.path.join(out_dir, "summary.csv"), "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["point"] + fields + ["metric", "n", "mean", "ci_low", "ci_high", "std", "seeds", "values"])
    for r in rows:
      for m, ci in r.intervals.items():
        v = np.asarray(r.values[m])
        w.writerow([r.point] + [r.overrides.get(k, "") for k in fields]
                   + [m, ci.n, repr(ci.mean), repr(ci.low), repr(ci.high),
                      repr(float(np.std(v, ddof=1))) if v.size > 1 else "nan",
                      " ".join(map(str, r.seeds)), " ".join(repr(float(x)) for x in v)])
  return {"md": os.path.join(out_dir, "summary.md"), "csv": os.path.join(out_dir, "summary.csv"),
          "table": md}


def read_summary_csv(path: str) -> dict[tuple[str, str], dict]:
  """summary.csv -> {(point, metric): {"n", "mean", "ci_low", "ci_high", ...}} (floats)."""
  with open(path) as f:
    rows = list(csv.DictReader(f))
  return {(r["point"], r["metric"]): dict(r, n=int(r["n"]), mean=float(r["mean"]), ci_low=float(r["ci_low"]),
                                          ci_high=float(r["ci_high"])) for r in rows}


def band(curves: Sequence[tuple[np.ndarray, np.ndarray]]):
  """Mean and pointwise 95% t interval over seeds at the steps every seed logged:
  -> (steps [S], mean [S], low [S], high [S])."""
  common = sorted(set.intersection(*(set(s.tolist()) for s, _ in curves)))
  at = np.array([[v[list(s).index(t)] for t in common] for s, v in curves])   # [n_seeds, S]
  cis = [mean_ci(at[:, j]) for j in range(len(common))]
  return (np.array(common), np.array([c.mean for c in cis]), np.array([c.low for c in cis]),
          np.array([c.high for c in cis]))


def plot_sweep(results: Sequence[RunResult], rows: Sequence[PointSummary], path: str,
               metrics: Sequence[str] = (), max_panels: int = 6) -> str | None:
  """One panel per metric (default: the summary's, up to max_panels): each point's mean curve
  over seeds with its pointwise 95% t band."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  metrics = list(metrics or rows[0].intervals)[:max_panels]
  if not metrics:
    return None
  fig, axes = plt.subplots(1, len(metrics), figsize=(4.2 * len(metrics), 3.4), squeeze=False)
  for ax, metric in zip(axes[0], metrics):
    for row in rows:
      curves = [curve(r, metric) for r in results if r.point == row.point]
      curves = [c for c in curves if c[0].size]
      if not curves:
        continue
      steps, mean, low, high = band(curves)
      line, = ax.plot(steps, mean, marker="o" if steps.size < 12 else None, markersize=3, label=row.point)
      if not np.all(np.isnan(low)):
        ax.fill_between(steps, low, high, color=line.get_color(), alpha=0.2, linewidth=0)
    ax.set_title(metric)
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  axes[0][0].legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path


def summarize_sweep(workdir: str, runs: Sequence[Run] | None = None, metrics: Sequence[str] = (),
                    title: str = "") -> dict:
  """Reads every run of the sweep in `workdir` (from `runs`, or its sweep.json), writes
  summary.md, summary.csv and curves.png there. Returns {"md", "csv", "table", "figure",
  "rows", "results"}."""
  sweep = load_sweep(workdir) if runs is None else None
  if runs is None:
    triples = [(r["point"], r["seed"], os.path.join(workdir, r["dir"])) for r in sweep["runs"]]
    points = [(p["name"], p["overrides"]) for p in sweep["points"]]
    metrics = tuple(metrics) or tuple(sweep.get("metrics", ()))
  else:
    triples = [(point_name(r.point), r.seed, r.workdir) for r in runs]
    points = list({point_name(r.point): r.point for r in runs}.items())
  results = load_runs(triples)
  rows = summarize(results, points, metrics)
  out = write_summary(rows, workdir, title or f"Sweep {os.path.basename(os.path.abspath(workdir))}")
  out["figure"] = plot_sweep(results, rows, os.path.join(workdir, "curves.png"))
  out.update(rows=rows, results=results)
  return out


def load_sweep(workdir: str) -> dict:
  path = os.path.join(workdir, "sweep.json")
  if not os.path.exists(path):
    raise SweepError(f"{path}: missing; is {workdir!r} a sweep directory?")
  with open(path) as f:
    return json.load(f)


class Comparison(NamedTuple):
  a: str
  b: str
  metric: str
  difference: Interval    # mean(A) - mean(B) and its 95% interval
  paired: bool
  text: str

  def __str__(self) -> str:
    return self.text


def _find(rows: Sequence[PointSummary], which) -> PointSummary:
  """A point by name, or by a dict of overrides it must match (exactly one point)."""
  if isinstance(which, str):
    found = [r for r in rows if r.point == which]
  else:
    found = [r for r in rows if all(r.overrides.get(k) == v for k, v in dict(which).items())]
  if len(found) != 1:
    raise SweepError(f"compare: {which!r} matches {len(found)} points; points: {[r.point for r in rows]}")
  return found[0]


def compare(rows: Sequence[PointSummary], a, b, metric: str, paired: bool | None = None,
            quiet: bool = False) -> Comparison:
  """Difference of the final `metric` between points a and b (names or override dicts) with
  its 95% interval; prints "A > B on metric: +0.10 [0.04, 0.16]" or "no difference
  detected ...". paired=None: paired by seed when both ran the same seeds, else Welch."""
  pa, pb = _find(rows, a), _find(rows, b)
  if metric not in pa.values or metric not in pb.values:
    raise SweepError(f"compare: metric {metric!r} not summarised; have {list(pa.values)}")
  same_seeds = pa.seeds == pb.seeds
  paired = same_seeds if paired is None else paired
  if paired and not same_seeds:
    raise SweepError(f"compare: paired needs the same seeds; {pa.point} ran {pa.seeds}, {pb.point} ran {pb.seeds}")
  diff = diff_ci(pa.values[metric], pb.values[metric], paired)
  text = describe_difference(diff, pa.point, pb.point, metric)
  if not quiet:
    print(text)
  return Comparison(pa.point, pb.point, metric, diff, paired, text)
