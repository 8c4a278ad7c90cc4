"""Seeds as one program: N seeds of one config trained by one `jax.vmap`-ed update step.

PureJaxRL vmaps its whole training function over the seed's key. Here the update step is
the part that is pure in its inputs, so each pipeline's own pieces are reused as they are:
every seed's pipeline is built (`rewardlab.pipelines.BUILDERS`: its state, loss, source,
evaluator), the N TrainStates are stacked along a leading axis, and
`jax.jit(jax.vmap(step))` applies the pipelines' shared update step (`train.step`) to all of
them at once, on the N seeds' batches stacked the same way. Sources and evaluators stay per
seed on the host (batching data, greedy decoding), and each seed writes exactly the run
directory `PIPELINES[pipeline](config, workdir)` would: config.json, metrics.jsonl, tb/,
checkpoints/ (resumable one seed at a time or together), curves.png, exports.

Which pipelines: SFT, DPO and RM (`runner.VMAP_PIPELINES`). Their loss depends on the config
only, so one trace serves every seed, and their sources ignore the state. Not RL: its
rollout is host work on each seed's current policy (Python verifiers on decoded text,
DAPO's data-dependent refill rounds), so only the update step could be shared while
sampling, most of an iteration's time, stays per seed; and an auxiliary such as LaSeR closes
its loss over a constant measured from the seed's own reference policy, which one shared
trace would get wrong for every seed but the first. Not online DPO, for the same sampling reason.

Results equal separate runs to float tolerance, not bit for bit: batched matmuls may sum in
another order.

The loop below mirrors `train.loop.fit` (the same records at the same steps, the same
checkpoint cadence and resume rule) for N states; keep the two in step.
"""
from __future__ import annotations

import os
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rewardlab.eval.plots import plot_curves
from rewardlab.pipelines.common import Built
from rewardlab.sharding import BATCH_AXES, batch_sharding
from rewardlab.sweep.spec import SweepError
from rewardlab.train.checkpoint import Checkpointer
from rewardlab.train.metrics import MetricWriter, Progress, read_metrics
from rewardlab.train.state import shardings_of
from rewardlab.train.step import make_update_step


def _scalars(metrics) -> dict:
  return {k: v for k, v in metrics.items() if np.ndim(v) == 0 and not isinstance(v, str)}


class _SeedState:
  """Seed i's slice of the stacked state, cut on first use: offline sources never look at
  the state, so they cost no copy."""

  def __init__(self, take, i: int):
    self._take, self._i, self._state = take, i, None

  def __getattr__(self, name):
    if self._state is None:
      self._state = self._take(self._i)
    return getattr(self._state, name)


def _check_compatible(builts: Sequence[Built]):
  first = builts[0]
  for i, b in enumerate(builts[1:], 1):
    if b.settings != first.settings or b.pipeline.updates_per_step != first.pipeline.updates_per_step:
      raise SweepError(f"vmapped seeds: seed {i}'s loop settings differ from seed 0's "
                       f"({b.settings} vs {first.settings})")
    if jax.tree.structure(b.pipeline.state) != jax.tree.structure(first.pipeline.state):
      raise SweepError(f"vmapped seeds: seed {i}'s TrainState has another structure than seed 0's")


def fit_seeds(builts: Sequence[Built], workdirs: Sequence[str], stop_at_step: int | None = None) -> list[dict]:
  """`train.loop.fit` for N seeds of one pipeline at once: one vmapped update step over the
  stacked states. builts[i] must come from the same config but for its seed and workdir (the
  update step traced from builts[0] serves all). Returns one fit-style summary per seed
  ({"state", "train", "evals", "wall_s", "records"}), before each pipeline's `finish`."""
  _check_compatible(builts)
  n, first = len(builts), builts[0]
  p0, settings, mesh = first.pipeline, first.settings, first.mesh
  writers = [MetricWriter(w, tensorboard=settings.tensorboard) for w in workdirs]
  ckpts = [Checkpointer(os.path.join(w, "checkpoints"), settings.checkpoint_every, settings.keep_checkpoints)
           for w in workdirs]
  states, starts = [], []
  for b, ckpt, writer in zip(builts, ckpts, writers):
    restored = ckpt.latest_step() is not None
    state = ckpt.restore(b.pipeline.state) if restored else b.pipeline.state
    starts.append(int(state.step) // p0.updates_per_step)
    writer.truncate_after(starts[-1] if restored else -1)
    states.append(state)
  if len(set(starts)) > 1:
    raise SweepError(f"vmapped seeds must resume from the same step; checkpoints at {dict(zip(workdirs, starts))}")
  start = starts[0]
  step_fn = make_update_step(p0.graphdef, p0.loss_fn, p0.optimizer, p0.schedule, shardings_of(states[0]),
                             batch_sharding(mesh), donate=False, merge=p0.merge)
  vstep = jax.jit(jax.vmap(step_fn), donate_argnums=(0,))
  stack = jax.jit(lambda *trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees))
  take = jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree))
  seeds_batch = NamedSharding(mesh, P(None, BATCH_AXES))   # [N, B, ...]: B over the data axes
  stacked = stack(*states)
  del states

  progress = Progress(settings.steps, initial=start, enabled=settings.progress, desc=f"{p0.name} x{n} seeds")
  evals, last, tokens = [[] for _ in range(n)], [{} for _ in range(n)], [0] * n
  t0 = last_log = time.perf_counter()

  def run_eval(step):
    shown = []
    for i, b in enumerate(builts):
      result = dict(b.pipeline.evaluate(take(stacked, i)))
      result.pop("examples", None)
      evals[i].append(writers[i].write(step, _scalars(result), split="eval"))
      shown.append(_scalars(result))
    progress.write(f"step {step} eval (mean of {n} seeds) "
                   + " ".join(f"{k}={np.mean([s[k] for s in shown]):.4g}" for k in shown[0]))

  evaluating = p0.evaluate is not None and settings.eval_every > 0
  if evaluating and start == 0:
    run_eval(0)
  for step in range(start + 1, settings.steps + 1):
    views = [_SeedState(lambda i: take(stacked, i), i) for i in range(n)]
    outs = [b.pipeline.source(step - 1, view) for b, view in zip(builts, views)]
    if any(s is not v for (s, _), v in zip(outs, views)):   # a source changed its state
      stacked = stack(*[s._take(s._i) if isinstance(s, _SeedState) else s for s, _ in outs])
    inputs = [inp for _, inp in outs]
    if len({len(inp.batches) for inp in inputs}) > 1:
      raise SweepError(f"vmapped seeds: step {step}: the seeds' sources returned "
                       f"{[len(inp.batches) for inp in inputs]} batches; they must agree")
    for i, inp in enumerate(inputs):
      for split, record in inp.records.items():
        writers[i].write(step, record, split=split)
      tokens[i] += inp.tokens
    per_update = []
    for j in range(len(inputs[0].batches)):
      batch = jax.tree.map(lambda *xs: np.stack(xs), *[inp.batches[j] for inp in inputs])
      stacked, metrics = vstep(stacked, jax.device_put(batch, seeds_batch))
      per_update.append(metrics)
    if step % settings.log_every == 0 or step == settings.steps:
      per_update = jax.device_get(per_update)
      now = time.perf_counter()
      for i in range(n):
        mine = [_scalars({k: v[i] for k, v in m.items()}) for m in per_update]
        metrics = dict({k: np.mean([m[k] for m in mine]) for k in mine[0]}, **inputs[i].stats)
        last[i] = writers[i].write(step, dict(metrics, tokens_per_s=tokens[i] / max(now - last_log, 1e-9)))
      done = settings.log_every if step % settings.log_every == 0 else step % settings.log_every
      progress.update(done, sum(tokens), **{label: float(np.mean([r[key] for r in last]))
                                            for label, key in p0.shown.items()})
      tokens, last_log = [0] * n, now
    if evaluating and (step % settings.eval_every == 0 or step == settings.steps):
      run_eval(step)
    if step == settings.steps or (settings.checkpoint_every > 0 and step % settings.checkpoint_every == 0):
      for i, ckpt in enumerate(ckpts):
        ckpt.maybe_save(step, take(stacked, i), force=(step == settings.steps))
    if stop_at_step is not None and step >= stop_at_step:
      break
  progress.close()
  summaries = []
  for i, (b, ckpt, writer, workdir) in enumerate(zip(builts, ckpts, writers, workdirs)):
    ckpt.close()
    writer.close()
    records = read_metrics(workdir)
    plot_curves(records, os.path.join(workdir, "curves.png"), b.pipeline.plot_panels)
    summaries.append({"state": take(stacked, i), "train": last[i], "evals": evals[i],
                      "wall_s": time.perf_counter() - t0, "records": records})
  return summaries


def run_seeds(configs: Sequence, workdirs: Sequence[str], stop_at_step: int | None = None) -> list[dict]:
  """Trains the seeds of one config (configs equal but for seed and workdir) as one vmapped
  program, SFT warm-ups included (vmapped the same way first when they have to run), and
  writes each seed's ordinary run directory. Returns each pipeline's run summary."""
  from rewardlab.pipelines import BUILDERS
  from rewardlab.pipelines.sft import warmup_config
  from rewardlab.sweep.runner import VMAP_PIPELINES, _seedless_key, checkpoint_steps, is_finished
  pipeline = configs[0].pipeline
  if pipeline not in VMAP_PIPELINES:
    raise SweepError(f"vmapped seeds: pipeline {pipeline!r} is not supported; supported: {list(VMAP_PIPELINES)}")
  if len({_seedless_key(c) for c in configs}) > 1:
    raise SweepError("vmapped seeds: the configs differ in more than seed and workdir")
  warm = [warmup_config(c) for c in configs]
  if warm[0] is not None:
    dirs = [os.path.join(w, "sft_warmup") for w in workdirs]
    todo = [(c, d) for c, d in zip(warm, dirs) if not is_finished(d, c.train.steps)]
    if len(todo) > 1 and len({tuple(checkpoint_steps(d)[-1:]) for _, d in todo}) == 1:
      run_seeds([c for c, _ in todo], [d for _, d in todo])
    # otherwise (one left, or different resume points) each build runs its own warm-up
  builts = [BUILDERS[pipeline](c, w) for c, w in zip(configs, workdirs)]
  summaries = fit_seeds(builts, workdirs, stop_at_step)
  return [b.finish(s) for b, s in zip(builts, summaries)]
