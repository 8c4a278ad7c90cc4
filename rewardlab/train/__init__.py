"""Training core every pipeline shares: TrainState, the update step, the loop, checkpoints,
optimizers, metrics, the policy builder and config validation. The pipelines themselves
live in `rewardlab.pipelines`."""
from rewardlab.train.config import ConfigError, base_config, validate

__all__ = ["ConfigError", "base_config", "validate"]
