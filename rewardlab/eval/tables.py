"""Result tables of experiment scripts: rows of dicts -> markdown + JSON next to the runs."""
from __future__ import annotations

import json
import os
from typing import Mapping, Sequence


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
