"""The offline loop shared by SFT / RM / DPO: batches by step number -> update step ->
metrics, evaluation, checkpoints; resume from the latest checkpoint in the workdir.

Batches are a pure function of (seed, step), so a resumed run sees exactly the batches
the uninterrupted run would have seen, and reproduces its metrics.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Callable, Mapping

import jax
import numpy as np
import optax

from rewardlab.eval.plots import plot_curves
from rewardlab.train.checkpoint import Checkpointer
from rewardlab.train.metrics import MetricWriter, Progress, read_metrics
from rewardlab.sharding import batch_sharding, shard_batch
from rewardlab.train.state import TrainState, shardings_of
from rewardlab.train.step import LossFn, make_update_step

Evaluator = Callable[[TrainState], Mapping[str, Any]]


def write_config(config, workdir: str):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))


def _scalars(metrics: Mapping[str, Any]) -> dict:
  return {k: v for k, v in metrics.items() if np.ndim(v) == 0 and not isinstance(v, str)}


def fit(config, workdir: str, mesh, graphdef, state: TrainState, loss_fn: LossFn,
        optimizer: optax.GradientTransformation, schedule, batch_at: Callable[[int], Any],
        evaluate: Evaluator | None = None, stop_at_step: int | None = None,
        plot_panels=(("train", "loss"), ("eval", "accuracy")), merge=None,
        tokens_in: Callable[[Any], int] = lambda b: int(np.sum(b.valid)), step_fn=None) -> dict:
  """Runs updates until config.train.steps. `batch_at(i)` returns the host batch for
  update i (0-based). `stop_at_step` simulates an interruption after that update.
  `step_fn`: a `make_update_step` result to reuse (a caller that fits in several calls, as
  online rounds do, would otherwise get a new jitted step, and a recompile, per call).

  Returns a summary: final train metrics, eval history, wall time, final state.
  """
  tc = config.train
  write_config(config, workdir)
  writer = MetricWriter(workdir, tensorboard=tc.tensorboard)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), tc.checkpoint_every, tc.keep_checkpoints)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    writer.truncate_after(int(state.step))
  start = int(state.step)
  if step_fn is None:
    step_fn = make_update_step(graphdef, loss_fn, optimizer, schedule, shardings_of(state),
                               batch_sharding(mesh), merge=merge)
  progress = Progress(tc.steps, initial=start, enabled=tc.progress)
  evals, last, t0 = [], {}, time.perf_counter()

  def run_eval(step):
    result = dict(evaluate(state))
    text = result.pop("examples", [])
    evals.append(writer.write(step, _scalars(result), split="eval"))
    progress.write(f"step {step} eval " + " ".join(f"{k}={v:.4g}" for k, v in _scalars(result).items()))
    for line in text:
      progress.write("   " + line)

  if evaluate is not None and start == 0 and tc.eval_every > 0:
    run_eval(0)
  tokens = 0
  for step in range(start + 1, tc.steps + 1):
    host_batch = batch_at(step - 1)
    tokens += tokens_in(host_batch)
    state, metrics = step_fn(state, shard_batch(host_batch, mesh))
    if step % tc.log_every == 0 or step == tc.steps:
      metrics = jax.device_get(metrics)
      rate = progress.update(tc.log_every if step % tc.log_every == 0 else step % tc.log_every,
                             tokens, loss=float(metrics["loss"]))
      tokens = 0
      last = writer.write(step, dict(_scalars(metrics), tokens_per_s=rate))
    if evaluate is not None and tc.eval_every > 0 and (step % tc.eval_every == 0 or step == tc.steps):
      run_eval(step)
    ckpt.maybe_save(step, state, force=(step == tc.steps))
    if stop_at_step is not None and step >= stop_at_step:
      break
  progress.close()
  ckpt.close()
  writer.close()
  records = read_metrics(workdir)
  plot_curves(records, os.path.join(workdir, "curves.png"), plot_panels)
  return {"state": state, "train": last, "evals": evals, "wall_s": time.perf_counter() - t0,
          "records": records}
