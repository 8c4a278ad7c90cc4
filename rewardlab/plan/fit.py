"""Refusing a run that will not fit, before anything is allocated.

`check_fit(config)` does nothing unless `config.train.check_fit` is true; then it plans
every function of the config for this machine's devices (abstract inputs, nothing
allocated) and raises `DoesNotFit` naming each function whose per-device peak exceeds
`train.fit_margin` (default 0.9) of the budget: `train.memory_budget_gib` when set (> 0),
else the device's memory. Imports of the planner happen inside the call, so the training
core may import this module without importing the pipelines.
"""
from __future__ import annotations

import dataclasses
import hashlib

from rewardlab.plan.chips import GiB

_CHECKED: dict[str, object] = {}   # config fingerprint -> its PlanReport: each config is compiled once


class DoesNotFit(RuntimeError):
  """A config whose planned per-device memory is over its budget."""


def fit_settings(train_cfg) -> tuple[bool, float, float]:
  """(check_fit, budget bytes (0 = the device's memory), margin) from config.train."""
  return (bool(train_cfg.get("check_fit", False)), float(train_cfg.get("memory_budget_gib", 0.0) or 0.0) * GiB,
          float(train_cfg.get("fit_margin", 0.9)))


def check_fit(config, topology=None, name: str = "config"):
  """Raises DoesNotFit when config.train.check_fit is set and a planned function does not
  fit; returns the PlanReport when checked (None when the check is off)."""
  enabled, budget, margin = fit_settings(config.train)
  if not enabled:
    return None
  from rewardlab.plan.chips import local_topology
  from rewardlab.plan.planner import plan_config
  topo = topology or local_topology(measure=False)
  if budget > 0:
    topo = dataclasses.replace(topo, chip=dataclasses.replace(topo.chip, hbm_bytes=budget))
  key = hashlib.sha1((config.to_json_best_effort(sort_keys=True) + repr(topo)).encode()).hexdigest()
  if key not in _CHECKED:   # the CLI and the pipeline may both ask; compile once
    _CHECKED[key] = plan_config(config, topo, margin, name=name)
  report = _CHECKED[key]
  over = [f for f in report.functions if not f.fits]
  if over:
    where = "train.memory_budget_gib" if budget > 0 else f"{topo.chip.name} memory"
    detail = "; ".join(f"{f.name} needs {f.needs} per device" for f in over)
    raise DoesNotFit(f"{detail}: over {margin:.0%} of {report.functions[0].hbm / GiB:.3g} GiB ({where}). "
                     "Try `rewardlab plan --suggest` with this config for a setting that fits.")
  return report
