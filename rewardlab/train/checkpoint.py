"""Orbax checkpointing of the TrainState, restored straight into its shardings."""
from __future__ import annotations

import os

import orbax.checkpoint as ocp

from rewardlab.train.state import abstract_of


class Checkpointer:
  """Saves every `every` steps (and on demand) under `<workdir>/checkpoints/<step>`."""

  def __init__(self, directory: str, every: int, max_to_keep: int = 3):
    self.every = every
    self.manager = ocp.CheckpointManager(
        os.path.abspath(directory),
        options=ocp.CheckpointManagerOptions(max_to_keep=max_to_keep, create=True))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def maybe_save(self, step: int, state, force: bool = False) -> bool:
    if not force and (self.every <= 0 or step % self.every):
      return False
    if step in self.manager.all_steps():
      return False
    self.manager.save(step, args=ocp.args.StandardSave(state), force=True)
    return True

  def restore(self, like, step: int | None = None):
    """Restores `step` (default latest) into the structure/shardings of the live `like`."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint under {self.manager.directory}")
    return self.manager.restore(step, args=ocp.args.StandardRestore(abstract_of(like)))

  def close(self):
    self.manager.wait_until_finished()
    self.manager.close()
