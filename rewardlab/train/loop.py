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

from rewardlab.distributed import barrier, broadcast_from_main, is_main, to_host
from rewardlab.errors import CheckpointError, NonFiniteError
from rewardlab.eval.plots import plot_curves
from rewardlab.sharding import batch_sharding, make_mesh, shard_batch
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
  skip_nonfinite_steps: int = 0   # steps with a NaN/inf loss, gradient or reward to skip before stopping

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
  """<workdir>/config.json (process 0 only in a multi-process run)."""
  if not is_main():
    return
  os.makedirs(workdir, exist_ok=True)
  with open(os.path.join(workdir, "config.json"), "w") as f:
    f.write(config.to_json_best_effort(indent=2))


def begin_run(config, workdir: str | None):
  """Every pipeline's first lines: (the run directory, with its config.json written; the
  device mesh of config.mesh)."""
  workdir = workdir or config.workdir
  write_config(config, workdir)
  return workdir, make_mesh(dict(config.mesh))


def _scalars(metrics: Mapping[str, Any]) -> dict:
  return {k: v for k, v in metrics.items() if np.ndim(v) == 0 and not isinstance(v, str)}


def _mean_over_updates(per_update: Sequence[Mapping[str, Any]]) -> dict:
  """Each scalar metric averaged over the step's updates (one update: its own value)."""
  per_update = [_scalars(m) for m in to_host(list(per_update))]
  return {k: np.mean([m[k] for m in per_update]) for k in per_update[0]} if per_update else {}


class NonFiniteGuard:
  """What the loop does when a loss, gradient norm or reward goes NaN / inf (the update step
  has already refused to apply such an update): stop with a NonFiniteError naming the step,
  what went bad and, for gradients, the first parameters; or skip up to `allowed` such steps
  (train.skip_nonfinite_steps), counted as "nonfinite_skipped" in the train metrics."""

  def __init__(self, allowed: int, skipped: int, params):
    self.allowed, self.skipped, self._params = allowed, skipped, params

  def check_updates(self, step: int, per_update) -> bool:
    """True (skip) or raise when one of the step's updates was not finite; False when all were."""
    flags = to_host([(m["nonfinite_update"], m["loss"], m["grad_norm"]) for m in per_update])
    bad = [i for i, (flag, _, _) in enumerate(flags) if flag]
    if not bad:
      return False
    _, loss, grad_norm = flags[bad[0]]
    what = " and ".join(f"{name} is {float(v)}" for name, v in (("loss", loss), ("gradient norm", grad_norm))
                        if not np.isfinite(v))
    leaves = np.asarray(to_host(per_update[bad[0]]["nonfinite_grads"]))
    names = [jax.tree_util.keystr(path, simple=True, separator="/")
             for path, _ in jax.tree_util.tree_flatten_with_path(self._params)[0]]
    first = [n for n, b in zip(names, leaves) if b][:5]
    return self.skip_or_stop(step, f"{what} (update {bad[0] + 1} of {len(flags)})"
                             + (f"; first parameters with non-finite gradients: {', '.join(first)}" if first else ""))

  def skip_or_stop(self, step: int, what: str) -> bool:
    if self.skipped < self.allowed:
      self.skipped += 1
      return True
    raise NonFiniteError(
        f"step {step}: {what}. The update was not applied and nothing after step {step - 1} was saved"
        + (f" ({self.skipped} non-finite steps skipped before, the most train.skip_nonfinite_steps="
           f"{self.allowed} allows)" if self.allowed else "; train.skip_nonfinite_steps=N skips up to N such steps"))


def _resume(pipeline: Pipeline, ckpt: Checkpointer, writer: MetricWriter) -> tuple[TrainState, int, int]:
  """(state, first loop step to run - 1, non-finite steps skipped so far) from the newest
  intact checkpoint; the metrics file is trimmed to match the state: rows a dead run wrote
  after its last checkpoint go (all of them when it died before the first, or its step-0
  evaluation would repeat). Several processes: process 0 trims and reads the file, the others
  take its count."""
  state, restored = ckpt.restore_latest_intact(pipeline.state)
  start = int(state.step) // pipeline.updates_per_step
  writer.truncate_after(start if restored is not None else -1)
  done = read_metrics(writer.path, "train") if writer.files and os.path.exists(writer.path) else []
  skipped = int(broadcast_from_main(np.int32(done[-1].get("nonfinite_skipped", 0) if done else 0)))
  barrier("rewardlab_resume")
  return state, start, skipped


class LoopRun:
  """One pipeline's pass through the loop: its writer, checkpointer, progress display,
  non-finite guard and state. `fit` drives one; `rewardlab.sweep.vmapped` drives several in
  lockstep, applying one vmapped update step to all their states (so it reads each run's
  state through `current_state` and applies updates itself)."""

  def __init__(self, pipeline: Pipeline, mesh, settings: LoopSettings, workdir: str, show_progress: bool = True):
    self.pipeline, self.mesh, self.settings, self.workdir = pipeline, mesh, settings, workdir
    self.writer = MetricWriter(workdir, tensorboard=settings.tensorboard, files=is_main())
    self.ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), settings.checkpoint_every,
                             settings.keep_checkpoints)
    self.state, self.start, skipped = _resume(pipeline, self.ckpt, self.writer)
    self.guard = NonFiniteGuard(settings.skip_nonfinite_steps, skipped, self.state.params)
    self.progress = Progress(settings.steps, initial=self.start,
                             enabled=settings.progress and show_progress and is_main(), desc=pipeline.name)
    self.evals, self.last, self.tokens = [], {}, 0
    self.t0 = time.perf_counter()

  def make_step_fn(self, **kw):
    p = self.pipeline
    return make_update_step(p.graphdef, p.loss_fn, p.optimizer, p.schedule, shardings_of(self.state),
                            batch_sharding(self.mesh), merge=p.merge, micro_batches=self.settings.micro_batches,
                            loss_weight=p.loss_weight, **kw)

  def current_state(self):
    return self.state

  def evaluate(self, step: int):
    result = dict(self.pipeline.evaluate(self.current_state()))
    examples = result.pop("examples", [])
    self.evals.append(self.writer.write(step, _scalars(result), split="eval"))
    self.progress.write(f"step {step} eval " + " ".join(f"{k}={v:.4g}" for k, v in _scalars(result).items()))
    for line in examples:
      self.progress.write("   " + line)

  def step_inputs(self, step: int, state) -> tuple[Any, StepInputs | None]:
    """(state, the source's inputs of step), or (state, None) when its data was not finite and
    the step is skipped (NonFiniteGuard; raises when no more skips are allowed)."""
    try:
      return self.pipeline.source(step - 1, state)
    except NonFiniteError as e:
      self.guard.skip_or_stop(step, str(e))
      return state, None

  def train_step(self, step: int, step_fn) -> tuple[StepInputs, list]:
    """The step's updates on this run's own state: (inputs, per-update metrics)."""
    self.state, inputs = self.step_inputs(step, self.state)
    if inputs is None:   # skipped: the updates it would have made still count
      self.state = self.state.replace(step=self.state.step + self.pipeline.updates_per_step)
      return StepInputs([]), []
    per_update = []
    for batch in inputs.batches:
      self.state, metrics = step_fn(self.state, shard_batch(batch, self.mesh))
      per_update.append(metrics)
    return inputs, per_update

  def end_step(self, step: int, inputs: StepInputs, per_update: list) -> bool:
    """After a step's updates: the non-finite check, metrics, evaluation, checkpoint. True
    when the run is over (its last step, or `stop_at_step`)."""
    self.guard.check_updates(step, per_update)
    self.log(step, inputs, per_update)
    s = self.settings
    if self.pipeline.evaluate is not None and s.eval_every > 0 and (step % s.eval_every == 0 or step == s.steps):
      self.evaluate(step)
    if step == s.steps or self.ckpt.due(step):
      self.ckpt.maybe_save(step, self.current_state(), force=(step == s.steps))
    return step >= s.steps

  def log(self, step: int, inputs: StepInputs, per_update: list):
    for split, record in inputs.records.items():
      self.writer.write(step, record, split=split)
    self.tokens += inputs.tokens
    every = self.settings.log_every
    if step % every and step != self.settings.steps:
      return
    metrics = dict(_mean_over_updates(per_update), **inputs.stats)
    if self.settings.skip_nonfinite_steps:
      metrics["nonfinite_skipped"] = self.guard.skipped
    shown = {label: float(metrics.get(key, np.nan)) for label, key in self.pipeline.shown.items()}
    rate = self.progress.update(every if step % every == 0 else step % every, self.tokens, **shown)
    self.tokens = 0
    self.last = self.writer.write(step, dict(metrics, tokens_per_s=rate))

  def evaluate_at_start(self):
    if self.pipeline.evaluate is not None and self.settings.eval_every > 0 and self.start == 0:
      self.evaluate(0)

  def close(self, quiet: bool = False):
    """quiet: a failed last save is not raised (another error is already on its way)."""
    self.progress.close()
    self.writer.close()
    try:
      self.ckpt.close()
    except CheckpointError:
      if not quiet:
        raise

  def summary(self) -> dict:
    """{"state", "train": last train record, "evals", "wall_s", "records"}; plots curves.png.
    Several processes: process 0 reads and plots; the others' records are empty."""
    records = []
    if is_main():
      records = read_metrics(self.workdir)
      plot_curves(records, os.path.join(self.workdir, "curves.png"), self.pipeline.plot_panels)
    return {"state": self.current_state(), "train": self.last, "evals": self.evals,
            "wall_s": time.perf_counter() - self.t0, "records": records}


def fit(pipeline: Pipeline, mesh, settings: LoopSettings, workdir: str,
        stop_at_step: int | None = None) -> dict:
  """Runs loop steps until settings.steps, resuming from the newest intact checkpoint in
  workdir. `stop_at_step` simulates an interruption after that step. Raises NonFiniteError
  at a non-finite loss / gradient / reward (see NonFiniteGuard), CheckpointError when a
  checkpoint cannot be written.

  Returns {"state", "train": last train record, "evals": eval records, "wall_s", "records"}.
  """
  run = LoopRun(pipeline, mesh, settings, workdir)
  step_fn = run.make_step_fn()
  try:
    run.evaluate_at_start()
    for step in range(run.start + 1, settings.steps + 1):
      if run.end_step(step, *run.train_step(step, step_fn)) or (stop_at_step is not None and step >= stop_at_step):
        break
  except BaseException:
    run.close(quiet=True)   # the error that stopped the run is the one to report
    raise
  run.close()
  return run.summary()
