"""Numerics shared by models, objectives and loops (imports nothing of models/train)."""
from rewardlab.ops.kl import kl_estimate
from rewardlab.ops.logprobs import (chunked_token_logprobs, token_entropy_from_logits,
                                    token_logprobs_from_logits)
from rewardlab.ops.masked import AGGREGATIONS, aggregate, aggregation_weight, masked_mean, masked_sum, masked_var

__all__ = ["AGGREGATIONS", "aggregate", "aggregation_weight", "kl_estimate", "chunked_token_logprobs", "token_entropy_from_logits",
           "token_logprobs_from_logits", "masked_mean", "masked_sum", "masked_var"]
