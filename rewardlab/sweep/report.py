"""Experiment reports over a sweep: per-run metrics derived from each run's records (the
first evaluation, a change over the run, a mean over the last records, a value from a file
the experiment wrote into the run directory), their mean and 95% t interval per grid point,
a markdown table of them, and paired comparisons against a baseline point.

    results = summarize_sweep(workdir)["results"]
    rows = derived_summary(results, points, {"acc_before": first("accuracy"),
                                             "acc_after": last("accuracy"),
                                             "gain": change("accuracy")})
    print(ci_table(rows, {"objective": lambda r: r.overrides["objective.name"]}))
    print("\\n".join(comparisons(rows, {"objective.name": "grpo"}, ["acc_after"])))

The rows are `summary.PointSummary`s, so `summary.compare` works on them unchanged.
"""
from __future__ import annotations

import json
import math
import os
from typing import Any, Callable, Mapping, Sequence

import numpy as np

from rewardlab.eval.stats import describe_difference, mean_ci
from rewardlab.sweep.spec import SweepError, point_name
from rewardlab.sweep.summary import PointSummary, RunResult, compare, curve, final_value, parse_metric

RunMetric = Callable[[RunResult], float]


def last(metric: str) -> RunMetric:
  """The metric's value in the run's last record of its split ("accuracy" = eval split)."""
  return lambda r: final_value(r, metric)


def first(metric: str) -> RunMetric:
  """The metric's value in the run's first record of its split (RL: the evaluation at step 0,
  i.e. the SFT warm-up's end point)."""
  def value(r: RunResult) -> float:
    steps, values = curve(r, metric)
    if not steps.size:
      raise SweepError(f"{r.workdir}/metrics.jsonl: no {parse_metric(metric)[1]!r} in any "
                       f"{parse_metric(metric)[0]} record")
    return float(values[0])
  return value


def change(metric: str) -> RunMetric:
  """Last minus first value of the metric over the run."""
  lo, hi = first(metric), last(metric)
  return lambda r: hi(r) - lo(r)


def best(metric: str) -> RunMetric:
  """The largest value the metric took over the run (NaNs ignored)."""
  def value(r: RunResult) -> float:
    _, values = curve(r, metric)
    return float(np.nanmax(values)) if values.size else math.nan
  return value


def mean_last(metric: str, k: int) -> RunMetric:
  """Mean of the metric over the run's last k records of its split (fewer if the run has fewer)."""
  if k < 1:
    raise ValueError(f"mean_last({metric!r}, k={k}): k must be >= 1")

  def value(r: RunResult) -> float:
    _, values = curve(r, metric)
    if not values.size:
      raise SweepError(f"{r.workdir}/metrics.jsonl: no {metric!r} records")
    return float(np.mean(values[-k:]))
  return value


def from_json(filename: str, *keys: str) -> RunMetric:
  """A number from a JSON file in the run directory (nested keys), e.g. a post-hoc evaluation
  the experiment wrote there: from_json("best_of_8.json", "gold_best_of_n"). A missing key
  is NaN (the metric does not apply to that run); a missing file is an error."""
  def value(r: RunResult) -> float:
    path = os.path.join(r.workdir, filename)
    if not os.path.exists(path):
      raise SweepError(f"{path}: missing (the experiment writes it after the run)")
    with open(path) as f:
      node: Any = json.load(f)
    for key in keys:
      if not isinstance(node, Mapping) or key not in node:
        return math.nan
      node = node[key]
    return math.nan if node is None else float(node)
  return value


def optional(metric: RunMetric) -> RunMetric:
  """The metric, or NaN for a run whose records do not have it (a column that applies to some
  rows of a table only, e.g. LaSeR's selection scores)."""
  def value(r: RunResult) -> float:
    try:
      return metric(r)
    except SweepError:
      return math.nan
  return value


def derived_summary(results: Sequence[RunResult], points: Sequence[Mapping[str, Any]],
                    metrics: Mapping[str, RunMetric]) -> list[PointSummary]:
  """One PointSummary per grid point (overrides dicts, in order): each metric's per-seed
  values (seed order) and their mean with a 95% t interval."""
  rows = []
  for point in points:
    name = point_name(point)
    mine = sorted((r for r in results if r.point == name), key=lambda r: r.seed)
    if not mine:
      raise SweepError(f"sweep point {name}: no runs")
    values = {label: tuple(fn(r) for r in mine) for label, fn in metrics.items()}
    rows.append(PointSummary(name, dict(point), tuple(r.seed for r in mine),
                             {label: mean_ci(v) for label, v in values.items()}, values))
  return rows


def ci_table(rows: Sequence[PointSummary], labels: Mapping[str, Callable[[PointSummary], str]],
             metrics: Sequence[str] = (), digits: int = 3) -> str:
  """Markdown: the label columns (each a function of the row), then 'mean [low, high]' of each
  metric (default: all of the rows')."""
  metrics = list(metrics or rows[0].intervals)
  fmt = f"{{:.{digits}f}}"

  def cell(ci) -> str:
    if math.isnan(ci.mean):
      return "n/a"
    if math.isnan(ci.low):
      return fmt.format(ci.mean)
    return f"{fmt.format(ci.mean)} [{fmt.format(ci.low)}, {fmt.format(ci.high)}]"
  lines = ["| " + " | ".join(list(labels) + metrics) + " |", "|" + "---|" * (len(labels) + len(metrics))]
  for r in rows:
    lines.append("| " + " | ".join([str(fn(r)) for fn in labels.values()] + [cell(r.intervals[m]) for m in metrics])
                 + " |")
  return "\n".join(lines) + "\n"


def comparisons(rows: Sequence[PointSummary], baseline, metrics: Sequence[str],
                names: Callable[[PointSummary], str] | None = None) -> list[str]:
  """For every other point and metric, `compare(point, baseline)` paired by seed: "A > B on m:
  +d [lo, hi]" where the interval excludes 0, else "no difference detected ...". `names`
  renames points in the text (default: their folder names). Metrics that are NaN for either
  point are skipped."""
  base = next((r for r in rows if r.point == baseline or r.overrides == baseline), None)
  if base is None:
    raise SweepError(f"comparisons: baseline {baseline!r} is none of {[r.point for r in rows]}")
  name = names or (lambda r: r.point)
  out = []
  for r in rows:
    if r is base:
      continue
    for m in metrics:
      if any(math.isnan(v) for v in r.values[m] + base.values[m]):
        continue
      diff = compare(rows, r.point, base.point, m, quiet=True).difference
      out.append(describe_difference(diff, name(r), name(base), m))
  return out


def separated(lines: Sequence[str]) -> list[str]:
  """The comparison lines whose interval excludes 0 (the findings)."""
  return [line for line in lines if not line.startswith(("no difference", "no interval"))]


def experiment_arguments(out: str, seeds: int = 3):
  """The flags every experiment script over seeds takes: --variant (the configs' variant,
  default tiny), --seeds, --out (the sweeps' folder), --parallel (runs at a time) and --table
  (also write the table, with a header, to this file)."""
  import argparse
  ap = argparse.ArgumentParser()
  ap.add_argument("--variant", default="tiny")
  ap.add_argument("--seeds", type=int, default=seeds)
  ap.add_argument("--out", default=out)
  ap.add_argument("--parallel", type=int, default=1)
  ap.add_argument("--table", default="", help="also write the table (with a header) to this file")
  return ap


def write_table(table: str, comparison_lines: Sequence[str], out: str, table_path: str = "",
                header: str = "") -> str:
  """The experiment's text (CI table, then one bullet per comparison) -> <out>/table.md, and
  with `table_path` also there after `header`. Returns the text."""
  text = table + "\n" + "\n".join(f"- {line}" for line in comparison_lines) + "\n"
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(text)
  if table_path:
    with open(table_path, "w") as f:
      f.write(header + text)
  return text

