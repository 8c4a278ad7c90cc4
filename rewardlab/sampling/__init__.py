"""Generation: the jitted KV-cache sampler and the naive reference decoder."""
from rewardlab.sampling.naive import make_naive_generate
from rewardlab.sampling.sampler import (SampleOutput, Sampler, SamplingParams, make_sample_fn,
                                        process_logits)

__all__ = ["make_naive_generate", "SampleOutput", "Sampler", "SamplingParams", "make_sample_fn",
           "process_logits"]
