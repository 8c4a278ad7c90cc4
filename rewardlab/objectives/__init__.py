"""Pure objectives: functions of arrays returning (loss, metrics); one registry per family."""
from rewardlab.objectives import policy_gradient, preference, sft

OBJECTIVES = {**sft.OBJECTIVES, **policy_gradient.OBJECTIVES, **preference.OBJECTIVES}
# which objectives each pipeline accepts
PIPELINE_OBJECTIVES = {"sft": sorted(sft.OBJECTIVES), "rl": sorted(policy_gradient.PG_OBJECTIVES),
                       "dpo": sorted(preference.PAIRED)}

__all__ = ["OBJECTIVES", "PIPELINE_OBJECTIVES"]
