"""Flax NNX models: the decoder-only policy, reward and value heads (`models.heads`,
`models.reward_model`), LoRA, and HF safetensors import/export (`models.hf`)."""
from rewardlab.models.config import FAMILIES, ModelConfig
from rewardlab.models.transformer import (KVCache, ModelOutput, SharedPrefix, Transformer,
                                          grow_cache, init_cache, positions_from_valid)

__all__ = ["FAMILIES", "ModelConfig", "KVCache", "ModelOutput", "SharedPrefix", "Transformer", "grow_cache",
           "init_cache", "positions_from_valid"]
