"""Helpers of experiment scripts: result tables (rows of dicts -> markdown + JSON next to
the runs) and one SFT warm-up shared by every run of a comparison."""
from __future__ import annotations

import json
import os
import shutil
from typing import Callable, Mapping, Sequence


def markdown_table(rows: Sequence[Mapping]) -> str:
  """Columns are the union of the rows' keys in first-seen order; floats to 3 decimals."""
  keys = list(dict.fromkeys(k for r in rows for k in r))
  cell = lambda v: f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
  return "\n".join(lines) + "\n"


def write_results(rows: Sequence[Mapping], out_dir: str) -> str:
  """Writes <out_dir>/table.md and results.json; returns the table."""
  os.makedirs(out_dir, exist_ok=True)
  table = markdown_table(rows)
  with open(os.path.join(out_dir, "table.md"), "w") as f:
    f.write(table)
  with open(os.path.join(out_dir, "results.json"), "w") as f:
    json.dump(list(rows), f, indent=2)
  return table


def run_sharing_sft_warmup(run: Callable, config, workdir: str, shared: str):
  """run(config, workdir), starting from the SFT warm-up saved in `shared` when there is
  one (copied in, so the pipeline restores it instead of retraining); the first run's
  warm-up is saved there. Every run of a comparison then starts from identical weights."""
  warmup = os.path.join(workdir, "sft_warmup")
  if os.path.isdir(shared) and not os.path.isdir(warmup):
    shutil.copytree(shared, warmup)
  summary = run(config, workdir)
  if not os.path.isdir(shared):
    shutil.copytree(warmup, shared)
  return summary
