"""Generation: the naive reference decoder (and the KV-cache sampler)."""
from rewardlab.sampling.naive import make_naive_generate

__all__ = ["make_naive_generate"]
