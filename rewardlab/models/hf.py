"""Hugging Face checkpoints: local `config.json` + `*.safetensors` folders in and out.

Supported architectures: Llama, Qwen2, Qwen3, Gemma, Gemma 2 and Gemma 3 text models
(causal LM, and the same trunks as `*ForSequenceClassification`, whose `score` matrix
becomes a `ScalarHead`).

Tensors are read with the `safetensors` library (lazy `safe_open`, one file or a sharded
`model.safetensors.index.json`): each device's block of a parameter is read on its own
(`get_slice`) straight into the mesh's sharding (`jax.make_array_from_callback`), so a
process reads only the rows its devices hold. The importer uses every tensor of the
checkpoint or refuses, naming each tensor it would drop, could not fill, or whose shape
does not fit. Export writes the same folder layout, so
`transformers.AutoModelForCausalLM.from_pretrained(folder)` loads what we trained.

Parameter names are one table (`_param_map`): per-layer entries come from `_layer_table`
expanded by `_layer_path`. With scanned layers (`ModelConfig.scan_layers`) layer i of a
parameter is row i of one stacked [L, ...] array: each device's block of it is read as the
rows of the L checkpoint tensors its slice covers, and export writes row i as layer i.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from typing import Any, Iterator

import jax
import ml_dtypes  # noqa: F401  registers numpy's "bfloat16" name, which safetensors' numpy API uses
import numpy as np
from flax import nnx
from safetensors import safe_open
from safetensors.numpy import save_file

from rewardlab.models.config import FAMILIES, ModelConfig
from rewardlab.models.heads import ScalarHead
from rewardlab.models.paths import get_path, set_path
from rewardlab.models.transformer import Transformer, rope_inv_freqs
from rewardlab.sharding import LOGICAL_RULES, named, param_specs

# HF model_type -> (our family, HF causal-LM class, transformers' default tie_word_embeddings)
_ARCHS = {
    "llama": ("llama", "LlamaForCausalLM", False),
    "qwen2": ("qwen2", "Qwen2ForCausalLM", False),
    "qwen3": ("qwen3", "Qwen3ForCausalLM", False),
    "gemma": ("gemma", "GemmaForCausalLM", True),
    "gemma2": ("gemma2", "Gemma2ForCausalLM", True),
    "gemma3_text": ("gemma3", "Gemma3ForCausalLM", True),
}
_SLIDING_ARCHS = ("gemma2", "gemma3_text")
SUPPORTED = tuple(_ARCHS)
_ACTIVATIONS = {"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_tanh": "gelu_tanh",
                "gelu": "gelu_tanh"}  # Gemma 1 configs say "gelu"; transformers runs the tanh form
_NP_DTYPES = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16, "float16": np.float16}
_MAX_LISTED = 12  # tensor names listed in one error before "... and N more"


def _names(names) -> str:
  names = sorted(names)
  more = f" ... and {len(names) - _MAX_LISTED} more" if len(names) > _MAX_LISTED else ""
  return ", ".join(names[:_MAX_LISTED]) + more


# ----------------------------------------------------------------------------- safetensors
class SafetensorsFolder:
  """Lazy read access to every tensor of a folder: one `*.safetensors` file, several, or a
  sharded `model.safetensors.index.json`. Files are opened with `safe_open` on first use
  (memory-mapped; nothing is read until a slice is asked for). Use as a context manager
  or call `close()`."""

  def __init__(self, folder: str):
    self.folder = folder
    index_path = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index_path):
      with open(index_path) as f:
        weight_map = json.load(f).get("weight_map")
      if not isinstance(weight_map, dict):
        raise ValueError(f"{index_path}: no 'weight_map' object")
      files = sorted(set(weight_map.values()))
      absent = [n for n in files if not os.path.exists(os.path.join(folder, n))]
      if absent:
        raise FileNotFoundError(f"{index_path}: shard file(s) listed in weight_map are missing: {absent}")
    else:
      weight_map = None
      files = sorted(n for n in os.listdir(folder) if n.endswith(".safetensors"))
      if not files:
        other = sorted(n for n in os.listdir(folder) if n.endswith((".bin", ".pt", ".pth", ".ckpt")))
        hint = (f" (found {other}: torch pickles are not read; re-save with transformers' "
                "save_pretrained, which writes safetensors)") if other else ""
        raise FileNotFoundError(f"{folder}: no *.safetensors files and no model.safetensors.index.json{hint}")
    self._open: dict[str, Any] = {}
    self._where: dict[str, str] = {}
    for name in files:
      for key in self._file(name).keys():
        if key in self._where:
          raise ValueError(f"{folder}: tensor {key!r} is in both {self._where[key]} and {name}")
        self._where[key] = name
    if weight_map is not None:
      wrong = sorted(k for k, v in weight_map.items() if self._where.get(k) != v)
      if wrong:
        raise ValueError(f"{index_path}: weight_map names tensors that are not in the file it gives: "
                         f"{_names(wrong)}")

  def _file(self, name: str):
    if name not in self._open:
      self._open[name] = safe_open(os.path.join(self.folder, name), framework="numpy")
    return self._open[name]

  def keys(self):
    return self._where.keys()

  def __contains__(self, key):
    return key in self._where

  def _slice(self, key):
    if key not in self._where:
      raise KeyError(f"{self.folder}: tensor {key!r} not found")
    return self._file(self._where[key]).get_slice(key)

  def shape(self, key) -> tuple[int, ...]:
    return tuple(self._slice(key).get_shape())

  def dtype(self, key) -> str:
    """The stored dtype name ("F32", "BF16", ...)."""
    return self._slice(key).get_dtype()

  def read(self, key, index: tuple = ()) -> np.ndarray:
    """The block `index` (a tuple of slices) of one tensor, reading only those bytes."""
    sl = self._slice(key)
    return sl[index] if index else sl[tuple(slice(None) for _ in sl.get_shape())]

  def get(self, key) -> np.ndarray:
    return self.read(key)

  def close(self):
    self._open.clear()  # safe_open handles unmap when dropped

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


# ----------------------------------------------------------------------------- config
def _rope_fields(hf: dict) -> dict:
  rp = hf.get("rope_parameters") or {}
  if "full_attention" in rp:  # per layer type (Gemma 3): the global layers' RoPE here
    rp = rp["full_attention"] or {}
  scaling = hf.get("rope_scaling") or rp
  theta = rp.get("rope_theta", hf.get("rope_theta", 10_000.0))
  kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default")) or "default"
  if rp.get("partial_rotary_factor", hf.get("partial_rotary_factor", 1.0)) != 1.0:
    raise ValueError("config.json: partial_rotary_factor != 1 (RoPE on part of each head) is not supported")
  out = {"rope_theta": float(theta)}
  if kind == "default":
    return out
  if kind == "linear":
    return dict(out, rope_scaling="linear", rope_factor=float(scaling["factor"]))
  if kind == "llama3":
    return dict(out, rope_scaling="llama3", rope_factor=float(scaling["factor"]),
                rope_low_freq_factor=float(scaling["low_freq_factor"]),
                rope_high_freq_factor=float(scaling["high_freq_factor"]),
                rope_original_max_len=int(scaling["original_max_position_embeddings"]))
  raise ValueError(f"config.json: rope scaling type {kind!r} is not supported; supported: default, linear, llama3")


def model_config_from_hf(hf: dict, **overrides) -> tuple[str, ModelConfig]:
  """Maps a HF config.json dict to (model_type, ModelConfig). Every switch comes from the
  config (as transformers reads it), never from which tensors happen to be present: the
  loaders then require the checkpoint to hold exactly the tensors that config implies.
  `overrides` replace ModelConfig fields (dtype, remat, ...). Layers are scanned unless
  `scan_layers=False` is passed: checkpoints are real models (0.5B and up), where a scanned
  stack keeps compile time flat in depth (the tiny embedded default stays unrolled, which
  is faster on CPU)."""
  model_type = hf.get("model_type")
  if model_type == "gemma3":
    raise ValueError("config.json: model_type 'gemma3' is the multimodal Gemma3ForConditionalGeneration; "
                     "only text models (model_type 'gemma3_text', Gemma3ForCausalLM) are supported")
  if model_type not in _ARCHS:
    raise ValueError(f"config.json: model_type {model_type!r} is not supported; supported: {SUPPORTED}")
  family, _, tie_default = _ARCHS[model_type]
  absent = [k for k in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                        "intermediate_size") if hf.get(k) is None]
  if absent:
    raise ValueError(f"config.json: missing field(s) {absent}")
  problems = []
  if hf.get("mlp_bias"):
    problems.append("mlp_bias=true (MLP biases) is not supported")
  if hf.get("use_sliding_window"):
    problems.append(f"use_sliding_window=true is not supported for {model_type}")
  local = sorted({t for t in hf.get("layer_types") or () if t != "full_attention"})
  if local and model_type not in _SLIDING_ARCHS and not hf.get("use_sliding_window"):
    problems.append(f"layer_types {local} are not supported for {model_type}")
  if hf.get("use_bidirectional_attention"):
    problems.append("use_bidirectional_attention=true (non-causal attention) is not supported")
  act = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
  if act not in _ACTIVATIONS:
    problems.append(f"hidden_act={act!r} is not supported; supported: {sorted(_ACTIVATIONS)}")
  if problems:
    raise ValueError("config.json: " + "; ".join(problems))
  heads = hf["num_attention_heads"]
  fields = dict(FAMILIES[family])
  if family != "qwen2":  # Qwen2 always has q/k/v biases and no output bias
    fields["qkv_bias"] = fields["o_bias"] = bool(hf.get("attention_bias", False))
  fields.update(
      vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
      n_heads=heads, n_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      mlp_dim=hf["intermediate_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
      norm_eps=hf.get("rms_norm_eps", 1e-6),
      tie_embeddings=bool(hf.get("tie_word_embeddings", tie_default)),
      activation=_ACTIVATIONS[act], **_rope_fields(hf))
  if model_type in _SLIDING_ARCHS:
    fields.update(_gemma2_fields(hf, model_type, fields["n_layers"]))
  fields["scan_layers"] = True
  fields.update(overrides)
  return model_type, ModelConfig.from_mapping(fields)


def _window_pattern(layer_types: list, where: str) -> int:
  """HF layer_types -> sliding_window_pattern k: layer i global iff (i + 1) % k == 0 (0: all local)."""
  unknown = sorted(set(layer_types) - {"sliding_attention", "full_attention"})
  if unknown:
    raise ValueError(f"{where}: layer_types {unknown} are not supported")
  is_global = [t == "full_attention" for t in layer_types]
  k = is_global.index(True) + 1 if any(is_global) else 0
  if is_global != [k > 0 and (i + 1) % k == 0 for i in range(len(layer_types))]:
    raise ValueError(f"{where}: layer_types {layer_types} are not every k-th layer global; only that "
                     "pattern (sliding_window_pattern) is supported")
  return k


# transformers' defaults for keys a Gemma 2 / 3 config.json may omit (an explicit null is "off")
_GEMMA_DEFAULTS = {
    "gemma2": dict(query_pre_attn_scalar=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
                   sliding_window=4096),
    "gemma3_text": dict(query_pre_attn_scalar=256, attn_logit_softcapping=None, final_logit_softcapping=None,
                        sliding_window=4096),
}


def _gemma2_fields(hf: dict, model_type: str, n_layers: int) -> dict:
  """Gemma 2 / 3 switches from config.json (values as transformers reads them)."""
  where = "config.json"
  gemma3 = model_type == "gemma3_text"
  hf = dict(_GEMMA_DEFAULTS[model_type], **hf)
  layer_types = hf.get("layer_types") or [
      "full_attention" if (i + 1) % hf.get("sliding_window_pattern", 6 if gemma3 else 2) == 0
      else "sliding_attention" for i in range(n_layers)]
  if len(layer_types) != n_layers:
    raise ValueError(f"{where}: {len(layer_types)} layer_types for num_hidden_layers={n_layers}")
  pattern = _window_pattern(list(layer_types), where)
  window = hf.get("sliding_window") or 0
  if "sliding_attention" in layer_types and not window:
    raise ValueError(f"{where}: layer_types has sliding_attention layers but sliding_window is {window!r}")
  if gemma3 and hf.get("attn_logit_softcapping"):
    raise ValueError(f"{where}: attn_logit_softcapping={hf['attn_logit_softcapping']} for gemma3_text: "
                     "transformers does not apply it to Gemma 3; refusing rather than guessing")
  out = dict(post_norms=True, query_pre_attn_scalar=float(hf.get("query_pre_attn_scalar") or 0.0),
             attn_logit_softcap=float(hf.get("attn_logit_softcapping") or 0.0),
             final_logit_softcap=float(hf.get("final_logit_softcapping") or 0.0),
             sliding_window=int(window) if "sliding_attention" in layer_types else 0,
             sliding_window_pattern=pattern if "sliding_attention" in layer_types else 0,
             rope_local_theta=0.0)
  if gemma3 and out["sliding_window"]:
    local = (hf.get("rope_parameters") or {}).get("sliding_attention")
    if local is not None:
      if (local.get("rope_type") or "default") != "default":
        raise ValueError(f"{where}: rope_parameters.sliding_attention rope_type "
                         f"{local.get('rope_type')!r}: local layers support default RoPE only")
      out["rope_local_theta"] = float(local.get("rope_theta", 10_000.0))
    else:
      out["rope_local_theta"] = float(hf.get("rope_local_base_freq", 10_000.0))
  return out


def model_config_to_hf(arch: str, cfg: ModelConfig, extra: dict | None = None) -> dict:
  """config.json for `arch` (a HF model_type) describing `cfg`."""
  rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": cfg.rope_scaling}
  if cfg.rope_scaling != "default":
    rope["factor"] = cfg.rope_factor
  if cfg.rope_scaling == "llama3":
    rope.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                original_max_position_embeddings=cfg.rope_original_max_len)
  hf = {
      "architectures": [_ARCHS[arch][1]], "model_type": arch, "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
      "head_dim": cfg.head_dim, "intermediate_size": cfg.mlp_dim,
      "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
      "tie_word_embeddings": cfg.tie_embeddings, "rope_theta": cfg.rope_theta,
      "rope_parameters": rope, "torch_dtype": cfg.param_dtype, "dtype": cfg.param_dtype,
      "hidden_act": "silu" if cfg.activation == "silu" else "gelu_pytorch_tanh",
  }
  if arch != "qwen2":
    hf["attention_bias"] = cfg.qkv_bias
  if arch.startswith("gemma"):
    hf["hidden_activation"] = hf["hidden_act"]
  if arch in _SLIDING_ARCHS:
    local = cfg.layer_is_local
    scalar = cfg.query_pre_attn_scalar or cfg.head_dim
    hf.update(query_pre_attn_scalar=int(scalar) if float(scalar).is_integer() else scalar,  # HF: int
              attn_logit_softcapping=cfg.attn_logit_softcap or None,
              final_logit_softcapping=cfg.final_logit_softcap or None,
              sliding_window=cfg.sliding_window or None,
              layer_types=["sliding_attention" if x else "full_attention" for x in local])
    if arch == "gemma3_text":
      local_rope = {"rope_type": "default", "rope_theta": cfg.rope_local_theta or cfg.rope_theta}
      hf["rope_parameters"] = {"full_attention": rope, "sliding_attention": local_rope}
      hf["rope_local_base_freq"] = local_rope["rope_theta"]
  hf.update(extra or {})
  return hf


# how we run a model, not what it is: a checkpoint's config.json never decides these
RUNTIME_FIELDS = ("dtype", "param_dtype", "remat", "scan_layers", "attention")


def _canonical(cfg: ModelConfig) -> ModelConfig:
  """cfg with each field that does not change what it computes set to one value (RoPE
  fields its kind ignores, window settings without local layers, defaults spelled out),
  for comparing two configs as models."""
  base = ModelConfig()
  unused = {"llama3": (), "linear": ("rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_len"),
            "default": ("rope_factor", "rope_low_freq_factor", "rope_high_freq_factor", "rope_original_max_len")}
  out = {f: getattr(base, f) for f in unused[cfg.rope_scaling]}
  local = cfg.layer_is_local
  if not any(local):
    out.update(sliding_window=0, sliding_window_pattern=0, rope_local_theta=0.0)
  else:
    out["sliding_window_pattern"] = 0 if all(local) else cfg.sliding_window_pattern
    if not cfg.rope_local_theta and cfg.rope_scaling == "default":
      out["rope_local_theta"] = cfg.rope_theta   # "as global" is this theta when global is unscaled
  out["query_pre_attn_scalar"] = float(cfg.query_pre_attn_scalar or cfg.head_dim)
  return dataclasses.replace(cfg, **out)


def config_differences(a: ModelConfig, b: ModelConfig) -> list[str]:
  """Fields (other than the RUNTIME_FIELDS) where a and b describe different models."""
  a, b = _canonical(a), _canonical(b)
  return [f"{f.name}: {getattr(a, f.name)!r} vs {getattr(b, f.name)!r}" for f in dataclasses.fields(ModelConfig)
          if f.name not in RUNTIME_FIELDS and getattr(a, f.name) != getattr(b, f.name)]


def _export_differences(arch: str, cfg: ModelConfig) -> list[str]:
  """What a config.json written for `arch` would lose of `cfg` (empty: exact)."""
  runtime = {k: getattr(cfg, k) for k in RUNTIME_FIELDS}
  return config_differences(cfg, model_config_from_hf(model_config_to_hf(arch, cfg), **runtime)[1])


def infer_hf_arch(cfg: ModelConfig) -> str:
  """The HF model_type whose config.json describes `cfg` exactly (for exporting a model that
  was not imported). Raises naming what no supported architecture can express."""
  for arch in SUPPORTED:
    if not _export_differences(arch, cfg):
      return arch
  closest = min(SUPPORTED, key=lambda a: len(_export_differences(a, cfg)))
  raise ValueError(f"no supported HF architecture {SUPPORTED} expresses this model config; closest "
                   f"{closest!r} would change {_export_differences(closest, cfg)} (ours vs as exported)")


# ----------------------------------------------------------------------------- names
@dataclasses.dataclass(frozen=True)
class _Map:
  """One checkpoint tensor <-> one of our parameters.

  ours = (hf.T if transpose else hf).reshape(shape); `groups` lists, for each axis of the
  (transposed) HF tensor, the run of our axes it splits into (e.g. q_proj's [h*hd, d] is
  ours [d, h, hd] with groups ((0,), (1, 2))). `layer`: None, or the row of a stacked
  [L, *shape] parameter this tensor is (scanned layers)."""
  ours: tuple
  hf: str
  shape: tuple
  groups: tuple
  transpose: bool = False
  layer: int | None = None

  @property
  def name(self) -> str:
    """Our parameter, as "layers/attn/q[3]" for row 3 of a stacked one."""
    return "/".join(map(str, self.ours)) + ("" if self.layer is None else f"[{self.layer}]")

  @property
  def hf_shape(self) -> tuple:
    t_shape = tuple(math.prod(self.shape[a] for a in g) for g in self.groups)
    return t_shape[::-1] if self.transpose else t_shape

  def to_ours(self, x: np.ndarray) -> np.ndarray:
    return (x.T if self.transpose else x).reshape(self.shape)

  def to_hf(self, x: np.ndarray) -> np.ndarray:
    t = x.reshape(self.hf_shape[::-1] if self.transpose else self.hf_shape)
    return np.ascontiguousarray(t.T if self.transpose else t)

  def read(self, weights: SafetensorsFolder, index: tuple) -> np.ndarray:
    """Our block `index` (slices over `shape`), reading only the HF rows/columns it covers:
    whole runs of the leading axis of each group (heads, rows), then slicing within."""
    index = tuple(index) + (slice(None),) * (len(self.shape) - len(index))
    t_index, block_shape, local = [], [], list(index)
    for g in self.groups:
      start, stop, step = index[g[0]].indices(self.shape[g[0]])
      if step != 1:
        raise ValueError(f"{self.hf}: strided block {index} not supported")
      inner = math.prod(self.shape[a] for a in g[1:])
      t_index.append(slice(start * inner, stop * inner))
      block_shape += [stop - start] + [self.shape[a] for a in g[1:]]
      local[g[0]] = slice(None)
    block = weights.read(self.hf, tuple(t_index[::-1] if self.transpose else t_index))
    return (block.T if self.transpose else block).reshape(block_shape)[tuple(local)]


_ROW, _MATRIX = ((0,),), ((0,), (1,))


def _layer_path(cfg: ModelConfig, i: int, sub: tuple) -> tuple[tuple, int | None]:
  """(our path, row) of layer i's parameter `sub`: ("layers", i, *sub) with one tree per
  layer, or row i of the stacked ("layers", *sub) with scanned layers."""
  return (("layers",) + sub, i) if cfg.scan_layers else (("layers", i) + sub, None)


def _layer_table(cfg: ModelConfig) -> Iterator[tuple]:
  """(our sub-path, HF name within `layers.{i}.`, our shape, groups, transpose) of one layer."""
  d, h, kv, hd, m = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim, cfg.mlp_dim
  yield ("attn_norm", "scale"), "input_layernorm.weight", (d,), _ROW, False
  if cfg.post_norms:  # Gemma 2/3: post_attention_layernorm norms the attention output
    yield ("attn_post_norm", "scale"), "post_attention_layernorm.weight", (d,), _ROW, False
    yield ("mlp_norm", "scale"), "pre_feedforward_layernorm.weight", (d,), _ROW, False
    yield ("mlp_post_norm", "scale"), "post_feedforward_layernorm.weight", (d,), _ROW, False
  else:               # Llama & co: post_attention_layernorm is the pre-MLP norm
    yield ("mlp_norm", "scale"), "post_attention_layernorm.weight", (d,), _ROW, False
  for name, heads in (("q", h), ("k", kv), ("v", kv)):
    yield ("attn", name), f"self_attn.{name}_proj.weight", (d, heads, hd), ((0,), (1, 2)), True
    if cfg.qkv_bias:
      yield ("attn", f"{name}_bias"), f"self_attn.{name}_proj.bias", (heads, hd), ((0, 1),), False
  yield ("attn", "o"), "self_attn.o_proj.weight", (h, hd, d), ((0, 1), (2,)), True
  if cfg.o_bias:
    yield ("attn", "o_bias"), "self_attn.o_proj.bias", (d,), _ROW, False
  if cfg.qk_norm:
    yield ("attn", "q_norm", "scale"), "self_attn.q_norm.weight", (hd,), _ROW, False
    yield ("attn", "k_norm", "scale"), "self_attn.k_norm.weight", (hd,), _ROW, False
  for name, shape in (("gate", (d, m)), ("up", (d, m)), ("down", (m, d))):
    yield ("mlp", name), f"mlp.{name}_proj.weight", shape, _MATRIX, True


def _param_map(cfg: ModelConfig, prefix: str = "model.") -> list[_Map]:
  maps = [_Map(("embed",), f"{prefix}embed_tokens.weight", (cfg.vocab_size, cfg.d_model), _MATRIX)]
  for i in range(cfg.n_layers):
    for sub, name, shape, groups, transpose in _layer_table(cfg):
      path, row = _layer_path(cfg, i, sub)
      maps.append(_Map(path, f"{prefix}layers.{i}.{name}", shape, groups, transpose, row))
  maps.append(_Map(("final_norm", "scale"), f"{prefix}norm.weight", (cfg.d_model,), _ROW))
  if not cfg.tie_embeddings:
    maps.append(_Map(("lm_head",), "lm_head.weight", (cfg.d_model, cfg.vocab_size), _MATRIX, True))
  return maps


def _score_map(cfg: ModelConfig, num_labels: int) -> _Map:
  return _Map(("kernel",), "score.weight", (cfg.d_model, num_labels), _MATRIX, True)


# ----------------------------------------------------------------------------- checks
def _derived_tensors(weights: SafetensorsFolder, cfg: ModelConfig, embed_name: str) -> list[str]:
  """Checkpoint tensors that are copies of what the config already determines: accepted
  after checking they hold exactly that, never ignored.
  - `lm_head.weight` when embeddings are tied (some exports write the shared matrix twice);
  - `*rotary_emb.inv_freq` buffers (older Llama checkpoints) must equal our RoPE frequencies."""
  used, problems = [], []
  if cfg.tie_embeddings and "lm_head.weight" in weights:
    if embed_name in weights and weights.shape("lm_head.weight") == weights.shape(embed_name) and \
        np.array_equal(weights.get("lm_head.weight"), weights.get(embed_name)):
      used.append("lm_head.weight")
    else:
      problems.append("lm_head.weight differs from the embedding, but config.json says "
                      "tie_word_embeddings=true (the LM head would be dropped)")
  inv_freqs = rope_inv_freqs(cfg)
  for key in weights.keys():
    if key.endswith("rotary_emb.inv_freq"):
      stored = weights.get(key).astype(np.float32)
      if any(stored.shape == f.shape and np.allclose(stored, f, rtol=1e-5, atol=0) for f in inv_freqs):
        used.append(key)
      else:
        problems.append(f"{key} does not match the RoPE frequencies config.json implies")
  if problems:
    raise ValueError(f"{weights.folder}: " + "; ".join(problems))
  return used


def _check_tensors(weights: SafetensorsFolder, maps: list[_Map], also_used=()):
  """Exactly the mapped tensors, each of its shape: one error naming every missing,
  misshapen and unused tensor."""
  wanted = {m.hf: m for m in maps}
  missing = [n for n in wanted if n not in weights]
  shapes = [f"{n} is {weights.shape(n)}, expected {m.hf_shape} (for {m.name})"
            for n, m in wanted.items() if n in weights and weights.shape(n) != m.hf_shape]
  unused = [n for n in weights.keys() if n not in wanted and n not in set(also_used)]
  problems = []
  if missing:
    problems.append(f"missing tensor(s) the config needs: {_names(missing)}")
  if shapes:
    problems.append("tensor(s) with the wrong shape for config.json: " + "; ".join(shapes[:_MAX_LISTED]))
  if unused:
    problems.append(f"tensor(s) this model would not use (refusing to drop them): {_names(unused)}")
  if problems:
    raise ValueError(f"{weights.folder}: " + ". ".join(problems))


def _read_stacked(weights: SafetensorsFolder, rows: list[_Map], index: tuple) -> np.ndarray:
  """Block `index` of a stacked [L, ...] parameter: the rows its first slice covers, each
  read (only its block) from that layer's tensor."""
  start, stop, step = index[0].indices(len(rows)) if index else (0, len(rows), 1)
  return np.stack([rows[i].read(weights, tuple(index[1:])) for i in range(start, stop, step)])


def _load_tree(weights: SafetensorsFolder, maps: list[_Map], abstract: dict, shardings: dict) -> dict:
  """Each mapped parameter into its sharding: every device's block is read on its own."""
  groups: dict[tuple, list[_Map]] = {}
  for m in maps:
    groups.setdefault(m.ours, []).append(m)
  out: dict = {}
  for ours, group in groups.items():
    target = get_path(abstract, ours)
    stacked = group[0].layer is not None
    rows = sorted(group, key=lambda m: m.layer) if stacked else group
    shape = ((len(rows),) if stacked else ()) + group[0].shape
    if tuple(target.shape) != shape or (stacked and [m.layer for m in rows] != list(range(len(rows)))):
      raise AssertionError(f"{ours}: table shape {shape} != model shape {target.shape}")
    if stacked:
      read = lambda index, rows=rows, dtype=target.dtype: _read_stacked(weights, rows, index).astype(dtype)
    else:
      read = lambda index, m=rows[0], dtype=target.dtype: m.read(weights, index).astype(dtype)
    set_path(out, ours, jax.make_array_from_callback(shape, get_path(shardings, ours), read))
  return out


def _abstract(make, mesh, rules):
  graphdef, state = nnx.split(nnx.eval_shape(make), nnx.Param)
  return graphdef, nnx.to_pure_dict(state), named(mesh, param_specs(state, mesh, rules))


def read_hf_config(folder: str) -> dict:
  path = os.path.join(folder, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{folder}: no config.json (expected a Hugging Face model folder)")
  with open(path) as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as e:
      raise ValueError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None


def _folder_config(folder: str, hf: dict, **overrides) -> tuple[str, ModelConfig]:
  """model_config_from_hf, its errors naming the folder's config.json."""
  try:
    return model_config_from_hf(hf, **overrides)
  except ValueError as e:
    msg = str(e)
    raise ValueError(f"{folder}/{msg}" if msg.startswith("config.json") else f"{folder}/config.json: {msg}") from None


def _classifier_arch(hf: dict, weights: SafetensorsFolder) -> str | None:
  names = [a for a in hf.get("architectures") or () if "ForSequenceClassification" in a]
  if names:
    return names[0]
  return "a sequence classifier (it has score.weight)" if "score.weight" in weights else None


def load_hf_model(folder: str, mesh, rules=LOGICAL_RULES, **overrides):
  """Loads a causal LM folder. Returns (arch, ModelConfig, graphdef, params on the mesh).

  `overrides` replace ModelConfig fields that are not in the checkpoint (dtype, remat, ...).
  Refuses a checkpoint with any tensor this model would not use, missing, or misshapen,
  and a sequence-classification folder (see `load_hf_reward_model`).
  """
  hf = read_hf_config(folder)
  with SafetensorsFolder(folder) as weights:
    classifier = _classifier_arch(hf, weights)
    if classifier:
      raise ValueError(f"{folder}: {classifier} is a sequence-classification checkpoint (a reward "
                       "model), not a causal LM; load it with rewardlab.models.hf.load_hf_reward_model "
                       "(or score with rewardlab.rewards.reward_model.RewardModelScorer)")
    arch, cfg = _folder_config(folder, hf, **overrides)
    maps = _param_map(cfg)
    _check_tensors(weights, maps, _derived_tensors(weights, cfg, maps[0].hf))
    graphdef, abstract, shardings = _abstract(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh, rules)
    params = _load_tree(weights, maps, abstract, shardings)
  _check_complete(params, abstract, folder)
  return arch, cfg, graphdef, params


def _check_complete(params, abstract, folder):
  want = {p for p, _ in jax.tree_util.tree_flatten_with_path(abstract)[0]}
  got = {p for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]}
  if want != got:
    missing = sorted(jax.tree_util.keystr(p) for p in want - got)
    raise ValueError(f"{folder}: parameters not filled from the checkpoint: {missing}")


def load_hf_reward_model(folder: str, mesh, rules=LOGICAL_RULES, **overrides):
  """Loads `*ForSequenceClassification`: trunk + `score` matrix as a ScalarHead (no bias).

  A classifier has no LM head, so its trunk config is tied (`tie_embeddings=True`: no
  unembedding parameter to invent) whatever config.json says about an LM head it lacks.
  Returns (arch, ModelConfig, graphdef, trunk params, head graphdef, head params)."""
  hf = read_hf_config(folder)
  with SafetensorsFolder(folder) as weights:
    if "score.weight" not in weights:
      raise ValueError(f"{folder}: no 'score.weight' tensor: not a sequence-classification checkpoint "
                       "(a causal LM loads with rewardlab.models.hf.load_hf_model)")
    arch, cfg = _folder_config(folder, hf, **dict(overrides, tie_embeddings=True))
    num_labels = weights.shape("score.weight")[0]
    if "id2label" in hf and len(hf["id2label"]) != num_labels:
      raise ValueError(f"{folder}: score.weight has {num_labels} rows but config.json id2label has "
                       f"{len(hf['id2label'])} labels")
    maps, score = _param_map(cfg), _score_map(cfg, num_labels)
    _check_tensors(weights, maps + [score], _derived_tensors(weights, cfg, maps[0].hf))
    graphdef, abstract, shardings = _abstract(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), mesh, rules)
    params = _load_tree(weights, maps, abstract, shardings)
    head_def, head_abstract, head_shardings = _abstract(
        lambda: ScalarHead(cfg.d_model, num_labels, use_bias=False, rngs=nnx.Rngs(0)), mesh, rules)
    head_params = _load_tree(weights, [score], head_abstract, head_shardings)
  _check_complete(params, abstract, folder)
  return arch, cfg, graphdef, params, head_def, head_params


def save_hf_model(folder: str, arch: str, cfg: ModelConfig, params, head_params=None,
                  config_extra: dict | None = None, dtype: str | None = None):
  """Writes config.json + model.safetensors in the HF layout of `arch` (a model_type).

  With `head_params` (a ScalarHead's), writes a `*ForSequenceClassification` checkpoint.
  Refuses a config that `arch`'s config.json cannot express (it would load as another model)."""
  if arch not in _ARCHS:
    raise ValueError(f"save_hf_model: arch {arch!r} is not supported; supported: {SUPPORTED}")
  lost = _export_differences(arch, cfg)
  if lost:
    raise ValueError(f"save_hf_model: a {arch} config.json cannot express this model: {lost} "
                     f"(ours vs as exported); rewardlab.models.hf.infer_hf_arch finds one that can")
  dtype = dtype or cfg.param_dtype
  np_dtype = _NP_DTYPES[dtype]
  host = lambda x: np.asarray(jax.device_get(x))
  fetched: dict[tuple, np.ndarray] = {}   # each (stacked) parameter copied to the host once
  def ours(m: _Map) -> np.ndarray:
    if m.ours not in fetched:
      fetched[m.ours] = host(get_path(params, m.ours))
    return fetched[m.ours] if m.layer is None else fetched[m.ours][m.layer]
  tensors = {m.hf: m.to_hf(ours(m)).astype(np_dtype) for m in _param_map(cfg)}
  extra = dict(config_extra or {})
  if head_params is not None:
    kernel = host(head_params["kernel"])
    tensors["score.weight"] = _score_map(cfg, kernel.shape[1]).to_hf(kernel).astype(np_dtype)
    extra.setdefault("num_labels", kernel.shape[1])
    extra["architectures"] = [_ARCHS[arch][1].replace("ForCausalLM", "ForSequenceClassification")]
    tensors.pop("lm_head.weight", None)
  hf = model_config_to_hf(arch, cfg, extra)
  hf["dtype"] = hf["torch_dtype"] = dtype
  os.makedirs(folder, exist_ok=True)
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
  return folder
