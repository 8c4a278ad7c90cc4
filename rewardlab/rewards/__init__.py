"""Reward functions used online (verifiers, format, length; reward models and self-rewards
plug in here as further REWARDS entries)."""
from rewardlab.rewards.verifiers import REWARDS, answer_format, combine, exact_answer, length_penalty

__all__ = ["REWARDS", "answer_format", "combine", "exact_answer", "length_penalty"]
