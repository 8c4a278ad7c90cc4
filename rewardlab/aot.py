"""Know before you run: lower and compile rewardlab's jitted steps for a target topology on
abstract shapes. With libtpu installed (`pip install -e '.[tpu]'`), XLA compiles for TPU on
a CPU-only machine; nothing runs, and the compiled step reports per-chip memory
(`memory_analysis()`), FLOPs (`cost_analysis()`) and its collectives (`as_text()`).

    devices = tpu_devices("v5p:2x2x2")
    mesh = make_mesh({"fsdp": 8}, devices)
    graphdef, state = abstract_train_state(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), optimizer, mesh)
    with jax.set_mesh(mesh):          # the model's activation sharding constraints apply
      compiled = step.lower(state, batch).compile()
    count_collectives(compiled.as_text())
"""
from __future__ import annotations

import importlib.util
import os
import re

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rewardlab.sharding import LOGICAL_RULES, named, param_specs
from rewardlab.train.state import TrainState

COLLECTIVES = ("all-reduce", "reduce-scatter", "all-gather", "all-to-all", "collective-permute")


def libtpu_available() -> bool:
  return importlib.util.find_spec("libtpu") is not None


def tpu_devices(topology: str):
  """Abstract devices of a TPU topology ("v5p:2x2x2", "v4:2x2x1", "v5e:4x4", ...). Other
  processes may hold libtpu's lock; compiling needs no exclusive TPU, so this allows it."""
  if not libtpu_available():
    raise RuntimeError("tpu_devices: libtpu is not installed (pip install -e '.[tpu]')")
  os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
  from jax.experimental import topologies
  return topologies.get_topology_desc(platform="tpu", topology_name=topology).devices


def count_collectives(hlo: str) -> dict:
  """Collective ops by kind in an HLO text: `kind(` and `kind-start(` instructions (an async
  pair's -done is not counted again)."""
  return {k: len(re.findall(rf"\b{k}(?:-start)?\(", hlo)) for k in COLLECTIVES}


def abstract_train_state(make_model, optimizer, mesh, rules=LOGICAL_RULES):
  """(graphdef, TrainState of ShapeDtypeStructs) with the shardings `init_params` and
  `create_train_state` give: parameters by their logical axes, optimizer state as XLA
  propagates `optimizer.init` (compiled for the same devices), scalars replicated."""
  graphdef, abstract = nnx.split(nnx.eval_shape(make_model), nnx.Param)
  shardings = named(mesh, param_specs(abstract, mesh, rules))
  params = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                        nnx.to_pure_dict(abstract), shardings)
  rep = NamedSharding(mesh, P())
  init = jax.jit(optimizer.init).lower(params).compile()
  opt_state = jax.tree.map(  # constants (step counts) come out unplaced: replicate them
      lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s if isinstance(s, NamedSharding) else rep),
      jax.eval_shape(optimizer.init, params), init.output_shardings)
  state = TrainState(step=jax.ShapeDtypeStruct((), jnp.int32, sharding=rep), params=params, opt_state=opt_state,
                     rng=jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=rep))
  return graphdef, state
