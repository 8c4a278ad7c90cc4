"""Model presets: published shapes, their parameter counts, and the check against a HF folder."""
import json

import jax
import pytest
from flax import nnx

from rewardlab.models import Transformer
from rewardlab.models.hf import infer_hf_arch, model_config_to_hf
from rewardlab.models.presets import PRESETS, check_hf_matches_preset, model_config_from_preset

# Parameter counts of the released checkpoints (their model pages / safetensors index), and
# for Qwen the non-embedding counts their model cards state (0.44B, 1.4B, 6.95B, 1.31B, 6.53B).
PUBLISHED = {
    "qwen3-0.6b": (596_049_920, 0.44e9), "qwen3-1.7b": (1_720_574_976, 1.4e9),
    "qwen3-8b": (8_190_735_360, 6.95e9), "qwen2.5-1.5b": (1_543_714_304, 1.31e9),
    "qwen2.5-7b": (7_615_616_512, 6.53e9), "llama-3.2-1b": (1_235_814_400, None),
    "llama-3.1-8b": (8_030_261_248, None), "gemma-2-2b": (2_614_341_888, None),
    "gemma-3-1b": (999_885_952, None),
}


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_preset_parameter_counts_match_the_published_sizes(name):
  cfg = model_config_from_preset(name)
  total, non_embedding = PUBLISHED[name]
  assert cfg.num_params() == total
  if non_embedding:
    embeddings = cfg.vocab_size * cfg.d_model * (1 if cfg.tie_embeddings else 2)
    assert abs(cfg.num_params() - embeddings - non_embedding) / non_embedding < 0.01
  # and the module built from it (shapes only) holds that many parameters
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  assert sum(x.size for x in jax.tree.leaves(nnx.state(abstract, nnx.Param))) == total


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_preset_exports_to_a_config_transformers_builds_with_the_same_count(name):
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  cfg = model_config_from_preset(name)
  hf = model_config_to_hf(infer_hf_arch(cfg), cfg)
  hf_cfg = transformers.AutoConfig.for_model(**{k: v for k, v in hf.items() if k not in ("architectures",)})
  with torch.device("meta"):
    model = transformers.AutoModelForCausalLM.from_config(hf_cfg)
  assert sum(p.numel() for p in model.parameters()) == cfg.num_params()
  assert check_hf_matches_preset(name, hf).num_params() == cfg.num_params()


def test_overrides_and_unknown_names():
  cfg = model_config_from_preset("Qwen3-0.6B", n_layers=2, max_seq_len=2048, dtype="bfloat16")
  assert (cfg.n_layers, cfg.max_seq_len, cfg.dtype, cfg.d_model, cfg.qk_norm) == (2, 2048, "bfloat16", 1024, True)
  with pytest.raises(ValueError, match=r"model.preset='qwen4-1b' is not a known preset; allowed: \['gemma-2-2b'"):
    model_config_from_preset("qwen4-1b")
  with pytest.raises(ValueError, match=r"unknown field\(s\) \['d_modle'\]"):
    model_config_from_preset("qwen3-8b", d_modle=3)


def test_hf_config_checked_against_a_preset_names_each_differing_field(tmp_path):
  cfg = model_config_from_preset("llama-3.2-1b")
  hf = model_config_to_hf("llama", cfg)
  hf["max_position_embeddings"] = 4096          # how long we let sequences get: not compared
  (tmp_path / "config.json").write_text(json.dumps(hf))
  assert check_hf_matches_preset("llama-3.2-1b", str(tmp_path)).max_seq_len == 4096
  hf.update(num_key_value_heads=4, rope_parameters=dict(hf["rope_parameters"], factor=8.0))
  (tmp_path / "config.json").write_text(json.dumps(hf))
  with pytest.raises(ValueError, match=r"config.json does not match model.preset='llama-3.2-1b': n_kv_heads: 8 vs 4; "
                                       r"rope_factor: 32.0 vs 8.0 \(preset vs checkpoint\)"):
    check_hf_matches_preset("llama-3.2-1b", str(tmp_path))
