"""Building the trainable policy: the embedded default or a local HF folder
(`config.model.hf_path`), optionally with LoRA adapters (`config.lora.rank > 0`), plus the
matching tokenizer; and exporting the (merged) result as a HF folder.

Pipelines read the config once into a `PolicySpec` and build from that."""
from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import jax
from flax import nnx

from rewardlab.data import load_tokenizer
from rewardlab.distributed import is_main, multi_process, to_host
from rewardlab.models import ModelConfig, Transformer
from rewardlab.models import hf as hf_io
from rewardlab.models import presets
from rewardlab.models.lora import apply_lora, init_lora, lora_specs
from rewardlab.sharding import LOGICAL_RULES, named
from rewardlab.train.state import init_params

# model fields a HF folder's config.json does not decide (precision, rematerialisation,
# scanned layers, attention kernel): one list, in models.hf
RUNTIME_FIELDS = hf_io.RUNTIME_FIELDS


@dataclasses.dataclass(frozen=True)
class LoraSpec:
  """LoRA adapters (config.lora): rank 0 trains the full weights."""
  rank: int = 0
  alpha: float = 16.0
  targets: tuple[str, ...] = ("q", "v")

  @classmethod
  def from_config(cls, lora) -> "LoraSpec":
    return cls() if lora is None else cls(lora.rank, lora.alpha, tuple(lora.targets))

  @property
  def scale(self) -> float:
    return self.alpha / self.rank


@dataclasses.dataclass(frozen=True)
class PolicySpec:
  """Which policy a run builds: the ModelConfig fields a config set (`model`), over a
  published preset's or the embedded default's; or a local HF folder whose config.json gives
  the architecture (`model` then only sets RUNTIME_FIELDS; with a preset too, the folder must
  match it). Plus its tokenizer, LoRA and the init seed."""
  model: Mapping[str, Any]
  hf_path: str = ""
  preset: str = ""
  tokenizer_path: str = ""          # "" = the HF folder's tokenizer, else the byte tokenizer
  lora: LoraSpec = LoraSpec()
  seed: int = 0

  @classmethod
  def from_config(cls, config) -> "PolicySpec":
    fields = {k: v for k, v in dict(config.model).items() if k not in ("hf_path", "preset") and v is not None}
    return cls(fields, config.model.get("hf_path", ""), config.model.get("preset", ""),
               config.get("tokenizer_path", ""), LoraSpec.from_config(config.get("lora")), config.seed)

  def runtime_fields(self) -> dict:
    return {k: v for k, v in self.model.items() if k in RUNTIME_FIELDS}

  def load_tokenizer(self):
    return load_tokenizer(self.tokenizer_path or self.hf_path or None)


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


def resolve_model_config(spec: PolicySpec) -> ModelConfig:
  """The ModelConfig a run will use (from the HF folder's config.json when hf_path is set)."""
  if spec.hf_path:
    if spec.preset:
      presets.check_hf_matches_preset(spec.preset, spec.hf_path)
    return hf_io.model_config_from_hf(hf_io.read_hf_config(spec.hf_path), **spec.runtime_fields())[1]
  base = presets.model_config_from_preset(spec.preset) if spec.preset else presets.EMBEDDED
  return ModelConfig.from_mapping(dict(dataclasses.asdict(base) if spec.preset else base, **spec.model))


def load_trunk(spec: PolicySpec, mesh, rules=LOGICAL_RULES):
  """-> (arch, ModelConfig, graphdef, params placed on the mesh): the HF folder's weights, or
  a fresh init."""
  if spec.hf_path:
    if spec.preset:
      presets.check_hf_matches_preset(spec.preset, spec.hf_path)
    return hf_io.load_hf_model(spec.hf_path, mesh, rules, **spec.runtime_fields())
  model_cfg = resolve_model_config(spec)
  graphdef, params = init_params(lambda: Transformer(model_cfg, rngs=nnx.Rngs(spec.seed)), mesh, rules)
  return hf_io.infer_hf_arch(model_cfg), model_cfg, graphdef, params


def build_policy(spec: PolicySpec, mesh, rules=LOGICAL_RULES) -> Policy:
  arch, model_cfg, graphdef, params = load_trunk(spec, mesh, rules)
  tokenizer = spec.load_tokenizer()
  if spec.lora.rank <= 0:
    return Policy(arch, model_cfg, graphdef, params, None, None, tokenizer)
  adapters = init_adapters(spec.lora, params, mesh, spec.seed)
  merge = functools.partial(_merge_lora, scale=spec.lora.scale)
  return Policy(arch, model_cfg, graphdef, adapters, params, merge, tokenizer)


def init_adapters(lora: LoraSpec, params, mesh, seed: int):
  """LoRA adapters (targets, rank) for `params`, sharded like their kernels."""
  base_specs = jax.tree.map(lambda x: x.sharding.spec, params)
  adapters = jax.jit(functools.partial(init_lora, targets=lora.targets, rank=lora.rank))(
      params, rng=jax.random.PRNGKey(seed + 1))
  return jax.device_put(adapters, named(mesh, lora_specs(base_specs, adapters)))


def _merge_lora(adapters, base, scale):
  return apply_lora(base, adapters, scale)


def export_policy(policy: Policy, params, frozen, folder: str) -> str:
  """Writes the merged weights as a HF folder loadable by transformers (several processes:
  each calls this, the weights are gathered, process 0 writes)."""
  full = jax.jit(lambda p, f: policy.full_params(p, f))(params, frozen)
  if multi_process():
    full = to_host(full)
    if not is_main():
      return folder
  return hf_io.save_hf_model(folder, policy.arch, policy.model_cfg, full)
