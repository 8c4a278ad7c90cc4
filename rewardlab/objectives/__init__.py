"""Pure objectives: functions of arrays returning (loss, metrics); one registry per family."""
from rewardlab.objectives import sft

OBJECTIVES = {**sft.OBJECTIVES}

__all__ = ["OBJECTIVES"]
