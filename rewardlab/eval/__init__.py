"""Evaluation: exact-match accuracy, unbiased pass@k, the reward-model report
(`eval.reward_model`), best-of-n selection (`eval.best_of_n`), plots and result tables."""
from rewardlab.eval.accuracy import exact_match
from rewardlab.eval.passk import pass_at_k

__all__ = ["exact_match", "pass_at_k"]
