"""Command line.

    rewardlab train --config configs/x.py[:variant] [--config.a.b=v] [--workdir D]
    rewardlab sweep --config configs/x.py[:variant] [--config.a.b=v] \\
        --grid 'objective.name=dpo,ipo,simpo' --grid 'objective.beta=0.05,0.1' --seeds 3 \\
        [--workdir D] [--parallel N] [--vmap_seeds] [--metrics gold_reward,train/loss]

Rerunning the same command with the same workdir resumes: `train` from the latest
checkpoint, `sweep` skipping finished runs and resuming unfinished ones. A sweep without
--grid/--seeds/--metrics takes them from the config file's `get_sweep(variant)` when it has
one (flags given replace the file's). See rewardlab/sweep/.

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
         "[--seeds N] [--workdir DIR] [--parallel N] [--vmap_seeds] [--metrics M1,M2]")

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
SWEEP_FLAGS = ("grid", "seeds", "parallel", "vmap_seeds", "metrics")
# named after jax.distributed.initialize's arguments
_COORDINATOR = flags.DEFINE_string("coordinator_address", None, "train on several hosts: HOST:PORT of "
                                   "process 0's coordination service (with --num_processes, --process_id)")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", None, "train on several hosts: how many processes")
_PROCESS_ID = flags.DEFINE_integer("process_id", None, "train on several hosts: this process's index")
_HEARTBEAT = flags.DEFINE_integer("heartbeat_timeout_seconds", None, "train on several hosts: seconds "
                                  "without a heartbeat after which a process counts as dead and all stop")
DISTRIBUTED_FLAGS = ("coordinator_address", "num_processes", "process_id", "heartbeat_timeout_seconds")


def _bad_config(e):
  print(f"rewardlab: bad config: {e}", file=sys.stderr)
  sys.exit(2)


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
  from rewardlab.distributed import is_main, multi_process
  from rewardlab.errors import CheckpointError, NonFiniteError
  from rewardlab.objectives import OBJECTIVES
  from rewardlab.pipelines import PIPELINES
  from rewardlab.train import ConfigError, validate

  init_distributed()
  try:
    validate(config, OBJECTIVES, PIPELINES)
  except ConfigError as e:
    _bad_config(e)
  workdir = _WORKDIR.value or config.workdir
  try:
    summary = PIPELINES[config.pipeline](config, workdir)
  except (NonFiniteError, CheckpointError) as e:   # one line, and an exit code per kind
    print(f"rewardlab: stopped: {e}", file=sys.stderr)
    _exit(3 if isinstance(e, NonFiniteError) else 4)
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


def main(argv):
  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  command = argv[1:]
  if command not in (["train"], ["sweep"]):
    raise app.UsageError(f"unknown command {' '.join(command) or '(none)'!r}\n{USAGE}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError(f"--config is required\n{USAGE}")
  if command == ["train"]:
    given = [f"--{f}" for f in SWEEP_FLAGS if flags.FLAGS[f].present]
    if given:
      raise app.UsageError(f"{', '.join(given)}: sweep flags; use `rewardlab sweep`\n{USAGE}")
    train(config)
  else:
    given = [f"--{f}" for f in DISTRIBUTED_FLAGS if flags.FLAGS[f].present]
    if given:
      raise app.UsageError(f"{', '.join(given)}: multi-host flags are for `rewardlab train`\n{USAGE}")
    sweep(config)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
