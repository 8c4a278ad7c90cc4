"""Training core: TrainState, update-step builder, loops, checkpointing, metrics;
`PIPELINES` maps config.pipeline to the function that runs it."""
from rewardlab.train import online_preference, preference, reward_model, rl, sft
from rewardlab.train.config import ConfigError, base_config, validate

PIPELINES = {"sft": sft.run, "rl": rl.run, "dpo": preference.run, "rm": reward_model.run,
             "online_dpo": online_preference.run}

__all__ = ["PIPELINES", "ConfigError", "base_config", "validate"]
