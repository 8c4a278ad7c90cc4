"""Evaluation: exact-match accuracy (and, later, RM reports, pass@k, best-of-n)."""
from rewardlab.eval.accuracy import exact_match

__all__ = ["exact_match"]
