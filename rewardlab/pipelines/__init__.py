"""Pipelines: one short module per training regime, each a `run(config, workdir)` that builds
its pieces from the config and hands them to the shared loop (`rewardlab.train.loop.fit`).
`PIPELINES` maps config.pipeline to that function."""
from rewardlab.pipelines import online_preference, preference, reward_model, rl, sft

PIPELINES = {"sft": sft.run, "rl": rl.run, "dpo": preference.run, "rm": reward_model.run,
             "online_dpo": online_preference.run}

__all__ = ["PIPELINES"]
