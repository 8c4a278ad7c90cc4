"""What every pipeline's `build` returns, and `run` = build + the shared loop + finish.

Splitting `run(config, workdir)` into `build` (read the config, make the state, loss, source
and evaluator: everything `train.loop.fit` takes) and `finish` (what a pipeline does with the
loop's summary: exports, extra summary fields) lets other drivers run the same pieces in
another loop, e.g. several seeds as one vmapped update step (`rewardlab.sweep.vmapped`).
"""
from __future__ import annotations

from typing import Any, Callable, NamedTuple

from rewardlab.distributed import initialize
from rewardlab.sharding import make_mesh, tracing_mesh
from rewardlab.train.loop import LoopSettings, Pipeline, fit


def _unchanged(summary: dict) -> dict:
  return summary


class Built(NamedTuple):
  """A pipeline ready for the loop.

  pipeline: what `fit` trains; mesh: its device mesh; settings: the loop's cadences;
  finish(summary) -> summary: run after `fit` on its summary ({"state", "train", "evals",
  "wall_s", "records"}), e.g. writes exports and adds pipeline-specific fields.
  """
  pipeline: Pipeline
  mesh: Any
  settings: LoopSettings
  finish: Callable[[dict], dict] = _unchanged


def run_built(built: Built, workdir: str, stop_at_step: int | None = None) -> dict:
  """fit, then finish: exactly what each pipeline's `run` does."""
  summary = fit(built.pipeline, built.mesh, built.settings, workdir, stop_at_step)
  return built.finish(summary)


def runner(build: Callable[..., Built]):
  """A pipeline's `run(config, workdir=None, stop_at_step=None) -> summary` from its `build`:
  `stop_at_step` simulates an interruption after that loop step."""
  def run(config, workdir: str | None = None, stop_at_step: int | None = None) -> dict:
    initialize()   # several hosts under SLURM / a TPU pod: join them (nothing for one process)
    workdir = workdir or config.workdir
    # the run's functions are traced under its mesh (begin_run makes an equal one), so the
    # model's activation sharding constraints apply
    with tracing_mesh(make_mesh(dict(config.mesh))):
      return run_built(build(config, workdir), workdir, stop_at_step)
  run.__doc__ = f"build ({build.__module__}.build), then the shared loop and finish."
  return run
