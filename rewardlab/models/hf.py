"""Hugging Face checkpoints: local `config.json` + `*.safetensors` folders in and out.

Supported architectures: Llama, Qwen2, Qwen3, Gemma (causal LM, and the same trunks as
`*ForSequenceClassification`, whose `score` matrix becomes a `ScalarHead`).

Loading goes tensor by tensor from memory-mapped safetensors files straight into the
mesh's shardings (`jax.make_array_from_callback`): the host holds at most one tensor, and
each device receives only its shard. Export writes the same folder layout, so
`transformers.AutoModelForCausalLM.from_pretrained(folder)` loads what we trained.
"""
from __future__ import annotations

import dataclasses
import json
import mmap
import os
import struct
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from rewardlab.models.config import FAMILIES, ModelConfig
from rewardlab.models.heads import ScalarHead
from rewardlab.models.paths import get_path, set_path
from rewardlab.models.transformer import Transformer
from rewardlab.sharding import LOGICAL_RULES, named, param_specs

SUPPORTED = ("llama", "qwen2", "qwen3", "gemma")

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
              "F64": np.float64, "I64": np.int64, "I32": np.int32}
_ST_NAMES = {np.dtype(v): k for k, v in _ST_DTYPES.items()}


# ----------------------------------------------------------------------------- safetensors
class SafetensorsFolder:
  """Memory-mapped read access to every tensor of a folder (single or sharded index)."""

  def __init__(self, folder: str):
    self.folder = folder
    index = os.path.join(folder, "model.safetensors.index.json")
    if os.path.exists(index):
      with open(index) as f:
        weight_map = json.load(f)["weight_map"]
      files = sorted(set(weight_map.values()))
    else:
      files = sorted(f for f in os.listdir(folder) if f.endswith(".safetensors"))
      if not files:
        raise FileNotFoundError(f"{folder}: no *.safetensors files and no index")
    self._where: dict[str, tuple[str, dict]] = {}
    self._maps: dict[str, mmap.mmap] = {}
    for name in files:
      path = os.path.join(folder, name)
      with open(path, "rb") as f:
        self._maps[path] = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
      buf = self._maps[path]
      (n,) = struct.unpack("<Q", buf[:8])
      header = json.loads(buf[8:8 + n])
      header.pop("__metadata__", None)
      for key, info in header.items():
        info["offset"] = 8 + n
        self._where[key] = (path, info)

  def keys(self):
    return self._where.keys()

  def __contains__(self, key):
    return key in self._where

  def shape(self, key) -> tuple[int, ...]:
    return tuple(self._where[key][1]["shape"])

  def get(self, key) -> np.ndarray:
    """A read-only numpy view of one tensor (no copy until sliced or cast)."""
    if key not in self._where:
      raise KeyError(f"{self.folder}: tensor {key!r} not found")
    path, info = self._where[key]
    start, end = info["data_offsets"]
    dtype = _ST_DTYPES.get(info["dtype"])
    if dtype is None:
      raise ValueError(f"{self.folder}: tensor {key!r} has unsupported dtype {info['dtype']}")
    arr = np.frombuffer(self._maps[path], dtype=dtype, count=(end - start) // np.dtype(dtype).itemsize,
                        offset=info["offset"] + start)
    return arr.reshape(info["shape"])


def save_safetensors(path: str, tensors: dict[str, np.ndarray], metadata: dict | None = None):
  """Writes one .safetensors file (any numpy / ml_dtypes dtype listed above)."""
  header, offset, blobs = {}, 0, []
  for key in sorted(tensors):
    arr = np.ascontiguousarray(tensors[key])
    data = arr.tobytes()
    header[key] = {"dtype": _ST_NAMES[arr.dtype], "shape": list(arr.shape),
                   "data_offsets": [offset, offset + len(data)]}
    offset += len(data)
    blobs.append(data)
  header["__metadata__"] = metadata or {"format": "pt"}
  raw = json.dumps(header).encode()
  raw += b" " * (-len(raw) % 8)
  with open(path, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for b in blobs:
      f.write(b)


# ----------------------------------------------------------------------------- config
def _rope_fields(hf: dict) -> dict:
  rp = hf.get("rope_parameters") or {}
  scaling = hf.get("rope_scaling") or rp
  theta = rp.get("rope_theta", hf.get("rope_theta", 10_000.0))
  kind = (scaling or {}).get("rope_type", (scaling or {}).get("type", "default")) or "default"
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
  raise ValueError(f"rope scaling type {kind!r} is not supported; supported: default, linear, llama3")


def model_config_from_hf(hf: dict, weights: SafetensorsFolder | None = None,
                         **overrides) -> tuple[str, ModelConfig]:
  """Maps a HF config.json dict to (model_type, ModelConfig)."""
  arch = hf.get("model_type")
  if arch not in SUPPORTED:
    raise ValueError(f"config.json: model_type {arch!r} is not supported; supported: {SUPPORTED}")
  for flag in ("mlp_bias",):
    if hf.get(flag):
      raise ValueError(f"config.json: {flag}=true is not supported for {arch}")
  if arch == "llama" and hf.get("attention_bias"):
    raise ValueError("config.json: llama with attention_bias=true (o_proj bias) is not supported")
  if hf.get("use_sliding_window"):
    raise ValueError(f"config.json: {arch} with use_sliding_window=true is not supported")
  heads = hf["num_attention_heads"]
  act = hf.get("hidden_activation") or hf.get("hidden_act", "silu")
  fields = dict(FAMILIES[arch])
  fields.update(
      vocab_size=hf["vocab_size"], d_model=hf["hidden_size"], n_layers=hf["num_hidden_layers"],
      n_heads=heads, n_kv_heads=hf.get("num_key_value_heads") or heads,
      head_dim=hf.get("head_dim") or hf["hidden_size"] // heads,
      mlp_dim=hf["intermediate_size"], max_seq_len=hf.get("max_position_embeddings", 2048),
      norm_eps=hf.get("rms_norm_eps", 1e-6), tie_embeddings=bool(hf.get("tie_word_embeddings", arch == "gemma")),
      activation={"silu": "silu", "gelu_pytorch_tanh": "gelu_tanh", "gelu": "gelu_tanh"}.get(act, act),
      **_rope_fields(hf))
  if weights is not None:  # switches read off the weights themselves
    fields["qkv_bias"] = "model.layers.0.self_attn.q_proj.bias" in weights
    fields["qk_norm"] = "model.layers.0.self_attn.q_norm.weight" in weights
    if "lm_head.weight" not in weights and fields["tie_embeddings"] is False:
      fields["tie_embeddings"] = True
  fields.update(overrides)
  return arch, ModelConfig(**fields)


def model_config_to_hf(arch: str, cfg: ModelConfig, extra: dict | None = None) -> dict:
  archs = {"llama": "LlamaForCausalLM", "qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM",
           "gemma": "GemmaForCausalLM"}
  rope: dict[str, Any] = {"rope_theta": cfg.rope_theta, "rope_type": cfg.rope_scaling}
  if cfg.rope_scaling != "default":
    rope["factor"] = cfg.rope_factor
  if cfg.rope_scaling == "llama3":
    rope.update(low_freq_factor=cfg.rope_low_freq_factor, high_freq_factor=cfg.rope_high_freq_factor,
                original_max_position_embeddings=cfg.rope_original_max_len)
  hf = {
      "architectures": [archs[arch]], "model_type": arch, "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.d_model, "num_hidden_layers": cfg.n_layers,
      "num_attention_heads": cfg.n_heads, "num_key_value_heads": cfg.n_kv_heads,
      "head_dim": cfg.head_dim, "intermediate_size": cfg.mlp_dim,
      "max_position_embeddings": cfg.max_seq_len, "rms_norm_eps": cfg.norm_eps,
      "tie_word_embeddings": cfg.tie_embeddings, "rope_theta": cfg.rope_theta,
      "rope_parameters": rope, "torch_dtype": cfg.param_dtype, "dtype": cfg.param_dtype,
      "hidden_act": "silu" if cfg.activation == "silu" else "gelu_pytorch_tanh",
      "attention_bias": cfg.qkv_bias if arch != "llama" else False,
  }
  if arch == "gemma":
    hf["hidden_activation"] = hf["hidden_act"]
  hf.update(extra or {})
  return hf


# ----------------------------------------------------------------------------- names
@dataclasses.dataclass(frozen=True)
class _Map:
  ours: tuple                         # path in our pure-dict params
  hf: str                             # tensor name in the checkpoint
  to_ours: Callable[[np.ndarray], np.ndarray]
  to_hf: Callable[[np.ndarray], np.ndarray]


def _param_map(cfg: ModelConfig, prefix: str = "model.") -> Iterator[_Map]:
  d, h, kv, hd = cfg.d_model, cfg.n_heads, cfg.n_kv_heads, cfg.head_dim
  ident = lambda x: x
  in_proj = lambda heads: (lambda w: w.T.reshape(d, heads, hd), lambda w: w.reshape(d, heads * hd).T)
  yield _Map(("embed",), f"{prefix}embed_tokens.weight", ident, ident)
  for i in range(cfg.n_layers):
    L = f"{prefix}layers.{i}."
    yield _Map(("layers", i, "attn_norm", "scale"), L + "input_layernorm.weight", ident, ident)
    yield _Map(("layers", i, "mlp_norm", "scale"), L + "post_attention_layernorm.weight", ident, ident)
    for name, heads in (("q", h), ("k", kv), ("v", kv)):
      yield _Map(("layers", i, "attn", name), L + f"self_attn.{name}_proj.weight", *in_proj(heads))
      if cfg.qkv_bias:
        yield _Map(("layers", i, "attn", f"{name}_bias"), L + f"self_attn.{name}_proj.bias",
                   lambda b, n=heads: b.reshape(n, hd), lambda b, n=heads: b.reshape(n * hd))
    yield _Map(("layers", i, "attn", "o"), L + "self_attn.o_proj.weight",
               lambda w: w.T.reshape(h, hd, d), lambda w: w.reshape(h * hd, d).T)
    if cfg.qk_norm:
      yield _Map(("layers", i, "attn", "q_norm", "scale"), L + "self_attn.q_norm.weight", ident, ident)
      yield _Map(("layers", i, "attn", "k_norm", "scale"), L + "self_attn.k_norm.weight", ident, ident)
    for name in ("gate", "up", "down"):
      yield _Map(("layers", i, "mlp", name), L + f"mlp.{name}_proj.weight", lambda w: w.T, lambda w: w.T)
  yield _Map(("final_norm", "scale"), f"{prefix}norm.weight", ident, ident)
  if not cfg.tie_embeddings:
    yield _Map(("lm_head",), "lm_head.weight", lambda w: w.T, lambda w: w.T)


def _mapped_shape(m: _Map, shape) -> tuple | None:
  try:
    return tuple(jax.eval_shape(m.to_ours, jax.ShapeDtypeStruct(shape, jnp.float32)).shape)
  except (TypeError, ValueError):
    return None


def _load_tree(weights: SafetensorsFolder, maps, abstract: dict, shardings: dict) -> dict:
  """Reads each mapped tensor into its sharding; checks names and shapes first.

  One tensor at a time is converted on the host; every device gets only its shard."""
  for m in maps:
    if m.hf not in weights:
      raise ValueError(f"{weights.folder}: tensor {m.hf!r} (for {'/'.join(map(str, m.ours))}) "
                       f"is missing from the checkpoint")
    target = get_path(abstract, m.ours)
    if _mapped_shape(m, weights.shape(m.hf)) != tuple(target.shape):
      raise ValueError(f"{weights.folder}: tensor {m.hf!r} has shape {weights.shape(m.hf)}, which "
                       f"does not map to {'/'.join(map(str, m.ours))} of shape {tuple(target.shape)}")
  out: dict = {}
  for m in maps:
    target = get_path(abstract, m.ours)
    host = np.asarray(m.to_ours(weights.get(m.hf))).astype(target.dtype)
    set_path(out, m.ours, jax.make_array_from_callback(target.shape, get_path(shardings, m.ours),
                                                   lambda index, host=host: host[index]))
    del host
  return out


def read_hf_config(folder: str) -> dict:
  path = os.path.join(folder, "config.json")
  if not os.path.exists(path):
    raise FileNotFoundError(f"{folder}: no config.json (expected a Hugging Face model folder)")
  with open(path) as f:
    return json.load(f)


def load_hf_model(folder: str, mesh, rules=LOGICAL_RULES, **overrides):
  """Loads a causal LM folder. Returns (arch, ModelConfig, graphdef, params on the mesh).

  `overrides` replace ModelConfig fields that are not in the checkpoint (dtype, remat, ...).
  """
  hf = read_hf_config(folder)
  weights = SafetensorsFolder(folder)
  arch, cfg = model_config_from_hf(hf, weights, **overrides)
  abstract_model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, abstract_state = nnx.split(abstract_model, nnx.Param)
  shardings = named(mesh, param_specs(abstract_state, mesh, rules))
  abstract = nnx.to_pure_dict(abstract_state)
  params = _load_tree(weights, list(_param_map(cfg)), abstract, shardings)
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

  Returns (arch, ModelConfig, graphdef, trunk params, head graphdef, head params)."""
  hf = read_hf_config(folder)
  weights = SafetensorsFolder(folder)
  if "score.weight" not in weights:
    raise ValueError(f"{folder}: no 'score.weight' tensor: not a sequence-classification checkpoint")
  arch, cfg, graphdef, params = load_hf_model(folder, mesh, rules, **overrides)
  num_labels = weights.shape("score.weight")[0]
  head = nnx.eval_shape(lambda: ScalarHead(cfg.d_model, num_labels, use_bias=False, rngs=nnx.Rngs(0)))
  head_def, head_state = nnx.split(head, nnx.Param)
  head_shardings = named(mesh, param_specs(head_state, mesh, rules))
  head_params = _load_tree(weights, [_Map(("kernel",), "score.weight", lambda w: w.T, lambda w: w.T)],
                           nnx.to_pure_dict(head_state), head_shardings)
  return arch, cfg, graphdef, params, head_def, head_params


def save_hf_model(folder: str, arch: str, cfg: ModelConfig, params, head_params=None,
                  config_extra: dict | None = None, dtype: str | None = None):
  """Writes config.json + model.safetensors in the HF layout of `arch`.

  With `head_params` (a ScalarHead's), writes a `*ForSequenceClassification` checkpoint."""
  os.makedirs(folder, exist_ok=True)
  np_dtype = {"float32": np.float32, "bfloat16": ml_dtypes.bfloat16,
              "float16": np.float16}[dtype or cfg.param_dtype]
  tensors = {m.hf: np.asarray(m.to_hf(np.asarray(jax.device_get(get_path(params, m.ours))))).astype(np_dtype)
             for m in _param_map(cfg)}
  extra = dict(config_extra or {})
  if head_params is not None:
    kernel = np.asarray(jax.device_get(head_params["kernel"]))
    tensors["score.weight"] = kernel.T.astype(np_dtype)
    extra.setdefault("num_labels", kernel.shape[1])
    extra["architectures"] = [model_config_to_hf(arch, cfg)["architectures"][0].replace(
        "ForCausalLM", "ForSequenceClassification")]
    tensors.pop("lm_head.weight", None)
  hf = model_config_to_hf(arch, cfg, extra)
  hf["dtype"] = hf["torch_dtype"] = dtype or cfg.param_dtype
  with open(os.path.join(folder, "config.json"), "w") as f:
    json.dump(hf, f, indent=2)
  save_safetensors(os.path.join(folder, "model.safetensors"), tensors)
  return folder
