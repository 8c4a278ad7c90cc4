"""Device mesh from config and the logical-axis -> mesh-axis table.

Parameters carry logical axis names (`rewardlab.models`); `LOGICAL_RULES` maps each to
a mesh axis (or a tuple of them, or None = replicated). Data/FSDP/tensor parallelism is
a change of mesh shape and of this table, never of model code. A dimension that a mesh
axis does not divide is replicated rather than padded (e.g. 2 kv heads on tensor=4).

Activations are constrained by the same table (`constrain`): a [B, T, D] residual stream
is ("batch", "length", "embed"), so under FSDP its batch takes the (data, fsdp) axes and
"embed" (whose fsdp axis is then taken) stays whole: weights are all-gathered per layer
and weight gradients reduce-scattered, rather than activations resharded by all-to-alls.
Constraints apply under a mesh context (`tracing_mesh(mesh)`, i.e. `jax.set_mesh`, around
tracing: every pipeline's `run` and `rewardlab plan` trace under their mesh) and are no-ops
without one (a single device, or a caller that does not set it).
"""
from __future__ import annotations

import contextlib
import contextvars
import math
from typing import Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")
BATCH_AXES = ("data", "fsdp")

LOGICAL_RULES: dict[str, object] = {
    "batch": BATCH_AXES,
    "length": None,      # sequence positions (activations); None: no sequence parallelism
    "layers": None,      # the leading axis of a scanned layer stack: each device holds every layer
    "vocab": "tensor",
    "embed": "fsdp",
    "mlp": "tensor",
    "heads": "tensor",
    "kv_heads": "tensor",
    "head_dim": None,
    "norm": None,
}


def mesh_shape(spec: Mapping[str, int], n_devices: int) -> tuple[int, ...]:
  """Resolves {'data': -1, 'fsdp': 2, 'tensor': 1} against the device count."""
  unknown = sorted(set(spec) - set(MESH_AXES))
  if unknown:
    raise ValueError(f"mesh: unknown axis {unknown}; allowed: {MESH_AXES}")
  sizes = [int(spec.get(a, 1)) for a in MESH_AXES]
  if sum(s == -1 for s in sizes) > 1:
    raise ValueError(f"mesh: at most one axis may be -1, got {dict(zip(MESH_AXES, sizes))}")
  if any(s == 0 or s < -1 for s in sizes):
    raise ValueError(f"mesh: axis sizes must be >= 1 or -1, got {dict(zip(MESH_AXES, sizes))}")
  fixed = math.prod(s for s in sizes if s != -1)
  if -1 in sizes:
    if n_devices % fixed:
      raise ValueError(f"mesh: fixed axes {dict(zip(MESH_AXES, sizes))} (product {fixed}) do not "
                       f"divide the {n_devices} available devices")
    sizes[sizes.index(-1)] = n_devices // fixed
  if math.prod(sizes) != n_devices:
    raise ValueError(f"mesh: shape {dict(zip(MESH_AXES, sizes))} uses {math.prod(sizes)} devices "
                     f"but {n_devices} are available; set one axis to -1 to use the rest")
  return tuple(sizes)


def make_mesh(spec: Mapping[str, int], devices: Sequence[jax.Device] | None = None) -> Mesh:
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(spec, len(devices))
  return Mesh(np.array(devices).reshape(shape), MESH_AXES, axis_types=(AxisType.Auto,) * 3)


def logical_to_spec(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Mapping[str, object] = LOGICAL_RULES) -> P:
  """PartitionSpec for one array; mesh axes that do not divide the dim are dropped."""
  out, used = [], set()
  for name, dim in zip(axes, shape):
    target = rules.get(name) if name is not None else None
    targets = () if target is None else (target,) if isinstance(target, str) else tuple(target)
    kept = [t for t in targets if t not in used and mesh.shape[t] > 1]
    size = math.prod(mesh.shape[t] for t in kept)
    if not kept or dim % size:
      out.append(None)
      continue
    used.update(kept)
    out.append(kept[0] if len(kept) == 1 else tuple(kept))
  return P(*out)


def param_specs(abstract_state: nnx.State, mesh: Mesh,
                rules: Mapping[str, object] = LOGICAL_RULES) -> dict:
  """Pure-dict tree of PartitionSpecs from the `axes` metadata of each parameter."""
  def spec(var):
    axes = var.get_metadata().get("axes")
    if axes is None:
      return P()
    return logical_to_spec(axes, var.get_value().shape, mesh, rules)
  return nnx.to_pure_dict(jax.tree.map(lambda v: v.replace(spec(v)), abstract_state,
                                       is_leaf=lambda x: isinstance(x, nnx.Variable)))


_ACTIVATION_RULES = contextvars.ContextVar("activation_rules", default=LOGICAL_RULES)


@contextlib.contextmanager
def use_rules(rules: Mapping[str, object]):
  """Within the block, `constrain` maps activations by `rules` (pass the table the
  parameters were placed with when it is not `LOGICAL_RULES`)."""
  token = _ACTIVATION_RULES.set(rules)
  try:
    yield
  finally:
    _ACTIVATION_RULES.reset(token)


def tracing_mesh(mesh: Mesh):
  """Context in which functions traced (jitted, lowered) see `mesh`, so the model's activation
  constraints (`constrain`) apply: `jax.set_mesh(mesh)`, or nothing for a one-device mesh.
  Without it XLA propagates shardings from the FSDP-sharded weights into the activations:
  measured on a 2-layer Qwen3-0.6B SFT step on v5p:2x2x2 with fsdp=8, 8.5 GiB of collectives
  per chip per step (all-reduces of [batch, length, vocab-chunk] logits and [batch, length,
  mlp] activations) against 1.5 GiB in it (per-layer weight all-gathers and the gradients'
  reduce-scatters, which the TPU compiler runs as rings of collective-permutes)."""
  return jax.set_mesh(mesh) if mesh.size > 1 else contextlib.nullcontext()


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """`with_sharding_constraint` of x by logical axis names (one per dim) under the mesh in
  context (`jax.set_mesh`); x unchanged when there is none or it has one device."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or math.prod(mesh.shape.values()) == 1:
    return x
  if len(axes) != x.ndim:
    raise ValueError(f"constrain: {len(axes)} axis names {tuple(axes)} for an array of shape {x.shape}")
  spec = logical_to_spec(axes, x.shape, mesh, _ACTIVATION_RULES.get())
  return jax.lax.with_sharding_constraint(x, NamedSharding(mesh, spec))


def named(mesh: Mesh, specs):
  return jax.tree.map(lambda s: NamedSharding(mesh, s), specs,
                      is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh) -> NamedSharding:
  """Leading (batch) dim over the data axes; the rest replicated."""
  return NamedSharding(mesh, P(BATCH_AXES))


def replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, P())


def shard_batch(batch, mesh: Mesh):
  """Places a host batch (pytree of [B, ...] arrays) with B split over the data axes. Several
  processes: each passes the same global batch and places only its rows (`process_rows`)."""
  n = math.prod(mesh.shape[a] for a in BATCH_AXES)
  for leaf in jax.tree.leaves(batch):
    if leaf.shape[0] % n:
      raise ValueError(f"batch size {leaf.shape[0]} is not divisible by data x fsdp = {n}")
  sharding = batch_sharding(mesh)
  if jax.process_count() == 1:
    return jax.device_put(batch, sharding)
  return jax.tree.map(lambda x: from_process_rows(np.asarray(x)[process_rows(x.shape, sharding)], sharding,
                                                  x.shape), batch)


def process_rows(shape: Sequence[int], sharding: NamedSharding) -> slice:
  """The rows [start, stop) of a [B, ...] global array of `shape` that this process's devices
  hold under `sharding` (batch split over leading-dim mesh axes): the part of a global batch
  a process builds or reads. All rows with one process."""
  blocks = {(index[0] if index else slice(None)).indices(shape[0])[:2]
            for index in sharding.addressable_devices_indices_map(tuple(shape)).values()}
  lo, hi = min(a for a, _ in blocks), max(b for _, b in blocks)
  if sum(b - a for a, b in blocks) != hi - lo:
    raise ValueError(f"process {jax.process_index()} holds rows {sorted(blocks)} of a batch of {shape[0]}, "
                     "not one contiguous block: build the mesh with each process's devices adjacent "
                     "along the batch axes (jax.devices() order does)")
  return slice(lo, hi)


def process_examples(n: int, mesh: Mesh | None, rows_per_example: int = 1) -> range:
  """The examples of a batch of n (each `rows_per_example` consecutive rows, e.g. a pair's
  chosen and rejected rows) that this process holds rows of under the batch sharding: the part
  of a batch it has to read. All n with one process or no mesh."""
  if mesh is None or jax.process_count() == 1:
    return range(n)
  rows = process_rows((n * rows_per_example,), batch_sharding(mesh))
  return range(rows.start // rows_per_example, -(-rows.stop // rows_per_example))


def from_process_rows(local, sharding: NamedSharding, global_shape: Sequence[int]) -> jax.Array:
  """The global [B, ...] jax.Array whose rows `process_rows(global_shape, sharding)` are this
  process's `local` array (`jax.make_array_from_process_local_data`): every process passes
  only its own rows."""
  return jax.make_array_from_process_local_data(sharding, np.asarray(local), tuple(global_shape))
