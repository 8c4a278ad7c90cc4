"""Result tables of experiment scripts: rows of dicts -> markdown. (Experiments over seeds
build their tables from sweeps: rewardlab.sweep.report.)"""
from __future__ import annotations

from typing import Mapping, Sequence


def markdown_table(rows: Sequence[Mapping]) -> str:
  """Columns are the union of the rows' keys in first-seen order; floats to 3 decimals."""
  keys = list(dict.fromkeys(k for r in rows for k in r))
  cell = lambda v: f"{v:.3f}" if isinstance(v, float) else ("" if v is None else str(v))  # noqa: E731
  lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
  lines += ["| " + " | ".join(cell(r.get(k)) for k in keys) + " |" for r in rows]
  return "\n".join(lines) + "\n"
