"""Command line: `rewardlab train --config configs/x.py[:variant] [--config.a.b=v] [--workdir D]`.

Rerunning the same command with the same workdir resumes from the latest checkpoint.
"""
from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

USAGE = ("usage: rewardlab train --config configs/<name>.py[:variant] "
         "[--config.<field>=<value> ...] [--workdir DIR]")

_CONFIG = config_flags.DEFINE_config_file("config", None, "experiment config file", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "run directory (default: config.workdir)")


def main(argv):
  from rewardlab.errors import CheckpointError, NonFiniteError
  from rewardlab.objectives import OBJECTIVES
  from rewardlab.pipelines import PIPELINES
  from rewardlab.train import ConfigError, validate

  if not flags.FLAGS["verbosity"].present:
    logging.set_verbosity(logging.WARNING)  # orbax logs every save at INFO
  if argv[1:] != ["train"]:
    raise app.UsageError(f"unknown command {' '.join(argv[1:]) or '(none)'!r}\n{USAGE}")
  config = _CONFIG.value
  if config is None:
    raise app.UsageError(f"--config is required\n{USAGE}")
  try:
    validate(config, OBJECTIVES, PIPELINES)
  except ConfigError as e:
    print(f"rewardlab: bad config: {e}", file=sys.stderr)
    sys.exit(2)
  workdir = _WORKDIR.value or config.workdir
  try:
    summary = PIPELINES[config.pipeline](config, workdir)
  except NonFiniteError as e:
    print(f"rewardlab: stopped: {e}", file=sys.stderr)
    sys.exit(3)
  except CheckpointError as e:
    print(f"rewardlab: stopped: {e}", file=sys.stderr)
    sys.exit(4)
  final = summary["evals"][-1] if summary["evals"] else summary["train"]
  print(f"done in {summary['wall_s']:.1f}s; final: "
        + " ".join(f"{k}={v:.4g}" for k, v in final.items() if isinstance(v, float)))
  print(f"run directory: {workdir} (metrics.jsonl, config.json, tb/, checkpoints/, curves.png)")


def run():
  app.run(main)


if __name__ == "__main__":
  run()
