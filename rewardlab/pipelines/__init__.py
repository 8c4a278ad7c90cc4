"""Pipelines: one short module per training regime, each a `run(config, workdir)` that builds
its pieces from the config (`build(config, workdir) -> Built`) and hands them to the shared
loop (`rewardlab.train.loop.fit`). `PIPELINES` maps config.pipeline to `run`, `BUILDERS` to
`build`."""
from rewardlab.pipelines import online_preference, preference, reward_model, rl, sft

PIPELINES = {"sft": sft.run, "rl": rl.run, "dpo": preference.run, "rm": reward_model.run,
             "online_dpo": online_preference.run}
BUILDERS = {"sft": sft.build, "rl": rl.build, "dpo": preference.build, "rm": reward_model.build,
            "online_dpo": online_preference.build}

__all__ = ["PIPELINES", "BUILDERS"]
