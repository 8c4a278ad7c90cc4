"""`plan --suggest`: when a config does not fit, search by compiling (as MaxText's memory
estimator does) over mesh shape, remat and micro-batches for the setting with the
fastest roofline bound that fits, and print it as override flags.

The search walks meshes (the config's, then all-FSDP, then FSDP x tensor 2 / 4 / 8), for
each the remat choices from least to most recomputation, and for each the micro-batch
counts upward; the first count that fits ends that branch (more micro-batches only add
weight re-reads). Only the functions that did not fit are recompiled per candidate, within
a budget of compiles; the winner is re-planned in full to confirm it.
"""
from __future__ import annotations

import copy
import dataclasses
from typing import Callable

from rewardlab.plan.planner import plan_config
from rewardlab.plan.report import PlanReport
from rewardlab.sharding import BATCH_AXES, MESH_AXES, mesh_shape


def remat_choices() -> tuple:
  """The `model.remat` values searched, least recomputation first: none, the policy that
  keeps matmul outputs without a batch dimension (MaxText's common choice), full."""
  return ("none", "dots_with_no_batch_dims_saveable", "full")


def mesh_choices(current: dict, n_devices: int) -> list[dict]:
  out = [current]
  for tensor in (1, 2, 4, 8):
    if n_devices % tensor == 0:
      out.append({"data": 1, "fsdp": n_devices // tensor, "tensor": tensor})
  unique = []
  for m in out:
    if m not in unique:
      unique.append(m)
  return unique


def update_rows(config) -> int:
  """Rows of one update's batch (what micro-batches split)."""
  if config.pipeline == "rl":
    return config.rl.minibatch_size
  pairs = config.pipeline in ("dpo", "online_dpo", "rm")
  return config.data.batch_size * (2 if pairs else 1)


def micro_choices(config, mesh: dict, limit: int = 64) -> list[int]:
  n_batch = mesh["data"] * mesh["fsdp"]
  rows = update_rows(config)
  return [k for k in (1, 2, 4, 8, 16, 32, 64) if k <= limit and rows % (k * n_batch) == 0]


@dataclasses.dataclass
class Candidate:
  overrides: dict          # "section.field" -> value, relative to the config as given
  fits: bool
  bound_s: float           # summed over the functions compiled for it
  peak_gib: float          # the largest per-chip total among them

  def flags(self) -> str:
    return " ".join(f"--config.{k}={v}" for k, v in self.overrides.items())


@dataclasses.dataclass
class Suggestion:
  found: Candidate | None
  report: PlanReport | None     # the full plan of the winner
  tried: list
  compiles: int
  not_searched: list

  def as_dict(self) -> dict:
    return {"flags": self.found.flags() if self.found else None,
            "overrides": self.found.overrides if self.found else None,
            "report": self.report.as_dict() if self.report else None,
            "tried": [dataclasses.asdict(c) for c in self.tried], "compiles": self.compiles,
            "not_searched": self.not_searched}


def with_overrides(config, overrides: dict):
  c = copy.deepcopy(config)
  with c.unlocked():
    for path, value in overrides.items():
      section, field = path.rsplit(".", 1)
      node = c
      for part in section.split("."):
        node = node[part]
      node[field] = value
  return c


def suggest(config, topology, base: PlanReport, margin: float = 0.9, budget: int = 12,
            log: Callable[[str], None] | None = None) -> Suggestion:
  """Searches (see the module docstring) for the fastest-bound setting that fits."""
  from rewardlab.plan.functions import accumulation_supported, model_config
  from rewardlab.train import ConfigError
  failing = [f.name for f in base.functions if not f.fits]
  current_mesh = dict(zip(MESH_AXES, mesh_shape(dict(config.mesh), topology.n_devices)))
  current_remat = model_config(config).remat
  remats = [current_remat] + [r for r in remat_choices() if r != current_remat]
  not_searched = []
  has_micro = "micro_batches" in config.train
  if not has_micro:
    not_searched.append("micro-batches: config.train has no micro_batches field (set train.micro_batches in the "
                        "config to let the search split the update)")
  elif not accumulation_supported():
    not_searched.append("micro-batches searched by emulation: make_update_step does not accumulate gradients yet")
  current_micro = int(config.train.get("micro_batches", 1) or 1) if has_micro else 1
  tried, compiles, best, best_report = [], 0, None, None
  everything = len(failing) == len(base.functions)   # a candidate's plan is then already complete
  for mesh in mesh_choices(current_mesh, topology.n_devices):
    for remat in remats:
      micros = micro_choices(config, mesh) if has_micro else [current_micro]
      for micro in [m for m in micros if m >= (current_micro if mesh == current_mesh else 1)]:
        if compiles >= budget:
          break
        overrides = {}
        if mesh != current_mesh:
          overrides.update({f"mesh.{a}": mesh[a] for a in MESH_AXES})
        if remat != current_remat:
          overrides["model.remat"] = remat
        if has_micro and micro != current_micro:
          overrides["train.micro_batches"] = micro
        if not overrides:
          continue
        candidate = with_overrides(config, overrides)
        if log:
          log(f"suggest: trying {' '.join(f'{k}={v}' for k, v in overrides.items())}")
        try:
          report = plan_config(candidate, topology, margin, only=failing)
        except (ConfigError, ValueError) as e:
          if log:
            log(f"suggest:   skipped ({str(e).splitlines()[0][:120]})")
          continue
        compiles += len(failing)
        found = Candidate(overrides, report.fits, sum(f.bound_s for f in report.functions),
                          max(f.total for f in report.functions) / 2 ** 30)
        tried.append(found)
        if found.fits:
          if best is None or found.bound_s < best.bound_s:
            best, best_report = found, report
          break     # more micro-batches for this mesh and remat only re-read weights more
  full = None
  if best is not None:
    full = best_report if everything else plan_config(with_overrides(config, best.overrides), topology, margin)
  if full is not None and not full.fits:   # another function failed under the new setting
    best = dataclasses.replace(best, fits=False)
  return Suggestion(best if best and best.fits else None, full, tried, compiles, not_searched)


def format_suggestion(s: Suggestion) -> str:
  lines = [f"suggest: {len(s.tried)} settings compiled ({s.compiles} function compiles)"]
  for c in s.tried:
    lines.append(f"  {'fits ' if c.fits else 'over '} peak {c.peak_gib:7.3g} GiB  bound {c.bound_s * 1e3:9.4g} ms  "
                 f"{c.flags()}")
  if s.found:
    lines.append("fastest setting that fits (paste these overrides):")
    lines.append("  " + s.found.flags())
  else:
    lines.append("no setting within the search budget fits; try a larger slice (--topology) or --suggest_budget")
  for note in s.not_searched:
    lines.append(f"not searched: {note}")
  return "\n".join(lines)
