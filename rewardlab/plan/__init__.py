"""Know before you run: a config's jitted steps compiled for a target topology (a TPU slice
through libtpu on any machine, or this machine's devices) and read per chip: memory, FLOPs,
bytes, collectives, a roofline step-time bound. `rewardlab plan --config ...` is the entry.

Modules: `chips` (topologies and published peaks), `hlo` (loop-aware cost and collectives
from optimized HLO), `functions` (each pipeline's functions on abstract inputs), `report`
(compile + measure + print), `planner` (`plan_config`), `suggest` (search for a setting
that fits), `fit` (`check_fit`: refuse a run that will not fit). This file imports none of
them, so the training core can import `rewardlab.plan.fit` without importing pipelines.
"""
