"""Training core: TrainState, mesh + sharding rules, update-step builder, loops,
checkpointing, metrics; `PIPELINES` maps config.pipeline to the function that runs it."""
from rewardlab.train import sft
from rewardlab.train.config import ConfigError, base_config, validate

PIPELINES = {"sft": sft.run}

__all__ = ["PIPELINES", "ConfigError", "base_config", "validate"]
