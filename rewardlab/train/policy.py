"""Building the trainable policy from config: the embedded default or a local HF folder
(`config.model.hf_path`), optionally with LoRA adapters (`config.lora.rank > 0`), plus the
matching tokenizer; and exporting the (merged) result as a HF folder."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
from flax import nnx

from rewardlab.data import load_tokenizer
from rewardlab.models import ModelConfig, Transformer
from rewardlab.models import hf as hf_io
from rewardlab.models.lora import apply_lora, init_lora, lora_specs
from rewardlab.sharding import LOGICAL_RULES, named
from rewardlab.train.state import init_params


@dataclasses.dataclass
class Policy:
  arch: str                      # HF architecture used for export ("llama", "qwen2", ...)
  model_cfg: ModelConfig
  graphdef: Any
  params: Any                    # what the optimizer trains (full params, or LoRA adapters)
  frozen: Any                    # None, or the frozen base weights under LoRA
  merge: Callable | None         # (params, frozen) -> full params; None without LoRA
  tokenizer: Any

  def full_params(self, params=None, frozen=None):
    params = self.params if params is None else params
    frozen = self.frozen if frozen is None else frozen
    return params if self.merge is None else self.merge(params, frozen)


def model_fields(model_section) -> dict:
  """config.model minus the fields that are not ModelConfig's (hf_path)."""
  return {k: v for k, v in dict(model_section).items() if k != "hf_path"}


def infer_arch(cfg: ModelConfig) -> str:
  if cfg.norm_offset == 1.0 and cfg.embed_scale:
    return "gemma"
  if cfg.qk_norm:
    return "qwen3"
  if cfg.qkv_bias:
    return "qwen2"
  return "llama"


def resolve_model_config(config) -> ModelConfig:
  """The ModelConfig a run will use (from the HF folder's config.json when hf_path is set)."""
  if config.model.get("hf_path"):
    keep = {k: v for k, v in model_fields(config.model).items()
            if k in ("dtype", "param_dtype", "remat")}
    return hf_io.model_config_from_hf(hf_io.read_hf_config(config.model.hf_path), **keep)[1]
  return ModelConfig.from_mapping(model_fields(config.model))


def build_policy(config, mesh, rules=LOGICAL_RULES) -> Policy:
  hf_path = config.model.get("hf_path", "")
  if hf_path:
    keep = {k: v for k, v in model_fields(config.model).items()
            if k in ("dtype", "param_dtype", "remat")}
    arch, model_cfg, graphdef, params = hf_io.load_hf_model(hf_path, mesh, rules, **keep)
  else:
    model_cfg = ModelConfig.from_mapping(model_fields(config.model))
    arch = infer_arch(model_cfg)
    graphdef, params = init_params(lambda: Transformer(model_cfg, rngs=nnx.Rngs(config.seed)), mesh, rules)
  tokenizer = load_tokenizer(config.get("tokenizer_path") or hf_path or None)
  lora = config.get("lora")
  if lora is None or lora.rank <= 0:
    return Policy(arch, model_cfg, graphdef, params, None, None, tokenizer)
  adapters = init_adapters(lora, params, mesh, config.seed)
  merge = functools.partial(_merge_lora, scale=lora.alpha / lora.rank)
  return Policy(arch, model_cfg, graphdef, adapters, params, merge, tokenizer)


def init_adapters(lora, params, mesh, seed: int):
  """LoRA adapters (config.lora: targets, rank) for `params`, sharded like their kernels."""
  base_specs = jax.tree.map(lambda x: x.sharding.spec, params)
  adapters = jax.jit(functools.partial(init_lora, targets=tuple(lora.targets), rank=lora.rank))(
      params, rng=jax.random.PRNGKey(seed + 1))
  return jax.device_put(adapters, named(mesh, lora_specs(base_specs, adapters)))


def _merge_lora(adapters, base, scale):
  return apply_lora(base, adapters, scale)


def export_policy(policy: Policy, params, frozen, folder: str) -> str:
  """Writes the merged weights as a HF folder loadable by transformers."""
  full = jax.jit(lambda p, f: policy.full_params(p, f))(params, frozen)
  return hf_io.save_hf_model(folder, policy.arch, policy.model_cfg, full)
