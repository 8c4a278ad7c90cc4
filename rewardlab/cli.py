"""Command line.

    rewardlab train --config configs/x.py[:variant] [--config.a.b=v] [--workdir D]
    rewardlab sweep --config configs/x.py[:variant] [--config.a.b=v] \\
        --grid 'objective.name=dpo,ipo,simpo' --grid 'objective.beta=0.05,0.1' --seeds 3 \\
        [--workdir D] [--parallel N] [--vmap_seeds] [--metrics gold_reward,train/loss]
    rewardlab plan --config configs/x.py[:variant] [--config.a.b=v] --topology v5p:2x2x2|local \\
        [--json] [--margin 0.9] [--functions a,b] [--suggest] [--suggest_budget N]

Rerunning the same command with the same workdir resumes: `train` from the latest
checkpoint, `sweep` skipping finished runs and resuming unfinished ones. A sweep without
--grid/--seeds/--metrics takes them from the config file's `get_sweep(variant)` when it has
one (flags given replace the file's). See rewardlab/sweep/.
With config.train.check_fit=True, `train` is refused up front when `plan` says a function
does not fit the device memory (or train.memory_budget_gib). `plan` compiles the config's
jitted functions for the topology on abstract inputs (nothing is allocated) and prints
per-chip memory, FLOPs, bytes, collectives and a step-time bound; exit status 0 when
everything fits, 1 when something does not, 2 on bad input.

Several hosts (one process each; see docs/MULTIHOST.md): `train` joins them with
`jax.distributed.initialize`, explicitly with --coordinator_address=HOST:PORT
--num_processes=N --process_id=I, or by itself under SLURM (srun) and on a TPU pod slice.
"""
from __future__ import annotations

import os
import sys
import traceback

from absl import app, flags, logging
from ml_collections import config_flags

USAGE = ("usage: rewardlab train --config configs/<name>.py[:variant] "
         "[--config.<field>=<value> ...] [--workdir DIR]\n"
         "         [--coordinator_address=HOST:PORT --num_processes=N --process_id=I]\n"
         "       rewardlab sweep --config configs/<name>.py[:variant] [--grid FIELD=V1,V2 ...] "
         "[--seeds N] [--workdir DIR] [--parallel N] [--vmap_seeds] [--metrics M1,M2]\n"
         "       rewardlab plan --config configs/<name>.py[:variant] --topology <v5p:2x2x2|v5e:4x4|...|local> "
         "[--json] [--margin F] [--functions a,b] [--suggest] [--suggest_budget N]")

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (default: config.workdir; sweep: "
                               "config.workdir + '_sweep')")
_GRID = flags.DEFINE_multi_string("grid", None, "sweep: FIELD=V1,V2,... (repeat for a cross product)")
_SEEDS = flags.DEFINE_integer("seeds", None, "sweep: seeds per grid point (config.seed, config.seed + 1, ...)")
_PARALLEL = flags.DEFINE_integer("parallel", 1, "sweep: runs at a time, each in its own process")
_VMAP = flags.DEFINE_boolean("vmap_seeds", False, "sweep: train a point's seeds as one vmapped step "
                             "(sft, dpo, rm pipelines)")
_METRICS = flags.DEFINE_list("metrics", None, "sweep: final metrics to summarise ('name' = eval split, "
                             "'split/name'); default: the last eval record's scalars")
_TOPOLOGY = flags.DEFINE_string("topology", "local", "plan: a TPU slice (v4|v5e|v5p|v6e:AxB[xC]) or 'local'")
_JSON = flags.DEFINE_bool("json", False, "plan: print JSON instead of the table")
_MARGIN = flags.DEFINE_float("margin", 0.9, "plan: a function fits when it needs at most this fraction of HBM")
_FUNCTIONS = flags.DEFINE_list("functions", None, "plan: only these functions (default: all of the config's)")
_SUGGEST = flags.DEFINE_bool("suggest", False, "plan: when something does not fit, search for a setting that does")
_SUGGEST_BUDGET = flags.DEFINE_integer("suggest_budget", 12, "plan --suggest: at most this many compiles")
# named after jax.distributed.initialize's arguments
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "train on several hosts: HOST:PORT of "
                                   "process 0's coordination service (with --num_processes, --process_id)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "train on several hosts: how many processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "train on several hosts: this process's index")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_seconds", None, "train on several hosts: seconds "
                                  "without a heartbeat after which a process counts as dead and all stop")
DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id", "heartbeat_timeout_seconds")
COMMAND_FLAGS = {"train": DISTRIBUTED_FLAGS, "sweep": ("grid", "seeds", "parallel", "vmap_seeds", "metrics"),
                 "plan": ("topology", "json", "margin", "functions", "suggest", "suggest_budget")}


def _bad_config(e):
  print(f"rewardlab: bad config: {e}", file=sys.stderr)
  sys.exit(2)


def _config_name() -> str:
  return flags.FLAGS["config"].config_filename or "config"


def init_distributed():
  """Joins the multi-process runtime when the flags or the environment ask for one (before
  anything touches a device); exits 2 on inconsistent flags."""
  from rewardlab.distributed import DistributedError, initialize
  try:
    initialize(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value, _HEARTBEAT.value)
  except DistributedError as e:
    print(f"rewardlab: {e}", file=sys.stderr)
    sys.exit(2)


def _exit(code: int):
  """Exits; across processes, first naming the processes that died when that is why this one
  failed (a collective with a killed peer fails here), then at once, without JAX's shutdown
  barrier: the coordination service stops the others, naming this process."""
  from rewardlab.distributed import multi_process, process_index, unresponsive_processes
  if not multi_process():
    sys.exit(code)
  dead = unresponsive_processes()
  if dead:
    print(f"rewardlab: process(es) {', '.join(map(str, dead))} stopped responding (killed, crashed or "
          "unreachable): see their logs", file=sys.stderr, flush=True)
  print(f"rewardlab: process {process_index()} stopped (exit code {code})", file=sys.stderr, flush=True)
  sys.stdout.flush()
  os._exit(code)


def train(config):
  from rewardlab.data.formats import RowError
  from rewardlab.distributed import is_main, multi_process
  from rewardlab.errors import CheckpointError, NonFiniteError
  from rewardlab.objectives import OBJECTIVES
  from rewardlab.pipelines import PIPELINES
  from rewardlab.plan.fit import DoesNotFit, check_fit
  from rewardlab.train import ConfigError, validate

  init_distributed()
  try:
    validate(config, OBJECTIVES, PIPELINES)
    check_fit(config, name=_config_name())
  except ConfigError as e:
    _bad_config(e)
  except DoesNotFit as e:
    print(f"rewardlab: refused before training: {e}", file=sys.stderr)
    sys.exit(2)
  workdir = _WORKDIR.value or config.workdir
  try:
    summary = PIPELINES[config.pipeline](config, workdir)
  except (NonFiniteError, CheckpointError) as e:   # one line, and an exit code per kind
    print(f"rewardlab: stopped: {e}", file=sys.stderr)
    _exit(3 if isinstance(e, NonFiniteError) else 4)
  except RowError as e:   # a data file's row, named file:line (data.on_bad_pair='skip' counts them instead)
    print(f"rewardlab: bad data: {e}", file=sys.stderr)
    _exit(2)
  except Exception:
    if not multi_process():
      raise
    traceback.print_exc()
    _exit(1)
  if not is_main():
    return
  final = summary["evals"][-1] if summary["evals"] else summary["train"]
  print(f"done in {summary['wall_s']:.1f}s; final: "
        + " ".join(f"{k}={v:.4g}" for k, v in final.items() if isinstance(v, float)))
  print(f"run directory: {workdir} (metrics.jsonl, config.json, tb/, checkpoints/, curves.png)")


def sweep_spec(config, config_arg: str):
  """The sweep from the flags, over the config file's get_sweep() when it has one."""
  from rewardlab.sweep.spec import SweepError, load_get_sweep, parse_grid, spec_from_sweep_dict
  sweep = dict(load_get_sweep(config_arg) or {})
  if _GRID.value:
    grid = {}
    for flag in _GRID.value:
      field, values = parse_grid(flag)
      if field in grid:
        raise SweepError(f"--grid {field} given twice")
      grid[field] = values
    sweep["grid"] = grid
  if _SEEDS.value is not None:
    sweep["seeds"] = _SEEDS.value
  if _METRICS.value:
    sweep["metrics"] = tuple(_METRICS.value)
  return spec_from_sweep_dict(sweep, config.seed, where=f"{config_arg.partition(':')[0]}: get_sweep()")


def sweep(config):
  from rewardlab.sweep import SweepError, run_sweep
  config_arg = flags.FLAGS["config"].config_filename
  try:
    spec = sweep_spec(config, config_arg)
    workdir = _WORKDIR.value or config.workdir + "_sweep"
    out = run_sweep(config, spec, workdir, parallel=_PARALLEL.value, vmap_seeds=_VMAP.value,
                    config_arg=config_arg)
  except SweepError as e:
    print(f"rewardlab sweep: {e}", file=sys.stderr)
    sys.exit(2)
  print(out["summary"]["table"])
  print(f"sweep directory: {workdir} (summary.md, summary.csv, curves.png, sweep.json, one folder per point)")


def plan(config):
  from rewardlab.plan.chips import TopologyError, prepare_compile_only_libtpu, resolve_topology
  from rewardlab.plan.planner import plan_config
  from rewardlab.plan.report import format_report
  from rewardlab.train import ConfigError
  if _TOPOLOGY.value != "local":
    prepare_compile_only_libtpu()
  log = None if _JSON.value else (lambda msg: print(msg, file=sys.stderr, flush=True))
  try:
    topology = resolve_topology(_TOPOLOGY.value)
    report = plan_config(config, topology, _MARGIN.value, _FUNCTIONS.value, _config_name(), log)
  except TopologyError as e:
    print(f"rewardlab plan: {e}", file=sys.stderr)
    sys.exit(2)
  except (ConfigError, ValueError) as e:
    print(f"rewardlab plan: bad config for {_TOPOLOGY.value}: {e}", file=sys.stderr)
    sys.exit(2)
  out = report.as_dict() if _JSON.value else None
  if not _JSON.value:
    print(format_report(report))
  if _SUGGEST.value and not report.fits:
    from rewardlab.plan.suggest import format_suggestion, suggest
    found = suggest(config, topology, report, _MARGIN.value, _SUGGEST_BUDGET.value, log)
    if _JSON.value:
      out["suggestion"] = found.as_dict()
    else:
      print("\n" + format_suggestion(found))
  if _JSON.value:
    import json
    print(json.dumps(out, indent=2))
  sys.exit(0 if report.fits else 1)


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  command = argv[1:]
  if command not in (["train"], ["sweep"], ["plan"]):
    raise app.UsageError(f"unknown command {' '.join(command) or '(none)'!r}\n{USAGE}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError(f"--config is required\n{USAGE}")
  given = [f"--{f}" for other, names in COMMAND_FLAGS.items() if other != command[0] for f in names
           if flags.FLAGS[f].present]
  if given:
    raise app.UsageError(f"{', '.join(given)}: not flags of `rewardlab {command[0]}`\n{USAGE}")
  {"train": train, "sweep": sweep, "plan": plan}[command[0]](config)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
