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

Each seed is an ordinary `train.loop.LoopRun` (resume, metrics, evaluation cadence,
checkpoints, the non-finite guard are the loop's own); only the update is shared.
"""
from __future__ import annotations

import os
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P

from rewardlab.pipelines.common import Built
from rewardlab.sharding import BATCH_AXES
from rewardlab.sweep.spec import SweepError
from rewardlab.train.loop import LoopRun


class _Stacked:
  """The group's stacked state [N, ...] and the seeds' rows of it, each cut once per change."""

  def __init__(self, states):
    self._stack = jax.jit(lambda *trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees))
    self._take = jax.jit(lambda tree, i: jax.tree.map(lambda x: x[i], tree))
    self.set(self._stack(*states))

  def set(self, stacked):
    self.value, self._rows = stacked, {}

  def row(self, i: int):
    if i not in self._rows:
      self._rows[i] = self._take(self.value, i)
    return self._rows[i]

  def restack(self, states):
    self.set(self._stack(*states))


class _SeedRun(LoopRun):
  """Seed i of a vmapped group: its state is row i of the group's stacked state."""

  def __init__(self, built: Built, workdir: str, i: int):
    super().__init__(built.pipeline, built.mesh, built.settings, workdir, show_progress=(i == 0))
    self.i, self.group = i, None

  def current_state(self):
    return self.group.row(self.i)


class _SeedState:
  """Seed i's state for its source, cut on first use: offline sources never look at it."""

  def __init__(self, group: _Stacked, i: int):
    self._group, self._i = group, i

  def __getattr__(self, name):
    return getattr(self._group.row(self._i), name)


def _check_compatible(builts: Sequence[Built]):
  first = builts[0]
  for i, b in enumerate(builts[1:], 1):
    if b.settings != first.settings or b.pipeline.updates_per_step != first.pipeline.updates_per_step:
      raise SweepError(f"vmapped seeds: seed {i}'s loop settings differ from seed 0's "
                       f"({b.settings} vs {first.settings})")
    if jax.tree.structure(b.pipeline.state) != jax.tree.structure(first.pipeline.state):
      raise SweepError(f"vmapped seeds: seed {i}'s TrainState has another structure than seed 0's")


def _step_inputs(runs, group: _Stacked, step: int):
  """Every seed's source inputs of `step` (restacking the state if a source changed it)."""
  outs = [r.step_inputs(step, _SeedState(group, i)) for i, r in enumerate(runs)]
  if any(inputs is None for _, inputs in outs):
    raise SweepError(f"vmapped seeds: step {step}: a seed's data was not finite; vmapped seeds cannot skip "
                     "it (run the seeds one by one)")
  if any(not isinstance(state, _SeedState) for state, _ in outs):   # a source changed its state
    group.restack([s if not isinstance(s, _SeedState) else group.row(i) for i, (s, _) in enumerate(outs)])
  inputs = [inp for _, inp in outs]
  if len({len(inp.batches) for inp in inputs}) > 1:
    raise SweepError(f"vmapped seeds: step {step}: the seeds' sources returned "
                     f"{[len(inp.batches) for inp in inputs]} batches; they must agree")
  return inputs


def fit_seeds(builts: Sequence[Built], workdirs: Sequence[str], stop_at_step: int | None = None) -> list[dict]:
  """`train.loop.fit` for N seeds of one pipeline at once: each seed is a `LoopRun` (its own
  resume, metrics, evaluation, checkpoints, non-finite guard), and one vmapped update step
  advances their stacked states. builts[i] must come from the same config but for its seed and
  workdir (the update step traced from builts[0] serves all). Returns one fit-style summary
  per seed, before each pipeline's `finish`."""
  _check_compatible(builts)
  runs = [_SeedRun(b, w, i) for i, (b, w) in enumerate(zip(builts, workdirs))]
  if len({r.start for r in runs}) > 1:
    raise SweepError(f"vmapped seeds must resume from the same step; checkpoints at "
                     f"{dict(zip(workdirs, [r.start for r in runs]))}")
  group = _Stacked([r.state for r in runs])
  for r in runs:
    r.group, r.state = group, None      # the stacked state is the only copy
  vstep = jax.jit(jax.vmap(runs[0].make_step_fn(donate=False)), donate_argnums=(0,))
  seeds_batch = NamedSharding(builts[0].mesh, P(None, BATCH_AXES))   # [N, B, ...]: B over the data axes
  try:
    for r in runs:
      r.evaluate_at_start()
    for step in range(runs[0].start + 1, builts[0].settings.steps + 1):
      inputs = _step_inputs(runs, group, step)
      per_update = []
      for j in range(len(inputs[0].batches)):
        batch = jax.tree.map(lambda *xs: np.stack(xs), *[inp.batches[j] for inp in inputs])
        stacked, metrics = vstep(group.value, jax.device_put(batch, seeds_batch))
        group.set(stacked)
        per_update.append(metrics)
      per_update = jax.device_get(per_update)
      done = [r.end_step(step, inp, [{k: v[i] for k, v in m.items()} for m in per_update])
              for i, (r, inp) in enumerate(zip(runs, inputs))]
      if all(done) or (stop_at_step is not None and step >= stop_at_step):
        break
  except BaseException:
    for r in runs:
      r.close(quiet=True)
    raise
  for r in runs:
    r.close()
  return [r.summary() for r in runs]


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
