"""Published model shapes as ModelConfig fields, so a config can name a real size without a
checkpoint (random init for speed runs and compile checks):

    cfg = model_config_from_preset("qwen3-0.6b", max_seq_len=2048, remat=True)

With a checkpoint as well, `check_hf_matches_preset(name, folder)` says whether the folder's
config.json describes the same model, naming each field that differs.

Values are the `config.json` of each model's Hugging Face release (the repository named in
each entry's comment), mapped as `rewardlab.models.hf.model_config_from_hf` maps them;
`max_seq_len` is the published `max_position_embeddings`.
"""
from __future__ import annotations

from typing import Any

from rewardlab.models.config import FAMILIES, ModelConfig

_LLAMA3_ROPE = dict(rope_theta=500_000.0, rope_scaling="llama3", rope_low_freq_factor=1.0,
                    rope_high_freq_factor=4.0, rope_original_max_len=8192)


def _preset(family: str, **fields) -> dict[str, Any]:
  """A published shape: its family's switches, its sizes, and scanned layers (compile time
  independent of depth; see ModelConfig.scan_layers)."""
  return dict(FAMILIES[family], scan_layers=True, **fields)


# The embedded default policy (a few million parameters; byte tokenizer): the sizes a run
# uses when config.model names neither a preset nor a HF folder.
EMBEDDED: dict[str, Any] = dict(vocab_size=264, d_model=128, n_layers=4, n_heads=4, n_kv_heads=2, head_dim=32,
                                mlp_dim=384, max_seq_len=64, rope_theta=10_000.0, norm_eps=1e-6)

PRESETS: dict[str, dict[str, Any]] = {
    # Qwen/Qwen3-0.6B (0.6B; 0.44B without embeddings)
    "qwen3-0.6b": _preset("qwen3", vocab_size=151_936, d_model=1024, n_layers=28, n_heads=16, n_kv_heads=8,
                          head_dim=128, mlp_dim=3072, max_seq_len=40_960, norm_eps=1e-6, tie_embeddings=True),
    # Qwen/Qwen3-1.7B
    "qwen3-1.7b": _preset("qwen3", vocab_size=151_936, d_model=2048, n_layers=28, n_heads=16, n_kv_heads=8,
                          head_dim=128, mlp_dim=6144, max_seq_len=40_960, norm_eps=1e-6, tie_embeddings=True),
    # Qwen/Qwen3-8B
    "qwen3-8b": _preset("qwen3", vocab_size=151_936, d_model=4096, n_layers=36, n_heads=32, n_kv_heads=8,
                        head_dim=128, mlp_dim=12_288, max_seq_len=40_960, norm_eps=1e-6, tie_embeddings=False),
    # Qwen/Qwen2.5-1.5B
    "qwen2.5-1.5b": _preset("qwen2", vocab_size=151_936, d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2,
                            head_dim=128, mlp_dim=8960, max_seq_len=131_072, norm_eps=1e-6, tie_embeddings=True),
    # Qwen/Qwen2.5-7B
    "qwen2.5-7b": _preset("qwen2", vocab_size=152_064, d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4,
                          head_dim=128, mlp_dim=18_944, max_seq_len=131_072, norm_eps=1e-6, tie_embeddings=False),
    # meta-llama/Llama-3.2-1B (rope_scaling llama3, factor 32)
    "llama-3.2-1b": _preset("llama", vocab_size=128_256, d_model=2048, n_layers=16, n_heads=32, n_kv_heads=8,
                            head_dim=64, mlp_dim=8192, max_seq_len=131_072, norm_eps=1e-5, tie_embeddings=True,
                            rope_factor=32.0, **_LLAMA3_ROPE),
    # meta-llama/Llama-3.1-8B (rope_scaling llama3, factor 8)
    "llama-3.1-8b": _preset("llama", vocab_size=128_256, d_model=4096, n_layers=32, n_heads=32, n_kv_heads=8,
                            head_dim=128, mlp_dim=14_336, max_seq_len=131_072, norm_eps=1e-5, tie_embeddings=False,
                            rope_factor=8.0, **_LLAMA3_ROPE),
    # google/gemma-2-2b (soft-caps 50 / 30, every 2nd layer global, window 4096)
    "gemma-2-2b": _preset("gemma2", vocab_size=256_000, d_model=2304, n_layers=26, n_heads=8, n_kv_heads=4,
                          head_dim=256, mlp_dim=9216, max_seq_len=8192, norm_eps=1e-6, rope_theta=10_000.0,
                          query_pre_attn_scalar=256.0, attn_logit_softcap=50.0, final_logit_softcap=30.0,
                          sliding_window=4096, sliding_window_pattern=2),
    # google/gemma-3-1b-pt (every 6th layer global, window 512, local RoPE base 10k)
    "gemma-3-1b": _preset("gemma3", vocab_size=262_144, d_model=1152, n_layers=26, n_heads=4, n_kv_heads=1,
                          head_dim=256, mlp_dim=6912, max_seq_len=32_768, norm_eps=1e-6,
                          rope_theta=1_000_000.0, rope_local_theta=10_000.0, query_pre_attn_scalar=256.0,
                          sliding_window=512, sliding_window_pattern=6),
}


def _lookup(name: str) -> dict[str, Any]:
  key = name.lower()
  if key not in PRESETS:
    raise ValueError(f"model.preset={name!r} is not a known preset; allowed: {sorted(PRESETS)}")
  return PRESETS[key]


def model_config_from_preset(name: str, **overrides) -> ModelConfig:
  """The published shape `name` (case-insensitive), with `overrides` replacing fields
  (dtype, remat, a shorter max_seq_len, fewer n_layers for a compile check, ...); an
  unknown override names the allowed fields."""
  return ModelConfig.from_mapping(dict(_lookup(name), **overrides))


# Fields a checkpoint cannot contradict: how we run it, and how long we let sequences get.
_NOT_ARCHITECTURE = ("max_seq_len",)


def check_hf_matches_preset(name: str, folder_or_config) -> ModelConfig:
  """Checks that a HF folder (or its config.json dict) describes preset `name`'s model.
  Returns the folder's ModelConfig; raises naming each field that differs (preset value vs
  checkpoint value). How the model runs (hf.RUNTIME_FIELDS: dtype, param_dtype, remat,
  scan_layers, attention) and max_seq_len are not compared."""
  from rewardlab.models import hf  # hf imports the transformer; presets stay importable alone
  config = folder_or_config if isinstance(folder_or_config, dict) else hf.read_hf_config(folder_or_config)
  where = "config.json" if isinstance(folder_or_config, dict) else f"{folder_or_config}/config.json"
  _, theirs = hf.model_config_from_hf(config)
  ours = model_config_from_preset(name)
  diffs = [d for d in hf.config_differences(ours, theirs) if d.split(":")[0] not in _NOT_ARCHITECTURE]
  if diffs:
    raise ValueError(f"{where} does not match model.preset={name!r}: " + "; ".join(diffs)
                     + " (preset vs checkpoint)")
  return theirs
