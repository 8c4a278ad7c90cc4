"""Accelerators a plan is made for: their published peaks, and the devices of a topology.

`resolve_topology("v5p:2x2x2")` returns compile-only TPU devices from libtpu (nothing runs;
a CPU machine compiles for them), `resolve_topology("local")` this machine's own devices.
Each comes with the `Chip` whose peak FLOP/s, HBM size and HBM bandwidth turn a compiled
program's FLOPs and bytes into a step-time lower bound.
"""
from __future__ import annotations

import dataclasses
import glob
import importlib.util
import os
import re
import time

import jax
import jax.numpy as jnp

GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Chip:
  """One device's published (or measured) limits. hbm_bytes: memory one device may use;
  peak_flops: dense bf16 FLOP/s (the MFU denominator); hbm_bw: bytes/s; source: where the
  numbers come from."""
  name: str
  hbm_bytes: float
  peak_flops: float
  hbm_bw: float
  source: str


# Per chip, as Google Cloud's TPU pages publish them (GB read as 10^9 bytes, the smaller
# reading, so "fits" errs on the safe side); every TPU here runs one JAX device per chip
# (v4 and v5p as megacore).
TPU_CHIPS: dict[str, Chip] = {
    "v4": Chip("TPU v4", 32 * GiB, 275e12, 1200e9,
               "cloud.google.com/tpu/docs/v4: 275 TFLOP/s bf16, 32 GiB HBM2, 1200 GB/s"),
    "v5e": Chip("TPU v5e", 16e9, 197e12, 819e9,
                "cloud.google.com/tpu/docs/v5e: 197 TFLOP/s bf16, 16 GB HBM2, 819 GB/s"),
    "v5p": Chip("TPU v5p", 95e9, 459e12, 2765e9,
                "cloud.google.com/tpu/docs/v5p: 459 TFLOP/s bf16, 95 GB HBM2e, 2765 GB/s"),
    "v6e": Chip("TPU v6e", 32e9, 918e12, 1638e9,
                "cloud.google.com/tpu/docs/v6e: 918 TFLOP/s bf16, 32 GB HBM, 1638 GB/s"),
}

# GPUs by a substring of jax's device_kind: NVIDIA's datasheets (SXM, dense bf16, no sparsity).
GPU_CHIPS: dict[str, Chip] = {
    "H100": Chip("NVIDIA H100 SXM", 80e9, 989e12, 3.35e12,
                 "NVIDIA H100 datasheet: 989 TFLOP/s dense bf16 (SXM), 80 GB HBM3, 3.35 TB/s"),
    "H200": Chip("NVIDIA H200 SXM", 141e9, 989e12, 4.8e12,
                 "NVIDIA H200 datasheet: 989 TFLOP/s dense bf16 (SXM), 141 GB HBM3e, 4.8 TB/s"),
    "A100": Chip("NVIDIA A100 SXM", 80e9, 312e12, 2.039e12,
                 "NVIDIA A100 datasheet: 312 TFLOP/s dense bf16, 80 GB HBM2e, 2039 GB/s"),
}

# Measured MFU of MaxText's own training runs, printed beside our upper bounds as a
# reference for what a tuned stack reaches (MaxText README, "Runtime Performance Results").
MAXTEXT_MFU = {"Llama-3.1-8B on v6e-256": 0.455, "Llama-2-70B on v5p-512": 0.654}

TOPOLOGY_RE = re.compile(r"^(v4|v5e|v5p|v6e):(\d+(?:x\d+)*)$")
INSTALL_HINT = ('planning for a TPU topology needs libtpu, which compiles for TPUs on any machine: '
                'pip install -e ".[tpu]"  (or: pip install "jax[tpu]")')


class TopologyError(ValueError):
  """A topology name that cannot be planned for (unknown, or libtpu missing)."""


@dataclasses.dataclass(frozen=True)
class Topology:
  name: str
  devices: tuple
  chip: Chip

  @property
  def n_devices(self) -> int:
    return len(self.devices)


def prepare_compile_only_libtpu():
  """On a machine without TPUs, lets libtpu load for compiling only: beside other JAX
  processes that hold its lock file (any JAX process on a machine with libtpu installed
  takes it), without asking for a metadata server or TPU workers that do not exist. Takes
  effect when called before libtpu first loads in this process; a TPU host is left alone."""
  if glob.glob("/dev/accel*") or glob.glob("/dev/vfio/[0-9]*"):
    return
  for key, value in (("ALLOW_MULTIPLE_LIBTPU_LOAD", "1"), ("TPU_SKIP_MDS_QUERY", "1"),
                     ("TPU_WORKER_HOSTNAMES", "localhost")):
    os.environ.setdefault(key, value)


def tpu_topology(name: str) -> Topology:
  """Compile-only devices of a TPU slice, e.g. "v5p:2x2x2" (8 chips), "v5e:4x4" (16)."""
  m = TOPOLOGY_RE.match(name)
  if not m:
    raise TopologyError(f"topology {name!r}: expected <v4|v5e|v5p|v6e>:<AxB[xC]> (e.g. v5p:2x2x2, "
                        "v5e:4x4) or 'local'")
  if importlib.util.find_spec("libtpu") is None:
    raise TopologyError(INSTALL_HINT)
  prepare_compile_only_libtpu()
  from jax.experimental import topologies
  gen = m.group(1)
  kwargs = {"chip_config_name": "megacore"} if gen == "v4" else {}   # one device per v4 chip
  try:
    desc = topologies.get_topology_desc(platform="tpu", topology_name=name, **kwargs)
  except Exception as e:  # noqa: BLE001  (libtpu raises runtime errors for shapes it does not know)
    raise TopologyError(f"topology {name!r}: libtpu refused it: {str(e).splitlines()[0]}") from None
  return Topology(name, tuple(desc.devices), TPU_CHIPS[gen])


def local_topology(measure: bool = True) -> Topology:
  """This machine's devices and their limits: a GPU from GPU_CHIPS (memory from the runtime
  when it reports it), a CPU with its RAM and a measured matmul peak / copy bandwidth
  (`measure=False`: no timing; the peaks are then unknown, 0)."""
  devices = tuple(jax.devices())
  d = devices[0]
  kind = getattr(d, "device_kind", d.platform)
  limit = (d.memory_stats() or {}).get("bytes_limit") if hasattr(d, "memory_stats") else None
  if d.platform == "gpu":
    for key, chip in GPU_CHIPS.items():
      if key in kind:
        return Topology("local", devices, dataclasses.replace(chip, hbm_bytes=limit or chip.hbm_bytes))
  if d.platform == "tpu":
    for gen, chip in TPU_CHIPS.items():
      if gen.replace("v5e", "v5 lite").replace("v6e", "v6 lite") in kind.lower():
        return Topology("local", devices, dataclasses.replace(chip, hbm_bytes=limit or chip.hbm_bytes))
  ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / len(devices)
  flops, bw = measure_peaks(d) if measure else (0.0, 0.0)
  return Topology("local", devices, Chip(
      f"{kind} (measured)", limit or ram, flops, bw,
      f"measured here: f32 1024^3 matmul {flops / 1e9:.0f} GFLOP/s, 256 MiB copy {bw / 1e9:.1f} GB/s; "
      f"memory: {'runtime limit' if limit else 'physical RAM / devices'}"))


def measure_peaks(device, n: int = 1024, copy_bytes: int = 256 * 2 ** 20) -> tuple[float, float]:
  """(matmul FLOP/s, copy bytes/s) of `device`: best of 5 timed calls each."""
  def best(fn, *args):
    jax.block_until_ready(fn(*args))
    times = []
    for _ in range(5):
      t = time.perf_counter()
      jax.block_until_ready(fn(*args))
      times.append(time.perf_counter() - t)
    return min(times)
  a = jax.device_put(jnp.ones((n, n), jnp.float32), device)
  x = jax.device_put(jnp.ones((copy_bytes // 4,), jnp.float32), device)
  mm = best(jax.jit(lambda a: a @ a), a)
  cp = best(jax.jit(lambda x: x * 2.0), x)
  return 2 * n ** 3 / mm, 2 * copy_bytes / cp   # a copy reads and writes every byte


def resolve_topology(name: str) -> Topology:
  return local_topology() if name == "local" else tpu_topology(name)
