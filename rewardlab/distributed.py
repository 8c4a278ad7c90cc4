"""The multi-process (multi-host) runtime: one rewardlab process per host, plain JAX
multi-controller mode.

Every process runs the same program; `initialize` joins them into one JAX runtime
(`jax.distributed.initialize`), after which `jax.devices()` lists every process's devices
and a mesh built from it spans all hosts. Host data becomes global `jax.Array`s with
`rewardlab.sharding.shard_batch` (each process places only its rows); global arrays come
back to the host with `to_host` (gathered across processes when they span several). Files
are written by process 0 only (`is_main`), with `barrier` where the others must wait.

With one process nothing here does anything: `to_host` is `jax.device_get` and `barrier`
returns at once, so a single-host run is exactly what it was.
"""
from __future__ import annotations

import os
from typing import Any

import jax
import numpy as np

_STATE = {"initialized": False, "heartbeat_timeout_s": 100}


class DistributedError(RuntimeError):
  """Bad multi-process launch settings (names the flag or environment variable)."""


def cluster_env() -> str | None:
  """The cluster launcher the environment shows, when it runs several processes: "slurm"
  (srun with more than one task) or "tpu" (a Cloud TPU pod slice's worker list); None
  otherwise (one process, or a launcher JAX cannot read by itself)."""
  env = os.environ
  if "SLURM_JOB_ID" in env and int(env.get("SLURM_STEP_NUM_TASKS", env.get("SLURM_NTASKS", "1"))) > 1:
    return "slurm"
  workers = env.get("TPU_PROCESS_ADDRESSES") or env.get("TPU_WORKER_HOSTNAMES") or ""
  if len([w for w in workers.split(",") if w.strip()]) > 1:
    return "tpu"
  if env.get("REWARDLAB_DISTRIBUTED", "").lower() in ("1", "auto", "true"):
    return "auto"   # e.g. a TPU VM pod slice whose workers JAX finds in the GCE metadata
  return None


def initialize(coordinator_address: str | None = None, num_processes: int | None = None,
               process_id: int | None = None, heartbeat_timeout_seconds: int | None = None) -> bool:
  """Joins this process to the multi-process JAX runtime when the launch asks for one.

  Explicit: all three of coordinator_address ("HOST:PORT" of process 0), num_processes and
  process_id (named after `jax.distributed.initialize`'s arguments). Otherwise JAX's own
  detection when `cluster_env()` sees SLURM or a TPU pod slice (or REWARDLAB_DISTRIBUTED=1).
  Otherwise (one process) nothing at all. On CPU, cross-process collectives use gloo.
  heartbeat_timeout_seconds: how long the coordination service waits for a silent process
  before stopping every process with an error naming it (JAX's default when None).
  Returns whether the runtime is multi-process. Must run before anything touches a device.
  """
  explicit = {"coordinator_address": coordinator_address, "num_processes": num_processes,
              "process_id": process_id}
  given = {k: v for k, v in explicit.items() if v is not None}
  if _STATE["initialized"]:
    return jax.process_count() > 1
  if given and len(given) != 3:
    missing = sorted(set(explicit) - set(given))
    raise DistributedError(f"--{' --'.join(sorted(given))} given without --{' --'.join(missing)}: "
                           "a multi-process launch needs all of --coordinator_address, --num_processes "
                           "and --process_id (or none, to let JAX read SLURM / TPU pod settings)")
  if given:
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise DistributedError(f"--process_id={process_id} is not in [0, --num_processes={num_processes})")
    if ":" not in coordinator_address:
      raise DistributedError(f"--coordinator_address={coordinator_address!r}: expected HOST:PORT")
    if num_processes == 1:
      return False
  elif cluster_env() is None:
    return False
  kwargs = dict(given)
  if heartbeat_timeout_seconds is not None:
    kwargs["heartbeat_timeout_seconds"] = _STATE["heartbeat_timeout_s"] = int(heartbeat_timeout_seconds)
  if _cpu_only():
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)
  _STATE["initialized"] = True
  return jax.process_count() > 1


def _cpu_only() -> bool:
  """Whether JAX will run on CPU (decided without creating a backend: initialize must come
  before that). JAX_PLATFORMS names the platforms; unset, CPU-only when no accelerator
  plugin is installed."""
  platforms = os.environ.get("JAX_PLATFORMS", jax.config.jax_platforms or "")
  if platforms:
    return platforms.split(",")[0].strip() == "cpu"
  import importlib.util
  return not any(importlib.util.find_spec(m) for m in ("libtpu", "jax_cuda12_plugin", "jax_cuda13_plugin",
                                                       "jax_rocm60_plugin", "jax_rocm7_plugin"))


def process_index() -> int:
  return jax.process_index()


def process_count() -> int:
  return jax.process_count()


def is_main() -> bool:
  """Whether this is process 0, the one that writes the run's files."""
  return jax.process_index() == 0


def multi_process() -> bool:
  return jax.process_count() > 1


def barrier(name: str):
  """Every process waits here until all have arrived (a no-op with one process). `name`
  must be the same string on every process at the same point."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def to_host(tree: Any) -> Any:
  """The tree's arrays as numpy on every process: `jax.device_get` with one process; across
  processes a global array that this process cannot see whole is gathered from all of them
  (a collective: every process must call it at the same point)."""
  if jax.process_count() == 1:
    return jax.device_get(tree)
  from jax.experimental import multihost_utils

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable and not x.is_fully_replicated:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(jax.device_get(x)) if isinstance(x, jax.Array) else x
  return jax.tree.map(one, tree)


def broadcast_from_main(tree: Any) -> Any:
  """Process 0's value of a small host tree (numbers, arrays) on every process."""
  if jax.process_count() == 1:
    return tree
  from jax.experimental import multihost_utils
  return multihost_utils.broadcast_one_to_all(tree)


def allgather_objects(obj: Any) -> list:
  """[process 0's obj, process 1's, ...] on every process: any picklable value, of any size
  per process (a collective: every process calls it at the same point). [obj] with one process."""
  if jax.process_count() == 1:
    return [obj]
  import pickle
  from jax.experimental import multihost_utils
  data = np.frombuffer(pickle.dumps(obj), np.uint8)
  sizes = np.asarray(multihost_utils.process_allgather(np.array([data.size], np.int64))).reshape(-1)
  padded = np.zeros(int(sizes.max()), np.uint8)
  padded[:data.size] = data
  everyone = np.asarray(multihost_utils.process_allgather(padded)).reshape(len(sizes), -1)
  return [pickle.loads(row[:n].tobytes()) for row, n in zip(everyone, sizes)]


def all_processes_ok(ok: bool) -> bool:
  """Whether `ok` holds on every process (each calls it at the same point)."""
  if jax.process_count() == 1:
    return bool(ok)
  from jax.experimental import multihost_utils
  return bool(np.all(multihost_utils.process_allgather(np.array(bool(ok)))))


def unresponsive_processes() -> list[int] | None:
  """After an error on this process: the processes the coordination service counts as dead
  (a killed peer shows up here once its heartbeats have been missing for the heartbeat
  timeout), [] when all are alive, None when that could not be learnt in that time (the
  others are busy, e.g. waiting in a collective for this one). Uses JAX's coordination
  client (`get_live_nodes`), which has no public API yet."""
  import threading
  try:
    from jax._src import distributed as jax_distributed
    client = jax_distributed.global_state.client
  except ImportError:
    return None
  if client is None:
    return None
  everyone = list(range(jax.process_count()))
  found = {}

  def ask():
    try:
      found["live"] = set(client.get_live_nodes(everyone))
    except Exception:   # the service itself is gone (process 0 died): nothing to learn
      pass
  t = threading.Thread(target=ask, daemon=True)
  t.start()
  t.join(_STATE["heartbeat_timeout_s"] + 5)
  return sorted(set(everyone) - found["live"]) if "live" in found else None
