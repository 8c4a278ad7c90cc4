"""`plan_config`: a config's jitted functions compiled for a topology and measured per chip."""
from __future__ import annotations

import os
from typing import Callable, Iterable

from rewardlab.plan.chips import Topology, resolve_topology
from rewardlab.plan.report import PlanReport, measure
from rewardlab.sharding import MESH_AXES, make_mesh, tracing_mesh


def describe_model(config) -> str:
  from rewardlab.plan.functions import model_config
  cfg = model_config(config)
  name = config.model.get("preset") or os.path.basename(str(config.model.get("hf_path") or "")) or "embedded"
  return (f"{name} ({cfg.n_layers} layers, {cfg.num_params() / 1e9:.2f}B params, params {cfg.param_dtype}, "
          f"compute {cfg.dtype}, remat {cfg.remat})")


def plan_config(config, topology: Topology | str, margin: float = 0.9, only: Iterable[str] | None = None,
                name: str = "", log: Callable[[str], None] | None = None) -> PlanReport:
  """Builds the config's functions on abstract inputs for `topology` (a name such as
  "v5p:2x2x2" or "local", or a Topology), compiles each (or those in `only`) and measures
  it. Raises ConfigError for a config the topology cannot run (mesh, divisibility)."""
  from rewardlab.objectives import OBJECTIVES
  from rewardlab.pipelines import PIPELINES
  from rewardlab.train import validate
  topo = resolve_topology(topology) if isinstance(topology, str) else topology
  validate(config, OBJECTIVES, PIPELINES, n_devices=topo.n_devices)
  mesh = make_mesh(dict(config.mesh), topo.devices)
  with tracing_mesh(mesh):   # as a run traces them: the activation constraints apply
    return _plan_on(config, mesh, topo, margin, only, name, log)


def _plan_on(config, mesh, topo: Topology, margin: float, only, name: str, log) -> PlanReport:
  from rewardlab.plan.functions import plan_jobs
  jobs = plan_jobs(config, mesh)
  wanted = None if only is None else set(only)
  if wanted is not None:
    unknown = sorted(wanted - {j.name for j in jobs})
    if unknown:
      raise ValueError(f"plan: no function(s) {unknown} in this config; it has {[j.name for j in jobs]}")
    jobs = [j for j in jobs if j.name in wanted]
  reports = []
  for job in jobs:
    if log:
      log(f"compiling {job.name} for {topo.name} ...")
    reports.append(measure(job, topo.chip, topo.n_devices, margin))
  return PlanReport(name or "config", topo.name, topo.chip, topo.n_devices,
                    {a: int(s) for a, s in zip(MESH_AXES, mesh.devices.shape)}, describe_model(config), reports,
                    margin)
