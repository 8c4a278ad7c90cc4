"""Parity with Hugging Face transformers (torch CPU) for every supported architecture."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="install the test extra: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers")

from rewardlab.models import Transformer  # noqa: E402
from rewardlab.models.hf import (SafetensorsFolder, load_hf_model, load_hf_reward_model,  # noqa: E402
                                 save_hf_model)
from rewardlab.sharding import make_mesh  # noqa: E402

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
ARCHS = {
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "llama_untied_rope3": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                           dict(tie_word_embeddings=False, rope_parameters=dict(
                               rope_type="llama3", rope_theta=50000.0, factor=8.0, low_freq_factor=1.0,
                               high_freq_factor=4.0, original_max_position_embeddings=16))),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(tie_word_embeddings=True)),
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM, {}),
}


def _make_hf(name, tmp_path, cls_index=1):
  cfg_cls, model_cls, extra = ARCHS[name]
  torch.manual_seed(0)
  cfg = cfg_cls(**SMALL, **extra)
  model = model_cls(cfg).eval()
  with torch.no_grad():  # random (non-default) norms and biases so every tensor matters
    for n, p in model.named_parameters():
      if "norm" in n or n.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  folder = str(tmp_path / name)
  model.save_pretrained(folder)
  return model, folder


def _ids():
  return np.random.default_rng(0).integers(0, SMALL["vocab_size"], (2, 11))


def _hf_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.float().numpy()


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_import_matches_transformers_logits_and_export_round_trips(name, tmp_path):
  hf_model, folder = _make_hf(name, tmp_path)
  mesh = make_mesh({"data": -1})
  arch, cfg, graphdef, params = load_hf_model(folder, mesh)
  ids = _ids()
  ours = nnx.merge(graphdef, params)(jnp.asarray(ids)).logits
  ref = _hf_logits(hf_model, ids)
  np.testing.assert_allclose(np.asarray(ours), ref, atol=1e-4, rtol=1e-4)
  # export -> transformers reload -> same logits
  out = save_hf_model(str(tmp_path / f"{name}_export"), arch, cfg, params)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  np.testing.assert_allclose(_hf_logits(reloaded, ids), ref, atol=1e-4, rtol=1e-4)


def test_sequence_classification_scores_match(tmp_path):
  torch.manual_seed(1)
  cfg = transformers.Qwen2Config(**SMALL, num_labels=1, pad_token_id=0)
  hf = transformers.Qwen2ForSequenceClassification(cfg).eval()
  folder = str(tmp_path / "rm")
  hf.save_pretrained(folder)
  ids = _ids()
  ids[:, 8:] = 0  # right padding: the score is read at the last non-pad token
  ids[1, 5:] = 0
  with torch.no_grad():
    ref = hf(torch.tensor(ids), attention_mask=torch.tensor(ids != 0)).logits.numpy()
  mesh = make_mesh({"data": -1})
  _, mcfg, graphdef, params, head_def, head_params = load_hf_reward_model(folder, mesh)
  valid = jnp.asarray(ids != 0)
  hidden, _ = nnx.merge(graphdef, params).hidden_states(jnp.asarray(ids), valid=valid)
  scores = nnx.merge(head_def, head_params)(hidden, valid)
  np.testing.assert_allclose(np.asarray(scores), ref, atol=1e-4, rtol=1e-4)


def test_sharded_index_and_bad_checkpoints(tmp_path):
  hf_model, folder = _make_hf("llama", tmp_path)
  sharded = str(tmp_path / "sharded")
  hf_model.save_pretrained(sharded, max_shard_size="20KB")
  assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
  mesh = make_mesh({"data": -1})
  _, _, graphdef, params = load_hf_model(sharded, mesh)
  ids = _ids()
  np.testing.assert_allclose(nnx.merge(graphdef, params)(jnp.asarray(ids)).logits,
                             _hf_logits(hf_model, ids), atol=1e-4)
  # unknown architecture
  cfg = json.load(open(os.path.join(folder, "config.json")))
  cfg["model_type"] = "mamba"
  json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
  with pytest.raises(ValueError, match="model_type 'mamba' is not supported"):
    load_hf_model(folder, mesh)
  # mismatched shapes: claim more heads than the weights have
  cfg["model_type"] = "llama"
  cfg["intermediate_size"] = 80
  json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
  with pytest.raises(ValueError, match=r"gate_proj.weight' has shape \(64, 32\).*shape \(32, 80\)"):
    load_hf_model(folder, mesh)


def test_bfloat16_checkpoint_loads(tmp_path):
  hf_model, _ = _make_hf("qwen3", tmp_path)
  folder = str(tmp_path / "bf16")
  hf_model.to(torch.bfloat16).save_pretrained(folder)
  w = SafetensorsFolder(folder)
  assert str(w.get("model.norm.weight").dtype) == "bfloat16"
  _, cfg, graphdef, params = load_hf_model(folder, make_mesh({"data": -1}))
  ref = hf_model.float()
  np.testing.assert_allclose(nnx.merge(graphdef, params)(jnp.asarray(_ids())).logits,
                             _hf_logits(ref, _ids()), atol=1e-4)
