"""Pure objectives: functions of arrays returning (loss, metrics); one registry per family."""
from rewardlab.objectives import policy_gradient, preference, reward_model, sft

OBJECTIVES = {**sft.OBJECTIVES, **policy_gradient.OBJECTIVES, **preference.OBJECTIVES,
              **reward_model.OBJECTIVES}
# which objectives each pipeline accepts
PIPELINE_OBJECTIVES = {"sft": sorted(sft.OBJECTIVES), "rl": sorted(policy_gradient.PG_OBJECTIVES),
                       "dpo": sorted(preference.PAIRED) + ["kto", "sppo", "tgdpo"],
                       "online_dpo": sorted(preference.PAIRED) + ["kto", "sppo"], "rm": sorted(reward_model.OBJECTIVES)}

__all__ = ["OBJECTIVES", "PIPELINE_OBJECTIVES"]
