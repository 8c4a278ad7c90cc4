"""What a sweep is: grid points (config overrides) x seeds, and each run's config and folder.

From the command line, `--grid 'objective.name=dpo,ipo,simpo' --grid 'objective.beta=0.05,0.1'
--seeds 3` is the cross product of the grids, each point run with seeds config.seed,
config.seed + 1, config.seed + 2. From a config file (big_vision style), `get_sweep(variant)`
returns the same as a dict:

    def get_sweep(variant=""):
      return dict(grid={"objective.name": ("dpo", "ipo", "simpo"), "objective.beta": (0.05, 0.1)},
                  seeds=3, metrics=("gold_reward", "win_rate_vs_ref"))

`grid` may also be a list of points (dicts) when the product is not wanted; `seeds` an int
(how many, from config.seed) or a list of seeds; `metrics` is optional (see
`rewardlab.sweep.summary`). Run `i` of point p lives in <workdir>/<point name>/seed_<s>,
an ordinary run directory.
"""
from __future__ import annotations

import ast
import copy
import dataclasses
import inspect
import itertools
import os
import re
from typing import Any, Mapping, Sequence

import ml_collections

SWEEP_KEYS = ("grid", "seeds", "metrics")


class SweepError(ValueError):
  """A sweep specification, or a run directory it would reuse, is not usable."""


@dataclasses.dataclass(frozen=True)
class SweepSpec:
  """points: config overrides, one dict per grid point ({"objective.beta": 0.1, ...}), in
  order; seeds: the seeds every point runs; metrics: final metrics to summarise ("name" of the
  eval split, or "split/name"); () = every scalar of the last eval record."""
  points: tuple[Mapping[str, Any], ...]
  seeds: tuple[int, ...]
  metrics: tuple[str, ...] = ()

  def __post_init__(self):
    if not self.points:
      raise SweepError("sweep: no grid points")
    if not self.seeds or len(set(self.seeds)) != len(self.seeds):
      raise SweepError(f"sweep: seeds {list(self.seeds)} must be a non-empty list of distinct ints")
    names = [point_name(p) for p in self.points]
    dup = sorted({n for n in names if names.count(n) > 1})
    if dup:
      raise SweepError(f"sweep: grid points repeat: {dup}")


@dataclasses.dataclass(frozen=True)
class Run:
  """One run of a sweep: a grid point with one seed, its full config and run directory."""
  point: Mapping[str, Any]
  seed: int
  config: ml_collections.ConfigDict
  workdir: str

  @property
  def name(self) -> str:
    return point_name(self.point)


def parse_value(text: str):
  """'0.05' -> 0.05, 'True' -> True, '(1, 2)' -> (1, 2), 'dpo' -> 'dpo' (anything that is not
  a Python literal stays a string)."""
  text = text.strip()
  try:
    return ast.literal_eval(text)
  except (ValueError, SyntaxError):
    return text


def _split_values(text: str) -> list[str]:
  """Splits on commas outside brackets and quotes: 'a,(1,2),"x,y"' -> ['a', '(1,2)', '"x,y"']."""
  parts, depth, quote, start = [], 0, None, 0
  for i, ch in enumerate(text):
    if quote:
      quote = None if ch == quote else quote
    elif ch in "'\"":
      quote = ch
    elif ch in "([{":
      depth += 1
    elif ch in ")]}":
      depth -= 1
    elif ch == "," and depth == 0:
      parts.append(text[start:i])
      start = i + 1
  parts.append(text[start:])
  return parts


def parse_grid(flag: str) -> tuple[str, list]:
  """'objective.beta=0.05,0.1' -> ('objective.beta', [0.05, 0.1])."""
  field, sep, values = flag.partition("=")
  field = field.strip().removeprefix("config.")
  if not sep or not re.fullmatch(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*", field) or not values.strip():
    raise SweepError(f"--grid {flag!r}: expected FIELD=V1,V2,... (e.g. objective.beta=0.05,0.1)")
  parsed = [parse_value(v) for v in _split_values(values)]
  if any(v == "" for v in parsed):
    raise SweepError(f"--grid {flag!r}: an empty value")
  return field, parsed


def product(grid: Mapping[str, Sequence]) -> tuple[dict, ...]:
  """{"a": [1, 2], "b": ["x"]} -> ({"a": 1, "b": "x"}, {"a": 2, "b": "x"}); {} -> ({},)."""
  for field, values in grid.items():
    if isinstance(values, (str, bytes)) or not isinstance(values, Sequence) or not values:
      raise SweepError(f"sweep grid {field!r}: expected a non-empty list of values, got {values!r}")
  fields = list(grid)
  return tuple(dict(zip(fields, combo)) for combo in itertools.product(*(grid[f] for f in fields)))


def seed_list(seeds, base_seed: int) -> tuple[int, ...]:
  """An int n -> (base_seed, ..., base_seed + n - 1); a list of ints is taken as is."""
  if isinstance(seeds, int) and not isinstance(seeds, bool):
    if seeds < 1:
      raise SweepError(f"sweep seeds: {seeds} must be >= 1")
    return tuple(base_seed + i for i in range(seeds))
  if isinstance(seeds, Sequence) and all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
    return tuple(seeds)
  raise SweepError(f"sweep seeds: {seeds!r} is neither a count nor a list of ints")


def spec_from_sweep_dict(sweep: Mapping[str, Any], base_seed: int, where: str = "get_sweep()") -> SweepSpec:
  """A `get_sweep()` result -> SweepSpec; unknown keys are errors naming `where`."""
  bad = sorted(set(sweep) - set(SWEEP_KEYS))
  if bad:
    raise SweepError(f"{where}: unknown keys {bad}; allowed: {list(SWEEP_KEYS)}")
  grid = sweep.get("grid", {})
  if isinstance(grid, Mapping):
    points = product(grid)
  elif isinstance(grid, Sequence) and all(isinstance(p, Mapping) for p in grid):
    points = tuple(dict(p) for p in grid)
  else:
    raise SweepError(f"{where}: grid must be a dict of field -> values or a list of dicts")
  metrics = sweep.get("metrics", ())
  if isinstance(metrics, str):
    metrics = (metrics,)
  return SweepSpec(points, seed_list(sweep.get("seeds", 1), base_seed), tuple(metrics))


def load_get_sweep(config_arg: str) -> dict | None:
  """The `get_sweep(variant)` of the config file named by a --config value
  ('configs/x.py:variant'), or None when the file has none."""
  import importlib.util
  path, _, variant = config_arg.partition(":")
  spec = importlib.util.spec_from_file_location(os.path.splitext(os.path.basename(path))[0], path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  fn = getattr(module, "get_sweep", None)
  if fn is None:
    return None
  return fn(variant) if inspect.signature(fn).parameters else fn()


def set_field(config: ml_collections.ConfigDict, field: str, value) -> None:
  """config.<field> = value for a dotted field that must already exist."""
  node, parts = config, field.split(".")
  for i, part in enumerate(parts):
    where = "config." + ".".join(parts[:i]) if i else "config"
    if not isinstance(node, (ml_collections.ConfigDict, dict)) or part not in node:
      keys = sorted(node.keys()) if isinstance(node, (ml_collections.ConfigDict, dict)) else []
      raise SweepError(f"sweep grid: config.{field}: {where} has no field {part!r}; it has {keys}")
    if i < len(parts) - 1:
      node = node[part]
  try:
    node[parts[-1]] = value
  except (TypeError, ValueError) as e:
    raise SweepError(f"sweep grid: config.{field} = {value!r}: {e}") from None


def overrides_between(base: ml_collections.ConfigDict, variant: ml_collections.ConfigDict,
                      ignore: Sequence[str] = ("workdir",)) -> dict:
  """The grid point that turns `base` into `variant`: {dotted field: variant's value} for every
  field that differs (a section whose keys differ is overridden whole), so rows built by
  different config functions (`get_config(variant, head)`) can be one sweep's points and
  share its warm-ups. Raises SweepError if applying them does not give `variant`."""
  def walk(a, b, prefix: str) -> dict:
    out = {}
    for key in b:
      field = prefix + key
      if field in ignore:
        continue
      if isinstance(a.get(key), dict) and isinstance(b[key], dict) and set(a[key]) == set(b[key]):
        out.update(walk(a[key], b[key], field + "."))
      elif key not in a or a[key] != b[key]:
        out[field] = b[key]
    return out

  a, b = base.to_dict(), variant.to_dict()
  missing = sorted(set(a) - set(b))
  if missing:
    raise SweepError(f"overrides_between: the variant config has no top-level {missing}")
  point = walk(a, b, "")
  check = copy.deepcopy(base)
  for field, value in point.items():
    set_field(check, field, value)
  for field in ignore:
    check[field] = variant[field]
  if check.to_dict() != b:
    raise SweepError(f"overrides_between: {point} does not turn the base config into the variant")
  return point


def _fmt(value) -> str:
  text = value if isinstance(value, str) else repr(value)
  return re.sub(r"[^\w.=+-]", "_", text) or "_"


def point_name(point: Mapping[str, Any]) -> str:
  """{"objective.name": "dpo", "objective.beta": 0.05} -> 'objective.name=dpo,objective.beta=0.05'
  (the folder of the point's runs); {} -> 'base'."""
  return ",".join(f"{k}={_fmt(v)}" for k, v in point.items()) or "base"


def plan(config: ml_collections.ConfigDict, spec: SweepSpec, workdir: str) -> list[Run]:
  """Every run of the sweep, point-major: the config with the point's overrides, the seed and
  the run directory <workdir>/<point name>/seed_<s> set."""
  runs = []
  for point in spec.points:
    for seed in spec.seeds:
      c = copy.deepcopy(config)
      for field, value in point.items():
        set_field(c, field, value)
      run_dir = os.path.join(workdir, point_name(point), f"seed_{seed}")
      c.seed = seed
      c.workdir = run_dir
      runs.append(Run(dict(point), seed, c, run_dir))
  return runs
