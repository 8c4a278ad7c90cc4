"""Command line.

  rewardlab train --config configs/x.py[:variant] [--config.a.b=v] [--workdir D]
      Rerunning the same command with the same workdir resumes from the latest checkpoint.
      With config.train.check_fit=True the run is refused up front when `plan` says a
      function does not fit the device memory (or train.memory_budget_gib).
  rewardlab plan --config configs/x.py[:variant] [--config.a.b=v] --topology v5p:2x2x2|local
                 [--json] [--margin 0.9] [--functions a,b] [--suggest] [--suggest_budget N]
      Compiles the config's jitted functions for the topology on abstract inputs (nothing is
      allocated) and prints per-chip memory, FLOPs, bytes, collectives and a step-time bound.
      Exit status 0 when everything fits, 1 when something does not, 2 on bad input.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

USAGE = ("usage: rewardlab train --config configs/<name>.py[:variant] [--config.<field>=<value> ...] "
         "[--workdir DIR]\n"
         "       rewardlab plan --config configs/<name>.py[:variant] --topology <v5p:2x2x2|v5e:4x4|...|local> "
         "[--json] [--margin F] [--functions a,b] [--suggest] [--suggest_budget N]")

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (default: config.workdir)")
_TOPOLOGY = flags.DEFINE_string("topology", "local", "plan: a TPU slice (v4|v5e|v5p|v6e:AxB[xC]) or 'local'")
_JSON = flags.DEFINE_bool("json", False, "plan: print JSON instead of the table")
_MARGIN = flags.DEFINE_float("margin", 0.9, "plan: a function fits when it needs at most this fraction of HBM")
_FUNCTIONS = flags.DEFINE_list("functions", None, "plan: only these functions (default: all of the config's)")
_SUGGEST = flags.DEFINE_bool("suggest", False, "plan: when something does not fit, search for a setting that does")
_SUGGEST_BUDGET = flags.DEFINE_integer("suggest_budget", 12, "plan --suggest: at most this many compiles")


def _validated_config():
  from rewardlab.objectives import OBJECTIVES
  from rewardlab.pipelines import PIPELINES
  from rewardlab.train import ConfigError, validate
  config = _CONFIG.value
  if config is None:
    raise app.UsageError(f"--config is required\n{USAGE}")
  return config, lambda n=None: validate(config, OBJECTIVES, PIPELINES, n_devices=n), ConfigError


def _config_name() -> str:
  args = [a for a in sys.argv if a.startswith("--config=")]
  return args[0].split("=", 1)[1] if args else "config"


def train(config, check, config_error):
  from rewardlab.pipelines import PIPELINES
  from rewardlab.plan.fit import DoesNotFit, check_fit
  try:
    check()
    check_fit(config, name=_config_name())
  except config_error as e:
    print(f"rewardlab: bad config: {e}", file=sys.stderr)
    sys.exit(2)
  except DoesNotFit as e:
    print(f"rewardlab: refused before training: {e}", file=sys.stderr)
    sys.exit(2)
  workdir = _WORKDIR.value or config.workdir
  summary = PIPELINES[config.pipeline](config, workdir)
  final = summary["evals"][-1] if summary["evals"] else summary["train"]
  print(f"done in {summary['wall_s']:.1f}s; final: "
        + " ".join(f"{k}={v:.4g}" for k, v in final.items() if isinstance(v, float)))
  print(f"run directory: {workdir} (metrics.jsonl, config.json, tb/, checkpoints/, curves.png)")


def plan(config, config_error):
  from rewardlab.plan.chips import TopologyError, prepare_compile_only_libtpu, resolve_topology
  from rewardlab.plan.planner import plan_config
  from rewardlab.plan.report import format_report
  if _TOPOLOGY.value != "local":
    prepare_compile_only_libtpu()
  log = None if _JSON.value else (lambda msg: print(msg, file=sys.stderr, flush=True))
  try:
    topology = resolve_topology(_TOPOLOGY.value)
    report = plan_config(config, topology, _MARGIN.value, _FUNCTIONS.value, _config_name(), log)
  except TopologyError as e:
    print(f"rewardlab plan: {e}", file=sys.stderr)
    sys.exit(2)
  except (config_error, ValueError) as e:
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
  if command not in (["train"], ["plan"]):
    raise app.UsageError(f"unknown command {' '.join(command) or '(none)'!r}\n{USAGE}")
  config, check, config_error = _validated_config()
  if command == ["plan"]:
    plan(config, config_error)
  else:
    train(config, check, config_error)


def run():
  app.run(main)


if __name__ == "__main__":
  run()
