"""Runs a sweep: every (grid point, seed) as an ordinary run directory, resumably.

A run is **finished** when its directory holds the final checkpoint
(`checkpoints/<train.steps>`, which the loop saves after the last step's metrics and
evaluation) and `metrics.jsonl` has the train record of step `train.steps`. A re-run of the
sweep skips finished runs and hands unfinished ones to their pipeline, which resumes from the
latest checkpoint (the loop trims metrics written after it). A run directory made with a
different config (any field but `workdir` and `train.progress`) is an error, never silently
reused.

SFT warm-ups are shared: runs whose warm-up configs are identical (same seed, model, data,
warm-up settings) train it once in <workdir>/_warmups/<hash>/seed_<s>, and each run starts
from a copy in its own `sft_warmup/` (restored, not retrained: the same weights bit for bit).

Runs of one sweep compile the same programs again and again (every seed; every point whose
shapes and constants match), so the sweep turns on JAX's persistent compilation cache in
<workdir>/_jax_cache unless one is already set (measured: a 2x2x2 micro SFT sweep took half
the CPU time). It changes which executable is loaded, never what it computes.

`parallel=N` runs N jobs at a time in fresh processes (spawned: JAX is not fork-safe); the
objectives they use must then be importable (an objective registered in a notebook exists
only in the notebook's process, so run those with parallel=1). `vmap_seeds` trains the
seeds of a grid point as one vmapped update step (`rewardlab.sweep.vmapped`).
"""
from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import hashlib
import json
import multiprocessing
import os
import re
import shutil
import time
import traceback
from typing import Sequence

import ml_collections

from rewardlab.sweep.spec import Run, SweepError, SweepSpec, plan, point_name
from rewardlab.train.metrics import read_metrics

IGNORED_FIELDS = ("workdir", "train.progress")


def canonical(config: ml_collections.ConfigDict) -> dict:
  """The config as the JSON its run directory's config.json holds."""
  return json.loads(config.to_json_best_effort())


def _flat(tree, prefix: str = "") -> dict:
  if not isinstance(tree, dict):
    return {prefix: tree}
  out = {}
  for k, v in tree.items():
    out.update(_flat(v, f"{prefix}.{k}" if prefix else k))
  return out


def config_differences(old: dict, new: dict, ignored: Sequence[str] = IGNORED_FIELDS) -> list[str]:
  """'field: old -> new' for every leaf that differs, ignoring `ignored` fields."""
  a, b = _flat(old), _flat(new)
  keys = sorted(k for k in set(a) | set(b) if k not in ignored)
  return [f"{k}: {a.get(k, '(absent)')!r} -> {b.get(k, '(absent)')!r}" for k in keys if a.get(k) != b.get(k)]


def check_reusable(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Raises SweepError if `workdir` holds a run made with a different config."""
  path = os.path.join(workdir, "config.json")
  if not os.path.exists(path):
    return
  with open(path) as f:
    old = json.load(f)
  diffs = config_differences(old, canonical(config))
  if diffs:
    raise SweepError(f"{path}: this run directory was made with a different config ("
                     + "; ".join(diffs[:4]) + (f"; {len(diffs) - 4} more" if len(diffs) > 4 else "")
                     + "); delete it or sweep into another --workdir")


def checkpoint_steps(workdir: str) -> list[int]:
  """Steps of the finalized checkpoints under <workdir>/checkpoints (orbax renames a
  checkpoint's temporary folder to its bare step number once it is complete)."""
  folder = os.path.join(workdir, "checkpoints")
  if not os.path.isdir(folder):
    return []
  return sorted(int(d) for d in os.listdir(folder) if re.fullmatch(r"\d+", d))


def is_finished(workdir: str, steps: int) -> bool:
  """The final checkpoint exists and metrics.jsonl reached step `steps` (see module doc)."""
  path = os.path.join(workdir, "metrics.jsonl")
  if steps not in checkpoint_steps(workdir) or not os.path.exists(path):
    return False
  return any(r["step"] == steps and r["split"] == "train" for r in read_metrics(path))


@contextlib.contextmanager
def compile_cache(directory: str | None):
  """Within the block, JAX's persistent compilation cache lives in `directory` and keeps every
  program, however quick to compile; the previous settings come back after it. A cache
  directory configured by the user is left alone."""
  import jax
  from jax.experimental.compilation_cache import compilation_cache as cc
  if not directory or jax.config.jax_compilation_cache_dir:
    yield
    return
  new = {"jax_compilation_cache_dir": os.path.abspath(directory),
         "jax_persistent_cache_min_compile_time_secs": 0.0, "jax_persistent_cache_min_entry_size_bytes": 1}
  old = {k: getattr(jax.config, k) for k in new}
  for k, v in new.items():
    jax.config.update(k, v)
  cc.reset_cache()   # the cache reads its settings once; make it read them again
  try:
    yield
  finally:
    for k, v in old.items():
      jax.config.update(k, v)
    cc.reset_cache()


@dataclasses.dataclass(frozen=True)
class Job:
  """One unit of work: a run (one config), or several seeds of one point trained as one
  vmapped program (configs equal but for seed and workdir)."""
  configs: tuple
  workdirs: tuple
  label: str
  compile_cache: str | None = None


def run_job(job: Job) -> float:
  """Runs the job in this process; returns its wall time in seconds."""
  from rewardlab.pipelines import PIPELINES
  t0 = time.perf_counter()
  with compile_cache(job.compile_cache):
    if len(job.configs) == 1:
      PIPELINES[job.configs[0].pipeline](job.configs[0], job.workdirs[0])
    else:
      from rewardlab.sweep.vmapped import run_seeds
      run_seeds(list(job.configs), list(job.workdirs))
  return time.perf_counter() - t0


def execute(jobs: Sequence[Job], parallel: int = 1, log=print) -> list[tuple[Job, str]]:
  """Runs every job (N at a time in spawned processes when parallel > 1); a failing job does
  not stop the others. Returns [(job, traceback)] of the failures."""
  failures = []
  if parallel <= 1 or len(jobs) <= 1:
    for i, job in enumerate(jobs):
      log(f"sweep: [{i + 1}/{len(jobs)}] {job.label}")
      try:
        log(f"sweep: {job.label} done in {run_job(job):.1f}s")
      except Exception:  # noqa: BLE001  (reported with its traceback after the other jobs)
        failures.append((job, traceback.format_exc()))
        log(f"sweep: {job.label} FAILED\n{failures[-1][1]}")
    return failures
  ctx = multiprocessing.get_context("spawn")
  with concurrent.futures.ProcessPoolExecutor(max_workers=parallel, mp_context=ctx) as pool:
    futures = {pool.submit(run_job, job): job for job in jobs}
    for future in concurrent.futures.as_completed(futures):
      job = futures[future]
      try:
        log(f"sweep: {job.label} done in {future.result():.1f}s")
      except Exception:  # noqa: BLE001
        failures.append((job, traceback.format_exc()))
        log(f"sweep: {job.label} FAILED\n{failures[-1][1]}")
  return failures


# pipelines whose update step is pure in (state, batch) with a loss that does not depend on
# the seed: their seeds can share one vmapped step (see rewardlab.sweep.vmapped)
VMAP_PIPELINES = ("sft", "dpo", "rm")


def _seedless_key(config) -> str:
  c = canonical(config)
  c.pop("seed", None)
  c.pop("workdir", None)
  c.get("train", {}).pop("progress", None)
  return hashlib.sha1(json.dumps(c, sort_keys=True).encode()).hexdigest()[:12]


# sections of an RL / preference / RM config that its SFT warm-up never reads: runs that differ
# only there (a reward-model head, an RL auxiliary) share one warm-up per seed
_NOT_READ_BY_SFT = ("rm", "rl", "laser", "spark", "online", "sft_warmup")


def shared_warmup_config(warmup_config) -> ml_collections.ConfigDict:
  """The warm-up's SFT config without the sections SFT never reads (unlocked copy)."""
  c = warmup_config.to_dict()
  for section in _NOT_READ_BY_SFT:
    c.pop(section, None)
  return ml_collections.ConfigDict(c)


def make_jobs(items: Sequence[tuple], vmap_seeds: bool, log=print, compile_cache: str | None = None) -> list[Job]:
  """items: (config, workdir, label). Without vmap_seeds one job each. With it, items whose
  configs differ only in seed and workdir, of a pipeline in VMAP_PIPELINES, and resuming from
  the same checkpoint step become one vmapped job; the rest run one by one."""
  if not vmap_seeds:
    return [Job((c,), (w,), label, compile_cache) for c, w, label in items]
  groups: dict[tuple, list] = {}
  for c, w, label in items:
    steps = checkpoint_steps(w)
    groups.setdefault((_seedless_key(c), steps[-1] if steps else 0), []).append((c, w, label))
  jobs = []
  for members in groups.values():
    pipeline = members[0][0].pipeline
    if len(members) > 1 and pipeline in VMAP_PIPELINES:
      seeds = ",".join(str(c.seed) for c, _, _ in members)
      label = re.sub(r"/seed_\d+$", "", members[0][2]) + f" seeds {seeds} (vmapped)"
      jobs.append(Job(tuple(c for c, _, _ in members), tuple(w for _, w, _ in members), label, compile_cache))
      continue
    if len(members) > 1:
      log(f"sweep: --vmap_seeds: pipeline {pipeline!r} runs its seeds one by one (vmapped: "
          f"{', '.join(VMAP_PIPELINES)}; its rollouts/rounds sample from each seed's policy on the host)")
    jobs += [Job((c,), (w,), label, compile_cache) for c, w, label in members]
  return jobs


def warmup_jobs(runs: Sequence[Run], workdir: str) -> tuple[list[tuple], list[tuple[str, str, int]]]:
  """The shared SFT warm-ups that unfinished runs need: ([(config, shared dir, label)] still
  to train, [(shared dir, run's sft_warmup dir, warm-up steps)] to copy). Runs whose own warm-up is finished
  need nothing."""
  from rewardlab.pipelines.sft import warmup_config
  todo, copies, seen = [], [], set()
  for run in runs:
    wc = warmup_config(run.config)
    own = os.path.join(run.workdir, "sft_warmup")
    if wc is None or is_finished(own, wc.train.steps):
      continue
    wc = shared_warmup_config(wc)
    shared = os.path.join(workdir, "_warmups", _seedless_key(wc), f"seed_{wc.seed}")
    copies.append((shared, own, wc.train.steps))
    if shared in seen:
      continue
    seen.add(shared)
    wc.workdir = shared
    check_reusable(wc, shared)
    if not is_finished(shared, wc.train.steps):
      todo.append((wc, shared, f"sft warm-up {os.path.relpath(shared, workdir)}"))
  return todo, copies


def write_manifest(workdir: str, spec: SweepSpec, runs: Sequence[Run], config_arg: str = "") -> str:
  """<workdir>/sweep.json: the points, seeds, metrics and run directories (relative), so
  `rewardlab.sweep.summary.load_sweep(workdir)` can read the sweep back later."""
  os.makedirs(workdir, exist_ok=True)
  path = os.path.join(workdir, "sweep.json")
  with open(path, "w") as f:
    json.dump({"config": config_arg, "pipeline": runs[0].config.pipeline,
               "points": [{"name": point_name(p), "overrides": dict(p)} for p in spec.points], "seeds": list(spec.seeds),
               "metrics": list(spec.metrics),
               "runs": [{"point": point_name(r.point), "seed": r.seed,
                         "dir": os.path.relpath(r.workdir, workdir)} for r in runs]}, f, indent=2)
  return path


def run_sweep(config: ml_collections.ConfigDict, spec: SweepSpec, workdir: str, parallel: int = 1,
              vmap_seeds: bool = False, config_arg: str = "", log=print, compile_cache: bool = True) -> dict:
  """Runs every unfinished run of the sweep, then writes summary.md / summary.csv /
  curves.png (rewardlab.sweep.summary). compile_cache: JAX's persistent compilation cache
  in <workdir>/_jax_cache (see the module doc). Returns {"runs", "ran": run dirs trained now,
  "summary": summary paths and rows}. Raises SweepError naming the failed runs, after the
  others finished."""
  from rewardlab.objectives import OBJECTIVES
  from rewardlab.pipelines import PIPELINES
  from rewardlab.sweep.summary import summarize_sweep
  from rewardlab.train import ConfigError, validate

  runs = plan(config, spec, workdir)
  for run in runs:
    try:
      validate(run.config, OBJECTIVES, PIPELINES)
    except ConfigError as e:
      raise SweepError(f"sweep point {run.name} seed {run.seed}: {e}") from None
    check_reusable(run.config, run.workdir)
  if parallel > 1:   # one progress bar per process would interleave
    for run in runs:
      run.config.train.progress = False
  todo = [r for r in runs if not is_finished(r.workdir, r.config.train.steps)]
  log(f"sweep: {len(spec.points)} points x {len(spec.seeds)} seeds = {len(runs)} runs in {workdir}; "
      f"{len(runs) - len(todo)} finished, {len(todo)} to run")
  write_manifest(workdir, spec, runs, config_arg)

  cache = os.path.join(workdir, "_jax_cache") if compile_cache else None
  warm_todo, copies = warmup_jobs(todo, workdir)
  if parallel > 1:
    for wc, _, _ in warm_todo:
      wc.train.progress = False
  failures = execute(make_jobs(warm_todo, vmap_seeds, log, cache), parallel, log)
  for shared, own, steps in copies:
    if is_finished(shared, steps):   # else its job failed (reported) and the run trains its own
      if os.path.isdir(own):
        shutil.rmtree(own)   # an unfinished copy (e.g. interrupted) or an unfinished own warm-up
      shutil.copytree(shared, own)
  items = [(r.config, r.workdir, os.path.relpath(r.workdir, workdir)) for r in todo]
  failures += execute(make_jobs(items, vmap_seeds, log, cache), parallel, log)
  if failures:
    raise SweepError(f"sweep: {len(failures)} job(s) failed: " + "; ".join(
        f"{j.label}: {tb.strip().splitlines()[-1]}" for j, tb in failures))
  summary = summarize_sweep(workdir, runs, spec.metrics)
  return {"runs": runs, "ran": [r.workdir for r in todo], "summary": summary}
