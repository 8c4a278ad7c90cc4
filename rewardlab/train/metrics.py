"""Metric writers (JSONL always, TensorBoard event files) and the progress display."""
from __future__ import annotations

import json
import math
import os
import sys
import time
from typing import Mapping

import numpy as np


def _to_float(v):
  v = np.asarray(v)
  return float(v) if v.size == 1 else v.tolist()


def strict_record(record: Mapping[str, object]) -> dict:
  """The record as strict JSON values: a NaN / inf number becomes null, and its key is listed
  under "nonfinite" (most JSON readers reject NaN tokens)."""
  out, bad = {}, []
  for k, v in record.items():
    if isinstance(v, float) and not math.isfinite(v):
      out[k] = None
      bad.append(k)
    else:
      out[k] = v
  if bad:
    out["nonfinite"] = sorted(set(out.get("nonfinite", [])) | set(bad))
  return out


class MetricWriter:
  """Appends `{"step": s, "split": ..., name: value}` lines to `<workdir>/metrics.jsonl` and
  writes the same scalars as TensorBoard events under `<workdir>/tb`. `files=False` (every
  process of a multi-process run but process 0): the same records, returned, no files."""

  def __init__(self, workdir: str, tensorboard: bool = True, files: bool = True):
    self.path = os.path.join(workdir, "metrics.jsonl")
    self.files = files
    self._tb = None
    if files:
      os.makedirs(workdir, exist_ok=True)
    if tensorboard and files:
      from tensorboardX import SummaryWriter
      self._tb = SummaryWriter(os.path.join(workdir, "tb"))

  def truncate_after(self, step: int):
    """On resume: drop records past the restored step so the file matches the state."""
    if not self.files or not os.path.exists(self.path):
      return
    kept = [r for r in read_metrics(self.path) if r["step"] <= step]
    tmp = self.path + ".tmp"   # written aside, then renamed: a kill here loses no record
    with open(tmp, "w") as f:
      for r in kept:
        f.write(json.dumps(r, allow_nan=False) + "\n")
    os.replace(tmp, self.path)

  def write(self, step: int, metrics: Mapping[str, object], split: str = "train"):
    record = {"step": int(step), "split": split}
    record.update({k: _to_float(v) for k, v in metrics.items()})
    if self._tb is not None:
      for k, v in record.items():
        if k not in ("step", "split") and isinstance(v, float) and math.isfinite(v):
          self._tb.add_scalar(f"{split}/{k}", v, step)
    record = strict_record(record)
    if not self.files:
      return record
    with open(self.path, "a") as f:
      f.write(json.dumps(record, allow_nan=False) + "\n")
    return record

  def close(self):
    if self._tb is not None:
      self._tb.close()


def read_metrics(path: str, split: str | None = None) -> list[dict]:
  """Reads a metrics.jsonl (or a workdir holding one), optionally one split. A value that was
  not finite reads as None (its key is listed in the record's "nonfinite")."""
  if os.path.isdir(path):
    path = os.path.join(path, "metrics.jsonl")
  with open(path) as f:
    records = [json.loads(line) for line in f if line.strip()]
  return [r for r in records if split is None or r["split"] == split]


class Progress:
  """Live progress: a tqdm bar with the shown metrics and tokens/s on a terminal (or in a
  notebook); otherwise
  (CI logs, nohup) one plain line at most every `every_s` seconds and at the end. Silent
  when disabled (tests)."""

  def __init__(self, total: int, initial: int = 0, enabled: bool = True, desc: str = "train",
               every_s: float = 30.0, stream=None):
    self.enabled, self.total, self.desc, self.every_s = enabled, total, desc, every_s
    self.stream = sys.stderr if stream is None else stream
    self.step = initial
    self._last = self._last_line = time.perf_counter()
    self._shown = ""
    self.bar = None
    if enabled and (self.stream.isatty() or "ipykernel" in sys.modules):   # a terminal or a notebook
      from tqdm.auto import tqdm
      self.bar = tqdm(total=total, initial=initial, desc=desc, dynamic_ncols=True, file=self.stream)

  def update(self, n_steps: int, tokens: int, **shown):
    now = time.perf_counter()
    rate = tokens / max(now - self._last, 1e-9)
    self._last = now
    self.step += n_steps
    self._shown = " ".join([f"{k}={v:.4g}" for k, v in shown.items()] + [f"tok/s={rate:.3g}"])
    if self.bar is not None:
      self.bar.update(n_steps)
      self.bar.set_postfix({**{k: f"{v:.4g}" for k, v in shown.items()}, "tok/s": f"{rate:.3g}"})
    elif self.enabled and (now - self._last_line >= self.every_s or self.step >= self.total):
      self._line(now)
    return rate

  def _line(self, now: float):
    self._last_line = now
    print(f"{self.desc} {self.step}/{self.total} {self._shown}", file=self.stream, flush=True)

  def write(self, text: str):
    if self.bar is not None:
      self.bar.write(text)
    elif self.enabled:
      print(text, file=self.stream, flush=True)

  def close(self):
    if self.bar is not None:
      self.bar.close()
