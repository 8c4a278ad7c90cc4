"""What a compiled program costs, read from its optimized HLO.

XLA's cost analysis (`compiled.cost_analysis()`) counts the body of every while loop once,
whatever its trip count, so a program that scans over 38 vocabulary chunks (or 36 layers,
or 8 micro-batches) is reported at a fraction of its FLOPs and bytes. `loop_aware_cost`
corrects that: it runs the same analysis (XLA's HloCostAnalysis, through the CPU client)
on each loop body as its own entry computation and adds (trip count - 1) x that body,
nested loops included. Trip counts come from each loop's condition (`i < N`, from a
constant start). `collectives` counts all-gather / all-reduce / reduce-scatter / all-to-all
/ collective-permute ops and their result bytes per chip, each weighted by how many times
its loop runs.
"""
from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Iterable

import jax

DTYPE_BYTES = {"pred": 1, "s4": 0.5, "u4": 0.5, "s8": 1, "u8": 1, "f8e4m3fn": 1, "f8e5m2": 1, "f8e4m3": 1,
               "f8e4m3fnuz": 1, "f8e5m2fnuz": 1, "s16": 2, "u16": 2, "f16": 2, "bf16": 2, "s32": 4, "u32": 4,
               "f32": 4, "s64": 8, "u64": 8, "f64": 8, "c64": 8, "c128": 16}
COLLECTIVES = ("all-gather", "all-reduce", "reduce-scatter", "all-to-all", "collective-permute",
               "ragged-all-to-all", "collective-broadcast")

_HEADER = re.compile(r"^(ENTRY\s+)?%?([^\s(]+)\s*\(.*\)\s*->\s*.*\{\s*$")
_INSTR = re.compile(r"^\s*(?:ROOT\s+)?%?([^\s=]+)\s*=\s*(.*?)\s+([a-z][a-z0-9-]*)\((.*)$")
_ARRAY = re.compile(r"\b(" + "|".join(sorted(DTYPE_BYTES, key=len, reverse=True)) + r")\[([\d,]*)\]")
_CALLEE = re.compile(r"\b(?:calls|to_apply|body|condition|true_computation|false_computation)=%?([^\s,}]+)")
_BRANCHES = re.compile(r"branch_computations=\{([^}]*)\}")
_FRAME = re.compile(r"\s*stack_frame_id=\d+")


@dataclasses.dataclass
class Instr:
  name: str
  shape: str
  op: str
  rest: str


@dataclasses.dataclass
class Computation:
  name: str
  header: int          # line index of the header in the module text
  end: int             # line index of the closing brace
  instrs: list


def array_bytes(shape: str) -> list[float]:
  """Bytes of each array in an HLO shape string (a tuple gives several)."""
  return [DTYPE_BYTES[d] * math.prod(int(x) for x in dims.split(",") if x) for d, dims in _ARRAY.findall(shape)]


def parse_module(text: str) -> tuple[dict[str, Computation], str, list[str]]:
  """-> ({name: Computation}, entry name, the text's lines)."""
  lines = text.splitlines()
  comps, entry, current = {}, None, None
  for i, line in enumerate(lines):
    if current is None:
      m = _HEADER.match(line)
      if m:
        current = Computation(m.group(2), i, -1, [])
        if m.group(1):
          entry = current.name
      continue
    if line.startswith("}"):
      current.end = i
      comps[current.name] = current
      current = None
      continue
    m = _INSTR.match(line)
    if m:
      current.instrs.append(Instr(*m.groups()))
  if entry is None:
    raise ValueError("HLO module text has no ENTRY computation")
  return comps, entry, lines


def callees(instr: Instr) -> list[str]:
  names = _CALLEE.findall(instr.rest)
  for group in _BRANCHES.findall(instr.rest):
    names += [n.strip().lstrip("%") for n in group.split(",") if n.strip()]
  return names


def _operands(instr: Instr) -> list[str]:
  depth, out, cur = 0, [], ""
  for ch in instr.rest:
    if ch == "(":
      depth += 1
    elif ch == ")":
      if depth == 0:
        break
      depth -= 1
    if ch == "," and depth == 0:
      out.append(cur)
      cur = ""
    else:
      cur += ch
  out.append(cur)
  return [o.strip().split()[-1].lstrip("%") for o in out if o.strip()]


def trip_count(comps: dict[str, Computation], caller: Computation, loop: Instr) -> int | None:
  """Iterations of a while loop: the compiler's `known_trip_count` when it records one (CPU,
  GPU), else read from a condition that compares a tuple counter with a constant (`i < N`
  and its variants; TPU), from the counter's start value in the loop's initial tuple (0
  when it is not a literal). None when the condition has another form."""
  known = re.search(r'"known_trip_count":\{"n":"(\d+)"', loop.rest)
  if known:
    return int(known.group(1))
  m = re.search(r"condition=%?([^\s,}]+)", loop.rest)
  cond = comps.get(m.group(1)) if m else None
  if cond is None or not cond.instrs:
    return None
  by_name = {i.name: i for i in cond.instrs}
  root, operands = cond.instrs[-1], _operands(cond.instrs[-1])
  if root.op == "fusion":   # compare(param 0, param 1) wrapped in a fusion of the operands
    inner = comps.get((callees(root) or [""])[0])
    if inner is None or not inner.instrs or inner.instrs[-1].op != "compare":
      return None
    params = {i.name: int(re.match(r"\s*(\d+)", i.rest).group(1)) for i in inner.instrs if i.op == "parameter"}
    operands = [operands[params[n]] for n in _operands(inner.instrs[-1])[:2] if n in params]
    root = inner.instrs[-1]
  if root.op != "compare" or len(operands) < 2:
    return None
  direction = re.search(r"direction=(\w+)", root.rest)
  direction = direction.group(1) if direction else None
  a, b = (by_name.get(n) for n in operands[:2])
  if a is None or b is None:
    return None
  if a.op == "constant":   # N > i is i < N
    a, b = b, a
    direction = {"GT": "LT", "GE": "LE", "LT": "GT", "LE": "GE", "NE": "NE"}.get(direction)
  if b.op != "constant" or a.op != "get-tuple-element":
    return None
  limit = int(float(re.match(r"\s*(-?[\d.e+]+)", b.rest).group(1)))
  index = int(re.search(r"index=(\d+)", a.rest).group(1))
  start = _tuple_start(caller, loop, index)
  if direction == "LT":
    return max(limit - start, 0)
  if direction == "LE":
    return max(limit - start + 1, 0)
  if direction == "NE":
    return abs(limit - start)
  return None


def _tuple_start(caller: Computation, loop: Instr, index: int) -> int:
  by_name = {i.name: i for i in caller.instrs}
  init = by_name.get(_operands(loop)[0]) if _operands(loop) else None
  if init is not None and init.op == "tuple":
    ops = _operands(init)
    src = by_name.get(ops[index]) if index < len(ops) else None
    if src is not None and src.op == "constant":
      m = re.match(r"\s*(-?\d+)", src.rest)
      if m:
        return int(m.group(1))
  return 0


def multiplicities(comps: dict[str, Computation], entry: str) -> tuple[dict[str, float], list[dict]]:
  """How many times each computation runs per call of the entry (loop bodies x their trip
  counts, nested loops multiplied), and the loops found: [{body, trip, known}]."""
  mult: dict[str, float] = {}
  loops = []

  def visit(name: str, times: float):
    comp = comps.get(name)
    if comp is None:
      return
    mult[name] = mult.get(name, 0.0) + times
    for instr in comp.instrs:
      if instr.op == "while":
        trips = trip_count(comps, comp, instr)
        body = re.search(r"body=%?([^\s,}]+)", instr.rest).group(1)
        loops.append({"body": body, "trip": trips if trips is not None else 1, "known": trips is not None})
        visit(body, times * (trips if trips is not None else 1))
        cond = re.search(r"condition=%?([^\s,}]+)", instr.rest)
        if cond:
          visit(cond.group(1), times * ((trips or 0) + 1))
      else:
        for callee in callees(instr):
          visit(callee, times)
  visit(entry, 1.0)
  return mult, loops


@dataclasses.dataclass
class Cost:
  flops: float
  bytes_accessed: float
  transcendentals: float
  loops: list            # [{body, trip, known}] of every while loop, outermost first
  xla_flops: float       # XLA's own figures (each loop body once), for comparison
  xla_bytes: float


def _reachable(comps: dict[str, Computation], root: str) -> set[str]:
  seen, stack = set(), [root]
  while stack:
    name = stack.pop()
    if name in seen or name not in comps:
      continue
    seen.add(name)
    for instr in comps[name].instrs:
      stack.extend(callees(instr))
  return seen


def _entry_as(lines: list[str], comps: dict[str, Computation], new_entry: str) -> str:
  """A module text holding `new_entry` (as ENTRY) and the computations it reaches, in the
  printed order (callees before callers)."""
  keep = _reachable(comps, new_entry)
  out = ["HloModule plan_loop_body", ""]
  for comp in sorted((comps[n] for n in keep), key=lambda c: c.header):
    header = lines[comp.header]
    header = header[len("ENTRY "):] if header.startswith("ENTRY ") else header
    out.append(("ENTRY " if comp.name == new_entry else "") + header)
    # stack-frame ids point into the trailer of the full text, which is not copied
    out.extend(_FRAME.sub("", line) for line in lines[comp.header + 1:comp.end + 1])
    out.append("")
  return "\n".join(out)


@functools.lru_cache(maxsize=1)
def _cpu_client():
  return jax.devices("cpu")[0].client


def _analyse(text: str) -> dict:
  from jax._src.lib import xla_client as xc
  module = xc.hlo.hlo_module_from_text(text)
  return xc._xla.hlo_module_cost_analysis(_cpu_client(), module)


def loop_aware_cost(text: str) -> Cost:
  """Per-chip FLOPs / bytes accessed / transcendentals of an optimized HLO module with every
  while loop counted trip-count times (see the module docstring)."""
  comps, entry, lines = parse_module(text)
  cache: dict[str, dict] = {}

  def once(name: str) -> dict:   # XLA's analysis with `name` as the entry: its loops once each
    if name not in cache:
      cache[name] = _analyse(text if name == entry else _entry_as(lines, comps, name))
    return cache[name]

  keys = ("flops", "bytes accessed", "transcendentals")

  def total(name: str, seen: tuple = ()) -> dict:
    """True cost of one run of computation `name`: its once-cost plus, for each loop it runs
    (directly or through calls), (trip x the body's true cost - the body's once-cost)."""
    out = {k: float(once(name).get(k, 0.0)) for k in keys}
    for caller, loop in _loops_under(comps, name):
      trips = trip_count(comps, caller, loop)
      body = re.search(r"body=%?([^\s,}]+)", loop.rest).group(1)
      if trips is None or body in seen:
        continue
      inner, base = total(body, seen + (body,)), once(body)
      for k in keys:
        out[k] += trips * inner[k] - float(base.get(k, 0.0))
    return out

  result = total(entry)
  _, loops = multiplicities(comps, entry)
  base = once(entry)
  return Cost(result["flops"], result["bytes accessed"], result["transcendentals"], loops,
              float(base.get("flops", 0.0)), float(base.get("bytes accessed", 0.0)))


def _loops_under(comps: dict[str, Computation], name: str) -> Iterable[tuple[Computation, Instr]]:
  """While instructions run by one call of `name` outside any other loop: in `name` itself
  and in the computations it calls (not in loop bodies, which count their own)."""
  stack, seen = [name], set()
  while stack:
    comp = comps.get(stack.pop())
    if comp is None or comp.name in seen:
      continue
    seen.add(comp.name)
    for instr in comp.instrs:
      if instr.op == "while":
        yield comp, instr
      else:
        stack.extend(callees(instr))


def collectives(text: str) -> dict[str, dict[str, float]]:
  """{kind: {"count": ops run per call, "bytes": result bytes per chip per call}}, each op
  weighted by its loop's trip counts. Async pairs count once, at -start (whose result tuple
  holds the operands, then the outputs: the outputs are counted)."""
  comps, entry, _ = parse_module(text)
  mult, _ = multiplicities(comps, entry)
  out: dict[str, dict[str, float]] = {}
  for name, times in mult.items():
    for instr in comps[name].instrs:
      op = instr.op
      if op.endswith("-done"):
        continue
      kind = op[:-len("-start")] if op.endswith("-start") else op
      if kind not in COLLECTIVES:
        continue
      sizes = array_bytes(instr.shape)
      if op.endswith("-start") and kind != "all-reduce" and len(sizes) >= 2:
        # (operands..., outputs...[, u32 context]): count the outputs
        nbytes = sizes[1] if kind == "collective-permute" else sum(sizes[len(sizes) // 2:])
      else:
        nbytes = sum(sizes)
      entry_ = out.setdefault(kind, {"count": 0.0, "bytes": 0.0})
      entry_["count"] += times
      entry_["bytes"] += times * nbytes
  return out
