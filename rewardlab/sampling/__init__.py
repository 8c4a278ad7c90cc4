"""Generation: the jitted KV-cache sampler and the naive reference decoder."""
from rewardlab.sampling.naive import make_naive_generate
from rewardlab.sampling.sampler import (DecodeCarry, SampleOutput, Sampler, SamplingParams, cache_offset,
                                        make_decode_fns, make_sample_fn, process_logits)

__all__ = ["make_naive_generate", "DecodeCarry", "SampleOutput", "Sampler", "SamplingParams", "cache_offset",
           "make_decode_fns", "make_sample_fn", "process_logits"]
