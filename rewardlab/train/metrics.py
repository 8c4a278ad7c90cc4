"""Metric writers (JSONL always, TensorBoard event files) and the progress display."""
from __future__ import annotations

import json
import math
import os
import time
from typing import Mapping

import numpy as np


def _to_float(v):
  v = np.asarray(v)
  return float(v) if v.size == 1 else v.tolist()


class MetricWriter:
  """Appends `{"step": s, "split": ..., name: value}` lines to `<workdir>/metrics.jsonl` and
  writes the same scalars as TensorBoard events under `<workdir>/tb`."""

  def __init__(self, workdir: str, tensorboard: bool = True):
    os.makedirs(workdir, exist_ok=True)
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if tensorboard:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def truncate_after(self, step: int):
    """On resume: drop records past the restored step so the file matches the state."""
    if not os.path.exists(self.path):
      return
    kept = [r for r in read_metrics(self.path) if r["step"] <= step]
    with open(self.path, "w") as f:
      for r in kept:
        f.write(json.dumps(r) + "\n")

  def write(self, step: int, metrics: Mapping[str, object], split: str = "train"):
    record = {"step": int(step), "split": split}
    record.update({k: _to_float(v) for k, v in metrics.items()})
    with open(self.path, "a") as f:
      f.write(json.dumps(record) + "\n")
    if self._tb is not None:
      for k, v in record.items():
        if k not in ("step", "split") and isinstance(v, float) and math.isfinite(v):
          self._tb.add_scalar(f"{split}/{k}", v, step)
    return record

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str, split: str | None = None) -> list[dict]:
  """Reads a metrics.jsonl (or a workdir holding one), optionally one split."""
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.jsonl")
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if split is None or r["split"] == split]


class Progress:
  """tqdm bar with live loss and tokens/s; silent when disabled (tests)."""

  def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train"):
    self.enabled = enabled
    self._last = time.perf_counter()
    if enabled:
      from tqdm.auto import tqdm
      self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True)

  def update(self, n_steps: int, tokens: int, **shown):
    now = time.perf_counter()
    rate = tokens / max(now - self._last, 1e-9)
    self._last = now
    if self.enabled:
      self.bar.update(n_steps)
      self.bar.set_postfix({**{k: f"{v:.4g}" for k, v in shown.items()}, "tok/s": f"{rate:.3g}"})
    return rate

  def write(self, text: str):
    if self.enabled:
      self.bar.write(text)

  def close(self):
    if self.enabled:
      self.bar.close()
