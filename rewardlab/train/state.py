"""TrainState: everything that changes during training, as one sharded pytree."""
from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax
from flax import nnx, struct
from jax.sharding import Mesh, NamedSharding

from rewardlab.sharding import LOGICAL_RULES, named, param_specs, replicated


@struct.dataclass
class TrainState:
  step: jax.Array          # [] int32, number of updates applied
  params: Any              # pure dict of parameter arrays (nnx.to_pure_dict layout)
  opt_state: optax.OptState
  rng: jax.Array           # uint32[2] PRNG key, split once per step
  frozen: Any = None       # non-trainable arrays the loss needs (LoRA base weights, ...)


def init_params(make_model: Callable[[], nnx.Module], mesh: Mesh, rules=LOGICAL_RULES):
  """Builds the model's parameters directly into their shardings (no host copy).

  Returns (graphdef, params pure dict placed on the mesh).
  """
  abstract = nnx.eval_shape(make_model)
  graphdef, abstract_params = nnx.split(abstract, nnx.Param)
  shardings = named(mesh, param_specs(abstract_params, mesh, rules))

  def build():
    return nnx.to_pure_dict(nnx.state(make_model(), nnx.Param))

  return graphdef, jax.jit(build, out_shardings=shardings)()


def create_train_state(params, optimizer: optax.GradientTransformation, mesh: Mesh,
                       seed: int, frozen=None) -> TrainState:
  """Optimizer state inherits each parameter's sharding; scalars are replicated.
  Only `params` are trained; `frozen` rides along untouched."""
  opt_state = optimizer.init(params)
  rep = replicated(mesh)
  opt_state = jax.tree.map(
      lambda x: x if isinstance(getattr(x, "sharding", None), NamedSharding) else jax.device_put(x, rep),
      opt_state)
  return TrainState(step=jax.device_put(jnp.zeros((), jnp.int32), rep), params=params,
                    opt_state=opt_state, rng=jax.device_put(jax.random.PRNGKey(seed), rep),
                    frozen=frozen)


def shardings_of(tree):
  return jax.tree.map(lambda x: x.sharding, tree)


def abstract_of(tree):
  """ShapeDtypeStructs carrying each leaf's sharding (restore targets)."""
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), tree)


def num_params(params) -> int:
  return sum(x.size for x in jax.tree.leaves(params))
