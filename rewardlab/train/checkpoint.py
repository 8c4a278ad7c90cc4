"""Orbax checkpointing of the TrainState, restored straight into its shardings.

A checkpoint counts only once orbax has committed it (it writes into a temporary directory
and renames it when complete, so a run killed mid-save leaves the previous one latest).
Restore falls back past checkpoints it cannot read: each is named in one line, moved aside
to `<checkpoints>.broken/` (never deleted) and the next older one is tried.

Several processes: every one calls save and restore (orbax writes each process's shards and
process 0 commits); whether a checkpoint restored is agreed by all of them, and only
process 0 moves a broken one, the others waiting at a barrier.
"""
from __future__ import annotations

import os
import shutil
import sys
import time

import orbax.checkpoint as ocp

from rewardlab.distributed import all_processes_ok, barrier, is_main
from rewardlab.errors import CheckpointError
from rewardlab.train.state import abstract_of


def _reason(e: BaseException) -> str:
  """One line of an exception (TensorStore errors run to dozens of lines; their cause, e.g.
  "File too large", comes last)."""
  lines = [ln.strip() for ln in str(e).splitlines() if ln.strip()]
  text = lines[0] if lines else ""
  return f"{type(e).__name__}: {text if len(text) <= 300 else text[:120] + ' ... ' + text[-170:]}"


class Checkpointer:
  """Saves every `every` steps (and on demand) under `<directory>/<step>`."""

  def __init__(self, directory: str, every: int, max_to_keep: int = 3,
               log=lambda line: print(line, file=sys.stderr, flush=True)):
    self.every, self.log = every, log
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def due(self, step: int) -> bool:
    """Whether `step` is on the save cadence."""
    return self.every > 0 and step % self.every == 0

  def maybe_save(self, step: int, state, force: bool = False) -> bool:
    if not (force or self.due(step)):
      return False
    if step in self.manager.all_steps():
      return False
    try:   # saves are asynchronous: an earlier save's failure surfaces here too
      self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    except Exception as e:
      raise self._save_error(e) from e
    return True

  def _save_error(self, e: BaseException) -> CheckpointError:
    self.manager.reload()
    return CheckpointError(f"saving a checkpoint under {self.directory} failed ({_reason(e)}); the latest "
                           f"intact checkpoint is step {self.latest_step()}")

  def restore(self, like, step: int | None = None):
    """Restores `step` (default latest) into the structure/shardings of the live `like`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.directory}")
    if step not in self.manager.all_steps():
      raise FileNotFoundError(f"no checkpoint {step} under {self.directory}; there are {self.manager.all_steps()}")
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_of(like)))

  def restore_latest_intact(self, like):
    """(state, step) of the newest checkpoint that restores, or (like, None) when none does.
    Each unreadable one is reported in one line and moved aside, newest first."""
    for step in sorted(self.manager.all_steps(), reverse=True):
      error = None
      try:
        state = self.restore(like, step)
      except Exception as e:  # orbax / TensorStore raise many kinds; each means "cannot use it"
        error = e
      if all_processes_ok(error is None):
        return state, step
      moved = self.set_aside(step)
      if error is not None or is_main():
        self.log(f"checkpoint {self.directory}/{step} is unreadable "
                 f"({_reason(error) if error else 'on another process'}); moved to {moved}; "
                 "falling back to the previous one")
    return like, None

  def set_aside(self, step: int) -> str:
    """Moves checkpoint `step` to `<directory>.broken/<step>-<time>` and forgets it."""
    target = os.path.join(self.directory + ".broken", f"{step}-{time.strftime('%Y%m%d-%H%M%S')}")
    if is_main():   # the others learn the path from the log line of process 0
      os.makedirs(os.path.dirname(target), exist_ok=True)
      shutil.move(os.path.join(self.directory, str(step)), target)
    barrier(f"rewardlab_set_aside_{step}")
    self.manager.reload()
    return target

  def close(self):
    """Waits for the last save; CheckpointError if it failed."""
    try:
      self.manager.wait_until_finished()
    except Exception as e:
      raise self._save_error(e) from e
    finally:
      self.manager.close()
