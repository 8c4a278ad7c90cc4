"""RewardBench-style evaluation of a reward model from its pairwise scores (host numpy).

`rm_report` takes the pairs and, per pair, the logit of P(chosen > rejected) (and, when the
head has one, per-response scores) and returns a JSON-able dict:
  accuracy              over non-tied pairs (ties are excluded from every accuracy)
  by_subset/by_category accuracy and count per group
  best_of_4             pairs grouped by (prompt, chosen) with >= 3 rejected: chosen must
                        beat every rejected
  calibration           reliability table over confidence bins of max(p, 1 - p), and ECE
  gold                  with gold rewards per response: Spearman correlation of RM score
                        and gold, and pairwise agreement with the gold order
`format_report` renders it as a markdown table; `write_report` writes both next to a run.
"""
from __future__ import annotations

import collections
import json
import os
from typing import Sequence

import numpy as np


def _accuracy(correct: np.ndarray) -> dict:
  return {"accuracy": float(np.mean(correct)) if len(correct) else float("nan"), "count": int(len(correct))}


def _by(keys: Sequence, correct: np.ndarray) -> dict:
  groups = collections.defaultdict(list)
  for k, c in zip(keys, correct):
    groups[k or "(none)"].append(c)
  return {k: _accuracy(np.array(v)) for k, v in sorted(groups.items())}


def best_of_4(pairs, correct_all: np.ndarray, tie: np.ndarray) -> dict:
  groups = collections.defaultdict(list)
  for i, p in enumerate(pairs):
    if not tie[i]:
      groups[(p.prompt, p.chosen)].append(bool(correct_all[i]))
  wins = [all(v) for v in groups.values() if len(v) >= 3]
  return _accuracy(np.array(wins, bool))


def reliability(prob_chosen: np.ndarray, num_bins: int = 5) -> dict:
  """Confidence max(p, 1-p) binned over [0.5, 1]: per bin count, mean confidence, accuracy."""
  conf = np.maximum(prob_chosen, 1 - prob_chosen)
  correct = (prob_chosen > 0.5).astype(np.float64)
  edges = np.linspace(0.5, 1.0, num_bins + 1)
  which = np.clip(np.digitize(conf, edges[1:-1]), 0, num_bins - 1)
  rows, ece = [], 0.0
  for b in range(num_bins):
    sel = which == b
    if not sel.any():
      rows.append({"bin": f"{edges[b]:.2f}-{edges[b + 1]:.2f}", "count": 0})
      continue
    c, a = float(conf[sel].mean()), float(correct[sel].mean())
    ece += sel.mean() * abs(c - a)
    rows.append({"bin": f"{edges[b]:.2f}-{edges[b + 1]:.2f}", "count": int(sel.sum()),
                 "confidence": c, "accuracy": a})
  return {"table": rows, "ece": float(ece)}


def _rank(x: np.ndarray) -> np.ndarray:
  order = np.argsort(x, kind="stable")
  ranks = np.empty(len(x))
  ranks[order] = np.arange(len(x))
  for v in np.unique(x):                         # average ranks of ties
    sel = x == v
    ranks[sel] = ranks[sel].mean()
  return ranks


def spearman(a: np.ndarray, b: np.ndarray) -> float:
  ra, rb = _rank(np.asarray(a, np.float64)), _rank(np.asarray(b, np.float64))
  if ra.std() == 0 or rb.std() == 0:
    return float("nan")
  return float(np.corrcoef(ra, rb)[0, 1])


def rm_report(pairs, pair_logits: np.ndarray, scores: np.ndarray | None = None,
              gold: np.ndarray | None = None, num_bins: int = 5) -> dict:
  """pairs: N PreferencePairs; pair_logits [N]; scores/gold [N, 2] (chosen, rejected) or None."""
  pair_logits = np.asarray(pair_logits, np.float64)
  if len(pair_logits) != len(pairs):
    raise ValueError(f"rm_report: {len(pair_logits)} logits for {len(pairs)} pairs")
  tie = np.array([p.tie for p in pairs], bool)
  win = pair_logits > 0
  decided = ~tie
  keep = lambda xs: [x for x, d in zip(xs, decided) if d]   # noqa: E731
  report = dict(_accuracy(win[decided]),
                by_subset=_by(keep([p.subset for p in pairs]), win[decided]),
                by_category=_by(keep([p.category for p in pairs]), win[decided]),
                best_of_4=best_of_4(pairs, win, tie),
                calibration=reliability(1 / (1 + np.exp(-pair_logits[decided])), num_bins))
  if gold is not None:
    gold = np.asarray(gold, np.float64)
    g = {}
    if scores is not None:
      g["spearman"] = spearman(np.asarray(scores).reshape(-1), gold.reshape(-1))
    differs = gold[:, 0] != gold[:, 1]
    agree = (pair_logits > 0) == (gold[:, 0] > gold[:, 1])
    g["pairwise_agreement"] = float(np.mean(agree[differs])) if differs.any() else float("nan")
    report["gold"] = g
  return report


def format_report(report: dict, title: str = "Reward model evaluation") -> str:
  lines = [f"## {title}", "", "| group | pairs | accuracy |", "|---|---|---|",
           f"| all (non-tied) | {report['count']} | {report['accuracy']:.3f} |"]
  for kind in ("by_subset", "by_category"):
    for name, r in report[kind].items():
      lines.append(f"| {kind[3:]}: {name} | {r['count']} | {r['accuracy']:.3f} |")
  b4 = report["best_of_4"]
  if b4["count"]:
    lines.append(f"| best-of-4 groups | {b4['count']} | {b4['accuracy']:.3f} |")
  if "gold" in report:
    for k, v in report["gold"].items():
      lines.append(f"| gold {k} | | {v:.3f} |")
  cal = report["calibration"]
  lines += ["", f"Calibration (ECE {cal['ece']:.3f}):", "", "| confidence bin | pairs | mean confidence | accuracy |",
            "|---|---|---|---|"]
  for row in cal["table"]:
    if row["count"]:
      lines.append(f"| {row['bin']} | {row['count']} | {row['confidence']:.3f} | {row['accuracy']:.3f} |")
  return "\n".join(lines) + "\n"


def write_report(report: dict, folder: str, name: str = "rm_eval") -> tuple[str, str]:
  os.makedirs(folder, exist_ok=True)
  js, md = os.path.join(folder, f"{name}.json"), os.path.join(folder, f"{name}.md")
  with open(js, "w") as f:
    json.dump(report, f, indent=2)
  with open(md, "w") as f:
    f.write(format_report(report))
  return js, md
