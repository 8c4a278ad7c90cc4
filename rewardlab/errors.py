"""Errors a run stops with, by kind, so the command line can say what happened in one line."""


class NonFiniteError(RuntimeError):
  """A loss, gradient norm or reward is NaN / inf: the update that would use it is not applied."""


class CheckpointError(RuntimeError):
  """A checkpoint could not be written (disk full, permissions, ...); earlier ones are intact."""
