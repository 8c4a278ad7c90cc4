"""Evaluation: exact-match accuracy (and, later, RM reports, pass@k, best-of-n)."""
from rewardlab.eval.accuracy import exact_match
from rewardlab.eval.passk import pass_at_k

__all__ = ["exact_match", "pass_at_k"]
