"""Know before you run, one step at a time: lower and compile a jitted step for a target
topology on abstract shapes. With libtpu installed (`pip install -e '.[tpu]'`), XLA compiles
for TPU on a CPU-only machine; nothing runs, and the compiled step reports per-chip memory
(`memory_analysis()`), FLOPs (`cost_analysis()`) and its collectives (`as_text()`).
`rewardlab plan` (rewardlab/plan/) does this for every function of a whole config; these are
its pieces for a hand-built step (benchmarks/compile_depth.py, tests/test_scale.py):

    devices = tpu_devices("v5p:2x2x2")
    mesh = make_mesh({"fsdp": 8}, devices)
    graphdef, state = abstract_train_state(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), optimizer, mesh)
    with jax.set_mesh(mesh):          # the model's activation sharding constraints apply
      compiled = step.lower(state, batch).compile()
    count_collectives(compiled.as_text())
"""
from __future__ import annotations

import importlib.util
import re

from rewardlab.plan.chips import tpu_topology
from rewardlab.plan.functions import abstract_params, abstract_state
from rewardlab.plan.hlo import COLLECTIVES
from rewardlab.sharding import LOGICAL_RULES


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def tpu_devices(topology: str):
  """Compile-only devices of a TPU topology ("v5p:2x2x2", "v5e:4x4", ...)."""
  return tpu_topology(topology).devices


def count_collectives(hlo: str) -> dict:
  """Collective instructions by kind in an HLO text, as written in the program (`kind(` and
  `kind-start(`; an async pair's -done is not counted again). A loop body counts once: this
  measures program size (scanned vs unrolled); `plan.hlo.collectives` counts ops per call."""
  return {k: len(re.findall(rf"\b{k}(?:-start)?\(", hlo)) for k in COLLECTIVES}


def abstract_train_state(make_model, optimizer, mesh, rules=LOGICAL_RULES):
  """(graphdef, TrainState of ShapeDtypeStructs) with the shardings `init_params` and
  `create_train_state` give the real ones."""
  graphdef, params = abstract_params(make_model, mesh, rules)
  return graphdef, abstract_state(params, optimizer, mesh)
