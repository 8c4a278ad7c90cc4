"""Helpers the experiment scripts share (rewardlab.eval.tables, rewardlab.sweep.report)."""
import json
import math

import numpy as np
import pytest
from scipy import stats

from rewardlab.eval.tables import markdown_table
from rewardlab.sweep import SweepError, compare
from rewardlab.sweep.report import (best, change, ci_table, comparisons, derived_summary, experiment_arguments, first,
                                    from_json, last, mean_last, optional, separated, write_table)
from rewardlab.sweep.summary import load_runs


def test_result_table():
  rows = [{"run": "x", "acc": 0.12345}, {"run": "y", "kl": None, "acc": 1.0}]
  assert markdown_table(rows) == "| run | acc | kl |\n|---|---|---|\n| x | 0.123 |  |\n| y | 1.000 |  |\n"


def _fake_sweep(tmp_path, accs):
  """Run dirs <point>/seed_<s> whose eval accuracy goes through accs[point][seed] (a list per
  run) and whose train reward is 0.1 * step; -> RunResults."""
  triples = []
  for point, per_seed in accs.items():
    for seed, values in enumerate(per_seed):
      d = tmp_path / point / f"seed_{seed}"
      d.mkdir(parents=True)
      lines = [{"step": 10 * i, "split": "eval", "accuracy": v} for i, v in enumerate(values)]
      lines += [{"step": s, "split": "train", "reward": 0.1 * s} for s in range(1, 6)]
      (d / "metrics.jsonl").write_text("".join(json.dumps(x) + "\n" for x in lines))
      (d / "extra.json").write_text(json.dumps({"bo8": {"gold": 0.5 + seed}}))
      triples.append((point, seed, str(d)))
  return load_runs(triples)


def test_derived_metrics_intervals_and_paired_comparisons(tmp_path):
  results = _fake_sweep(tmp_path, {
      "objective.name=a": [[0.2, 0.5, 0.4], [0.3, 0.7, 0.6], [0.1, 0.3, 0.5]],
      "objective.name=b": [[0.2, 0.3, 0.3], [0.3, 0.4, 0.48], [0.1, 0.2, 0.36]]})
  points = [{"objective.name": "a"}, {"objective.name": "b"}]
  rows = derived_summary(results, points, {
      "before": first("accuracy"), "after": last("accuracy"), "gain": change("accuracy"),
      "peak": best("accuracy"), "r3": mean_last("train/reward", 3), "bo8": from_json("extra.json", "bo8", "gold"),
      "none": from_json("extra.json", "nope")})
  a, b = rows
  assert a.seeds == (0, 1, 2) and a.values["before"] == (0.2, 0.3, 0.1)
  np.testing.assert_allclose(a.values["gain"], [0.2, 0.3, 0.4])
  assert a.values["peak"] == (0.5, 0.7, 0.5) and a.values["bo8"] == (0.5, 1.5, 2.5)
  np.testing.assert_allclose(a.values["r3"], [0.4] * 3)   # mean of rewards at steps 3, 4, 5
  assert all(math.isnan(v) for v in a.values["none"])
  # the interval is Student-t over seeds: gain of a = [0.2, 0.3, 0.4] -> 0.3 +- t_{.975,2} * 0.1 / sqrt(3)
  half = stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3)
  np.testing.assert_allclose([a.intervals["gain"].low, a.intervals["gain"].high], [0.3 - half, 0.3 + half])
  # paired by seed: after(a) - after(b) = [0.1, 0.12, 0.14] -> 0.12 +- t * 0.02 / sqrt(3): separated,
  # although Welch's interval over the unpaired values would not be (seed effects dominate)
  lines = comparisons(rows, {"objective.name": "b"}, ["after", "before", "none"],
                      names=lambda r: r.overrides["objective.name"])
  assert lines[0] == f"a > b on after: +0.120 [{0.12 - half / 5:.3f}, {0.12 + half / 5:.3f}]"
  assert lines[1] == "no difference detected between a and b on before: +0.000 [0.000, 0.000]"
  assert len(lines) == 2 and separated(lines) == lines[:1]   # "none" (NaN) is skipped
  assert compare(rows, "objective.name=a", "objective.name=b", "after", quiet=True).paired
  assert compare(rows, "objective.name=a", "objective.name=b", "after", paired=False, quiet=True).difference.contains_zero()
  table = ci_table(rows, {"objective": lambda r: r.overrides["objective.name"]}, ["after", "none"])
  assert table.splitlines()[0] == "| objective | after | none |"
  assert table.splitlines()[2] == f"| a | 0.500 [{0.5 - stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3):.3f}, " \
                                 f"{0.5 + stats.t.ppf(0.975, 2) * 0.1 / np.sqrt(3):.3f}] | n/a |"
  with pytest.raises(SweepError, match="baseline"):
    comparisons(rows, {"objective.name": "c"}, ["after"])
  with pytest.raises(SweepError, match="no 'loss'"):
    derived_summary(results, points, {"x": first("train/loss")})
  absent = derived_summary(results, points, {"x": optional(first("train/loss")), "y": optional(last("accuracy"))})
  assert all(math.isnan(v) for v in absent[0].values["x"]) and absent[0].values["y"] == (0.4, 0.6, 0.5)


def test_a_null_metric_a_run_logged_is_nan_not_an_error(tmp_path):
  """metrics.jsonl writes non-finite values as null (e.g. an AUC with one class only)."""
  results = _fake_sweep(tmp_path, {"objective.name=a": [[0.2, None], [0.3, 0.5]]})
  row, = derived_summary(results, [{"objective.name": "a"}], {"after": last("accuracy")})
  assert math.isnan(row.values["after"][0]) and row.values["after"][1] == 0.5
  assert "| nan |" not in ci_table([row], {"p": lambda r: r.point}) and "n/a" in ci_table([row], {"p": lambda r: r.point})


def test_experiment_flags_and_table_files(tmp_path):
  args = experiment_arguments("runs/x").parse_args(["--seeds", "5", "--table", str(tmp_path / "t.md")])
  assert (args.variant, args.seeds, args.out, args.parallel) == ("tiny", 5, "runs/x", 1)
  text = write_table("| a |\n", ["no difference detected"], str(tmp_path), args.table, "# head\n\n")
  assert text == "| a |\n\n- no difference detected\n" == (tmp_path / "table.md").read_text()
  assert (tmp_path / "t.md").read_text() == "# head\n\n" + text
