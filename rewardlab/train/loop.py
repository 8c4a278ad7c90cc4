"""The one training loop every pipeline runs (SFT, RM, DPO offline and online, RL).

A pipeline hands `fit` a `Pipeline`: the initial TrainState, the loss, the optimizer, a
`source` that makes loop step i's inputs, and an evaluator. The loop owns everything else:
step counting, the jitted update step, metrics (metrics.jsonl, TensorBoard, progress bar),
evaluation cadence, checkpoints, resume and the final plot.

A step is one batch (offline pipelines) or one rollout split into minibatches (RL), so
`source(i, state)` returns a list of host batches applied as consecutive updates. Sources
are pure functions of (seed, i, state), so a run resumed from a checkpoint sees exactly the
inputs the uninterrupted run saw and writes the same metrics.
"""
from __future__ import annotations

import dataclasses
import os
import time
from typing import Any, Callable, Mapping, NamedTuple, Sequence

import jax
import numpy as np
import optax

from rewardlab.eval.plots import plot_curves
from rewardlab.sharding import batch_sharding, shard_batch
from rewardlab.train.checkpoint import Checkpointer
from rewardlab.train.metrics import MetricWriter, Progress, read_metrics
from rewardlab.train.state import TrainState, shardings_of
from rewardlab.train.step import LossFn, MergeFn, make_update_step

Evaluator = Callable[[TrainState], Mapping[str, Any]]


class StepInputs(NamedTuple):
  """What a pipeline's source hands the loop for one step.

  batches: host batches (pytrees of [B, ...] arrays), one update each, applied in order
  stats:   host-side metrics merged into the step's train record (e.g. rollout reward)
  tokens:  tokens processed, for the tokens/s display
  records: other splits logged at this step, e.g. {"round": {...}} for online rounds
  """
  batches: Sequence[Any]
  stats: Mapping[str, float] = {}
  tokens: int = 0
  records: Mapping[str, Mapping[str, float]] = {}


# source(i, state) -> (state, inputs of loop step i (0-based)); a source may update the
# state's non-trained parts (e.g. keep the previous round's model in `frozen`)
Source = Callable[[int, TrainState], tuple[TrainState, StepInputs]]


def offline_source(batch_at: Callable[[int], Any],
                   tokens_in: Callable[[Any], int] = lambda b: int(np.sum(b.valid))) -> Source:
  """A source of one fixed batch per step: `batch_at(i)` is the host batch of update i."""
  def source(i: int, state: TrainState):
    batch = batch_at(i)
    return state, StepInputs([batch], tokens=tokens_in(batch))
  return source


@dataclasses.dataclass(frozen=True)
class LoopSettings:
  """The loop's cadences (config.train)."""
  steps: int
  log_every: int = 1
  eval_every: int = 0          # 0: no evaluation
  checkpoint_every: int = 0    # 0: only the final step is saved
  keep_checkpoints: int = 2
  progress: bool = True
  tensorboard: bool = True
  micro_batches: int = 1       # gradient accumulation: each update's batch in this many pieces

  @classmethod
  def from_config(cls, train, **overrides) -> "LoopSettings":
    fields = {f.name: train[f.name] for f in dataclasses.fields(cls)}
    return cls(**{**fields, **overrides})


@dataclasses.dataclass
class Pipeline:
  """One pipeline as the loop sees it.

  loss_fn(model, batch, rng) -> (loss, metrics), the model built from `graphdef` and
  `merge(state.params, state.frozen)` (or state.params alone); `updates_per_step`: how many
  batches each source step returns (the checkpointed state counts updates); `loss_weight`:
  a micro-batch's share of the loss (`train.step.make_update_step`).
  """
  graphdef: Any
  state: TrainState
  loss_fn: LossFn
  optimizer: optax.GradientTransformation
  schedule: optax.Schedule | None
  source: Source
  evaluate: Evaluator | None = None
  merge: MergeFn | None = None
  updates_per_step: int = 1
  loss_weight: Callable[[Any], Any] | None = None
  plot_panels: tuple = (("train", "loss"), ("eval", "accuracy"))
  shown: Mapping[str, str] = dataclasses.field(default_factory=lambda: {"loss": "loss"})  # bar label -> metric
  name: str = "train"


def write_config(config, workdir: str):
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))


def _scalars(metrics: Mapping[str, Any]) -> dict:
  return {k: v for k, v in metrics.items() if np.ndim(v) == 0 and not isinstance(v, str)}


def _mean_over_updates(per_update: Sequence[Mapping[str, Any]]) -> dict:
  """Each scalar metric averaged over the step's updates (one update: its own value)."""
  per_update = [_scalars(m) for m in jax.device_get(list(per_update))]
  return {k: np.mean([m[k] for m in per_update]) for k in per_update[0]}


def fit(pipeline: Pipeline, mesh, settings: LoopSettings, workdir: str,
        stop_at_step: int | None = None) -> dict:
  """Runs loop steps until settings.steps, resuming from the latest checkpoint in workdir.
  `stop_at_step` simulates an interruption after that step.

  Returns {"state", "train": last train record, "evals": eval records, "wall_s", "records"}.
  """
  writer = MetricWriter(workdir, tensorboard=settings.tensorboard)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), settings.checkpoint_every,
                      settings.keep_checkpoints)
  state, restored = pipeline.state, ckpt.latest_step() is not None
  if restored:
    state = ckpt.restore(state)
  start = int(state.step) // pipeline.updates_per_step
  # the metrics file matches the state: rows a dead run wrote after its last checkpoint go
  # (all of them when it died before the first, or its step-0 evaluation would repeat)
  writer.truncate_after(start if restored else -1)
  step_fn = make_update_step(pipeline.graphdef, pipeline.loss_fn, pipeline.optimizer,
                             pipeline.schedule, shardings_of(state), batch_sharding(mesh),
                             merge=pipeline.merge, micro_batches=settings.micro_batches,
                             loss_weight=pipeline.loss_weight)
  progress = Progress(settings.steps, initial=start, enabled=settings.progress, desc=pipeline.name)
  evals, last, tokens, t0 = [], {}, 0, time.perf_counter()

  def run_eval(step):
    result = dict(pipeline.evaluate(state))
    examples = result.pop("examples", [])
    evals.append(writer.write(step, _scalars(result), split="eval"))
    progress.write(f"step {step} eval " + " ".join(f"{k}={v:.4g}" for k, v in _scalars(result).items()))
    for line in examples:
      progress.write("   " + line)

  evaluating = pipeline.evaluate is not None and settings.eval_every > 0
  if evaluating and start == 0:
    run_eval(0)
  for step in range(start + 1, settings.steps + 1):
    state, inputs = pipeline.source(step - 1, state)
    for split, record in inputs.records.items():
      writer.write(step, record, split=split)
    tokens += inputs.tokens
    per_update = []
    for batch in inputs.batches:
      state, metrics = step_fn(state, shard_batch(batch, mesh))
      per_update.append(metrics)
    if step % settings.log_every == 0 or step == settings.steps:
      metrics = dict(_mean_over_updates(per_update), **inputs.stats)
      rate = progress.update(settings.log_every if step % settings.log_every == 0 else step % settings.log_every,
                             tokens, **{label: float(metrics[key]) for label, key in pipeline.shown.items()})
      tokens = 0
      last = writer.write(step, dict(metrics, tokens_per_s=rate))
    if evaluating and (step % settings.eval_every == 0 or step == settings.steps):
      run_eval(step)
    ckpt.maybe_save(step, state, force=(step == settings.steps))
    if stop_at_step is not None and step >= stop_at_step:
      break
  progress.close()
  ckpt.close()
  writer.close()
  records = read_metrics(workdir)
  plot_curves(records, os.path.join(workdir, "curves.png"), pipeline.plot_panels)
  return {"state": state, "train": last, "evals": evals, "wall_s": time.perf_counter() - t0,
          "records": records}
