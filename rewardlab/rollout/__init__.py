"""Rollouts for online RL: sample groups of completions from the policy, score them with the
configured rewards, and pack them (reference log-probs, advantages) as a `Rollout`."""
from rewardlab.rollout.collect import Groups, Rollout, RolloutCollector, RolloutSettings, select_groups
from rewardlab.rollout.rewards import REWARD_BUILDERS, Completions, RewardContext, build_rewards, score

__all__ = ["Groups", "Rollout", "RolloutCollector", "RolloutSettings", "select_groups", "REWARD_BUILDERS",
           "Completions", "RewardContext", "build_rewards", "score"]
