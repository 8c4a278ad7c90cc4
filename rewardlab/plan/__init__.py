"""Know before you run: a config's jitted steps compiled for a target topology (a TPU slice
through libtpu on any machine, or this machine's devices) and read per chip: memory, FLOPs,
bytes, collectives, a roofline step-time bound. `rewardlab plan --config ...` is the entry.

Modules: `chips` (topologies and published peaks), `hlo` (loop-aware cost and collectives
from optimized HLO), `functions` (each pipeline's functions on abstract inputs), `report`
(compile + measure + print), `planner` (`plan_config`), `suggest` (search for a setting
that fits), `fit` (`check_fit`: refuse a run that will not fit). This file imports none of
them, so the training core can import `rewardlab.plan.fit` without importing pipelines.
"""


def at_real_size(config, preset: str, micro_batches: int = 1):
  """The settings the planning configs (configs/plan_*.py) share, applied in place: the
  preset's shapes, f32 parameters and Adam moments with bf16 activations and matmuls, full
  remat (each layer keeps only its input), FSDP over every chip, `micro_batches` per update."""
  config.model.preset = preset
  config.model.update(dtype="bfloat16", param_dtype="float32", remat="full")
  config.mesh.update(data=1, fsdp=-1, tensor=1)
  config.train.micro_batches = micro_batches
  return config
