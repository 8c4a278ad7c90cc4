"""Compiling a Job and reading what it costs per chip: memory (XLA's memory analysis), FLOPs
and bytes (loop-aware, `hlo.loop_aware_cost`), collectives, a roofline step-time bound and
the MFU ceiling it implies; and printing a plan as a table or JSON."""
from __future__ import annotations

import dataclasses
import json
import re
import time

from rewardlab.plan import hlo
from rewardlab.plan.chips import GiB, MAXTEXT_MFU, Chip
from rewardlab.plan.functions import per_chip_bytes

OOM_MARKERS = ("RESOURCE_EXHAUSTED", "Ran out of memory", "out of memory")


@dataclasses.dataclass
class FunctionReport:
  """One compiled function, per chip. Bytes: arguments, outputs, aliased (donated inputs
  reused as outputs), temporaries, generated code, other buffers alive meanwhile
  (`resident`) and what the compiled program does not show (`extra`: an emulated gradient
  accumulator). FLOPs / bytes accessed per unit (one update, however many micro-steps)."""
  name: str
  what: str
  argument: float = 0.0
  output: float = 0.0
  alias: float = 0.0
  temp: float = 0.0
  code: float = 0.0
  resident: float = 0.0
  extra: float = 0.0
  flops: float = 0.0
  bytes_accessed: float = 0.0
  xla_flops: float = 0.0
  model_flops: float = 0.0
  compute_s: float = 0.0
  memory_s: float = 0.0
  collectives: dict = dataclasses.field(default_factory=dict)
  loops: int = 0
  unknown_loops: int = 0
  compile_s: float = 0.0
  tokens: int = 0
  repeat: int = 1
  hbm: float = 0.0
  margin: float = 0.9
  error: str = ""
  notes: tuple = ()

  @property
  def total(self) -> float:
    """Peak bytes on one device while this function runs."""
    return self.argument + self.output - self.alias + self.temp + self.code + self.resident + self.extra

  @property
  def fits(self) -> bool:
    return not self.error and self.total <= self.margin * self.hbm

  @property
  def bound_s(self) -> float:
    """Roofline lower bound of one unit: the slower of compute at peak FLOP/s and traffic
    at peak HBM bandwidth (no overlap needed, no communication counted)."""
    return max(self.compute_s, self.memory_s)

  def mfu_bound(self, chip: Chip) -> float:
    """The model-FLOPs utilisation this bound allows: model FLOPs / (bound x peak)."""
    return self.model_flops / (self.bound_s * chip.peak_flops) if self.bound_s > 0 else 0.0

  @property
  def needs(self) -> str:
    """The per-chip total, marked as a lower bound when the compiler gave up (out of memory)."""
    return (">= " if self.error else "") + f"{self.total / GiB:.3g} GiB"

  def as_dict(self, chip: Chip) -> dict:
    d = dataclasses.asdict(self)
    d.update(total=self.total, fits=self.fits, bound_s=self.bound_s, mfu_bound=self.mfu_bound(chip),
             tokens_per_s_bound=(self.tokens / self.bound_s if self.tokens and self.bound_s else 0.0))
    return d


def measure(job, chip: Chip, n_devices: int, margin: float = 0.9) -> FunctionReport:
  """Lowers and compiles `job.fn` on its abstract arguments and reads the figures. A compile
  that runs out of device memory (XLA's TPU compiler refuses programs that cannot fit)
  gives a report with `error` set and fits False."""
  rep = FunctionReport(job.name, job.what, resident=job.resident, extra=job.extra_bytes, tokens=job.tokens,
                       repeat=job.repeat, hbm=chip.hbm_bytes, margin=margin, notes=tuple(job.notes),
                       model_flops=job.model_flops / n_devices)
  t = time.perf_counter()
  try:
    compiled = job.fn.lower(*job.args).compile()
  except Exception as e:  # noqa: BLE001  (XLA raises runtime errors; only OOM is an answer)
    if not any(m in str(e) for m in OOM_MARKERS):
      raise
    rep.compile_s = time.perf_counter() - t
    rep.error = "does not fit: " + _oom_summary(str(e))
    # what is known without a program: the arguments exactly, and the compiler's own count
    rep.argument = per_chip_bytes(job.args)
    rep.temp, used = _oom_sizes(str(e))
    if used:
      rep.temp = max(used - rep.argument, 0.0)
    return rep
  rep.compile_s = time.perf_counter() - t
  mem = compiled.memory_analysis()
  if mem is not None:
    rep.argument, rep.output = float(mem.argument_size_in_bytes), float(mem.output_size_in_bytes)
    rep.alias, rep.temp = float(mem.alias_size_in_bytes), float(mem.temp_size_in_bytes)
    rep.code = float(mem.generated_code_size_in_bytes)
  text = compiled.as_text()
  cost = hlo.loop_aware_cost(text)
  rep.flops, rep.bytes_accessed, rep.xla_flops = cost.flops * job.repeat, cost.bytes_accessed * job.repeat, \
      cost.xla_flops * job.repeat
  rep.loops, rep.unknown_loops = len(cost.loops), sum(not lp["known"] for lp in cost.loops)
  rep.collectives = {k: {"count": v["count"] * job.repeat, "bytes": v["bytes"] * job.repeat}
                     for k, v in hlo.collectives(text).items()}
  rep.model_flops *= job.repeat
  rep.compute_s = rep.flops / chip.peak_flops if chip.peak_flops else 0.0
  rep.memory_s = rep.bytes_accessed / chip.hbm_bw if chip.hbm_bw else 0.0
  if rep.unknown_loops:
    rep.notes += (f"{rep.unknown_loops} loop(s) with an unknown trip count counted once",)
  return rep


_SIZE = r"([\d.]+)([KMGT])"
_UNIT = {"K": 2 ** 10, "M": 2 ** 20, "G": 2 ** 30, "T": 2 ** 40}


def _oom_sizes(message: str) -> tuple[float, float]:
  """(temporaries, total used) in bytes from XLA's out-of-memory message (0 when absent):
  '... memory required for HLO temporaries (24.87G) exceeds ...' / 'Used 18.5G of 15.75G hbm'."""
  temp = re.search(r"temporaries \(" + _SIZE + r"\)", message)
  used = re.search(r"Used " + _SIZE + r" of " + _SIZE + r" hbm", message)
  size = lambda m, i=1: float(m.group(i)) * _UNIT[m.group(i + 1)] if m else 0.0  # noqa: E731
  return size(temp), size(used)


def _oom_summary(message: str) -> str:
  """The compiler's 'used X of Y' line when it has one."""
  for line in message.splitlines():
    if re.search(r"(Used|used) .* of .* hbm|Ran out of memory", line):
      return line.strip()[:300]
  return message.strip().splitlines()[0][:300]


@dataclasses.dataclass
class PlanReport:
  config: str
  topology: str
  chip: Chip
  n_devices: int
  mesh: dict
  model: str
  functions: list
  margin: float
  notes: list = dataclasses.field(default_factory=list)

  @property
  def fits(self) -> bool:
    return all(f.fits for f in self.functions)

  def as_dict(self) -> dict:
    return {"config": self.config, "topology": self.topology, "chip": dataclasses.asdict(self.chip),
            "n_devices": self.n_devices, "mesh": self.mesh, "model": self.model, "margin": self.margin,
            "fits": self.fits, "functions": [f.as_dict(self.chip) for f in self.functions], "notes": self.notes,
            "maxtext_measured_mfu": MAXTEXT_MFU}

  def to_json(self) -> str:
    return json.dumps(self.as_dict(), indent=2)

  @classmethod
  def from_dict(cls, d: dict) -> "PlanReport":
    """The report `as_dict` wrote (`rewardlab plan --json`), e.g. to print it as a table."""
    names = {f.name for f in dataclasses.fields(FunctionReport)}
    functions = [FunctionReport(**{k: (tuple(v) if k == "notes" else v) for k, v in f.items() if k in names})
                 for f in d["functions"]]
    return cls(d["config"], d["topology"], Chip(**d["chip"]), d["n_devices"], d["mesh"], d["model"], functions,
               d["margin"], list(d.get("notes", [])))


def _gib(x: float) -> str:
  return f"{x / GiB:.3g}"


def _size(x: float) -> str:
  return f"{x / GiB:.3g} GiB" if x >= 0.1 * GiB else f"{x / 2 ** 20:.3g} MiB"


def _collective_summary(coll: dict) -> str:
  if not coll:
    return "none"
  return ", ".join(f"{k} {v['count']:.0f}x {_size(v['bytes'])}" for k, v in sorted(coll.items()))


def format_report(r: PlanReport) -> str:
  """The plan as a text table (per chip), collectives per function and notes."""
  c = r.chip
  mesh = " ".join(f"{k}={v}" for k, v in r.mesh.items())
  lines = [f"plan: {r.config} on {r.topology}: {r.n_devices} x {c.name}, mesh {mesh}; model {r.model}",
           f"chip: {c.hbm_bytes / GiB:.1f} GiB HBM, {c.peak_flops / 1e12:.0f} TFLOP/s bf16, "
           f"{c.hbm_bw / 1e9:.0f} GB/s ({c.source})",
           f"fits = total <= {r.margin:.0%} of HBM; bound = max(FLOPs / peak, bytes accessed / bandwidth); "
           "MFU<= = model FLOPs / (bound x peak)", ""]
  head = (f"{'function':<20} {'args':>7} {'temp':>7} {'out':>7} {'other':>7} {'total':>7} {'HBM':>5} {'fits':>4} "
          f"{'TFLOP':>8} {'GB acc':>8} {'bound ms':>9} {'MFU<=':>6} {'compile s':>9}")
  lines += [head + "   (GiB per chip; FLOPs/bytes per chip per call)", "-" * len(head)]
  for f in r.functions:
    if f.error:
      lines.append(f"{f.name:<20} {_gib(f.argument):>7} {_gib(f.temp):>7}       ? {'':>7} {'>=' + _gib(f.total):>7} "
                   f"{f.total / c.hbm_bytes:>5.0%}   NO   (the compiler ran out of memory: see below)")
      continue
    other = f.resident + f.extra + f.code - f.alias
    lines.append(f"{f.name:<20} {_gib(f.argument):>7} {_gib(f.temp):>7} {_gib(f.output):>7} {_gib(other):>7} "
                 f"{_gib(f.total):>7} {f.total / c.hbm_bytes:>5.0%} {'yes' if f.fits else 'NO':>4} "
                 f"{f.flops / 1e12:>8.3g} {f.bytes_accessed / 1e9:>8.4g} {f.bound_s * 1e3:>9.4g} "
                 f"{f.mfu_bound(c):>6.0%} {f.compile_s:>9.1f}")
  lines.append("")
  for f in r.functions:
    extra = (f"; decode bound {f.tokens / f.bound_s:,.0f} tokens/s" if f.tokens and f.bound_s else "")
    lines.append(f"{f.name}: {f.what}{extra}")
    if f.error:
      lines.append(f"  {f.error}")
    else:
      lines.append(f"  collectives: {_collective_summary(f.collectives)}")
    for note in f.notes:
      lines.append(f"  note: {note}")
  lines.append("")
  lines.append("measured MFU of tuned pre-training for comparison (MaxText): "
               + ", ".join(f"{k} {v:.1%}" for k, v in MAXTEXT_MFU.items()))
  for note in r.notes:
    lines.append(f"note: {note}")
  lines.append(f"verdict: {'fits' if r.fits else 'DOES NOT FIT'} on {r.topology} at {r.margin:.0%} of HBM")
  return "\n".join(lines)
