"""Learning-curve plots from metrics.jsonl records (matplotlib, no display needed)."""
from __future__ import annotations

from typing import Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot_curves(records: Sequence[dict], path: str, panels: Sequence[tuple[str, str]]):
  """One panel per (split, metric) present in `records`; saves a PNG to `path`."""
  present = [(s, k) for s, k in panels if any(r["split"] == s and k in r for r in records)]
  if not present:
    return None
  fig, axes = plt.subplots(1, len(present), figsize=(4 * len(present), 3.2), squeeze=False)
  for ax, (split, key) in zip(axes[0], present):
    pts = [(r["step"], r[key]) for r in records if r["split"] == split and r.get(key) is not None]
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o" if split == "eval" else None,
            markersize=3)
    ax.set_title(f"{split}/{key}")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)
  return path
