"""Parity with Hugging Face transformers (torch CPU) for every supported architecture, and
the importer's refusals: every tensor of a checkpoint is used, or the load fails naming it."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip("torch", reason="install the test extra: pip install -e '.[test]'")
transformers = pytest.importorskip("transformers")
from safetensors.numpy import load_file, save_file  # noqa: E402

from rewardlab.data import load_tokenizer  # noqa: E402
from rewardlab.models import ModelConfig  # noqa: E402
from rewardlab.models.hf import (SafetensorsFolder, _param_map, _read_stacked, infer_hf_arch,  # noqa: E402
                                 load_hf_model, load_hf_reward_model, read_hf_config, save_hf_model)
from rewardlab.models.transformer import rope_inv_freq, stack_layers  # noqa: E402
from rewardlab.sharding import make_mesh  # noqa: E402

SMALL = dict(vocab_size=96, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
             num_attention_heads=4, num_key_value_heads=2, head_dim=8, max_position_embeddings=64)
ROPE3 = dict(rope_type="llama3", rope_theta=50000.0, factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
             original_max_position_embeddings=16)
ARCHS = {  # name -> (config class, model class, config extras); llama/qwen2/qwen3 default untied
    "llama": (transformers.LlamaConfig, transformers.LlamaForCausalLM, {}),
    "llama_tied_bias": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                        dict(tie_word_embeddings=True, attention_bias=True)),
    "llama_untied_rope3": (transformers.LlamaConfig, transformers.LlamaForCausalLM,
                           dict(tie_word_embeddings=False, rope_parameters=ROPE3)),
    "qwen2": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, {}),
    "qwen2_tied": (transformers.Qwen2Config, transformers.Qwen2ForCausalLM, dict(tie_word_embeddings=True)),
    "qwen3": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(tie_word_embeddings=True)),
    "qwen3_untied_bias": (transformers.Qwen3Config, transformers.Qwen3ForCausalLM, dict(attention_bias=True)),
    "gemma": (transformers.GemmaConfig, transformers.GemmaForCausalLM, {}),
    "gemma_bias": (transformers.GemmaConfig, transformers.GemmaForCausalLM, dict(attention_bias=True)),
    # windows of 4 < 11 tokens; weights large enough (init 0.3) for both caps to bend the
    # scores and logits; query scale != head_dim
    "gemma2": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
               dict(sliding_window=4, attn_logit_softcapping=2.0, final_logit_softcapping=1.5,
                    query_pre_attn_scalar=12, initializer_range=0.3)),
    "gemma2_untied_bias": (transformers.Gemma2Config, transformers.Gemma2ForCausalLM,
                           dict(sliding_window=4, tie_word_embeddings=False, attention_bias=True,
                                final_logit_softcapping=None)),
    # local RoPE base 10k unscaled, global 1e6 with linear scaling (as Gemma 3 4B+)
    "gemma3": (transformers.Gemma3TextConfig, transformers.Gemma3ForCausalLM,
               dict(num_hidden_layers=3, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
                    sliding_window=4, query_pre_attn_scalar=12, rope_parameters=dict(
                        full_attention=dict(rope_type="linear", factor=8.0, rope_theta=1e6),
                        sliding_attention=dict(rope_type="default", rope_theta=1e4)))),
}
MESH = None


def _mesh():
  global MESH
  MESH = MESH or make_mesh({"data": -1})
  return MESH


def _make_hf(name, tmp_path, **extra):
  cfg_cls, model_cls, base = ARCHS[name]
  torch.manual_seed(0)
  model = model_cls(cfg_cls(**dict(SMALL, **base, **extra))).eval()
  model.config._attn_implementation = "eager"   # the reference softmax(QK^T) path, soft-caps included
  with torch.no_grad():  # random (non-default) norms and biases so every tensor matters
    for n, p in model.named_parameters():
      if "norm" in n or n.endswith("bias"):
        p.add_(0.1 * torch.randn_like(p))
  folder = str(tmp_path / name)
  model.save_pretrained(folder)
  return model, folder


def _ids(t=11):
  return np.random.default_rng(0).integers(0, SMALL["vocab_size"], (2, t))


def _hf_logits(model, ids):
  with torch.no_grad():
    return model(torch.tensor(ids)).logits.float().numpy()


def _logits(graphdef, params, ids):
  return np.asarray(nnx.merge(graphdef, params)(jnp.asarray(ids)).logits)


def _files(folder):
  return {n: open(os.path.join(folder, n), "rb").read() for n in sorted(os.listdir(folder))}


@pytest.mark.parametrize("name", sorted(ARCHS))
def test_import_matches_transformers_logits_and_export_round_trips(name, tmp_path):
  """Imports scan their layers by default: every architecture's parity runs on the stack."""
  hf_model, folder = _make_hf(name, tmp_path)
  arch, cfg, graphdef, params = load_hf_model(folder, _mesh())
  assert cfg.scan_layers and params["layers"]["mlp"]["up"].shape[0] == cfg.n_layers
  assert cfg.tie_embeddings == hf_model.config.tie_word_embeddings
  assert cfg.o_bias == bool(getattr(hf_model.config, "attention_bias", False))
  ids = _ids()
  ref = _hf_logits(hf_model, ids)
  np.testing.assert_allclose(_logits(graphdef, params, ids), ref, atol=1e-4, rtol=1e-4)
  # export -> transformers reload -> same logits
  out = save_hf_model(str(tmp_path / "export"), arch, cfg, params)
  reloaded = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
  np.testing.assert_allclose(_hf_logits(reloaded, ids), ref, atol=1e-4, rtol=1e-4)
  # export -> import -> export is byte-identical (config.json and safetensors)
  arch2, cfg2, _, params2 = load_hf_model(out, _mesh())
  again = save_hf_model(str(tmp_path / "again"), arch2, cfg2, params2)
  assert _files(out) == _files(again)


@pytest.mark.parametrize("name", ["gemma2_untied_bias", "qwen2"])
def test_unrolled_and_scanned_imports_agree_and_export_the_same_bytes(name, tmp_path):
  """scan_layers=False reads the same tensors into one tree per layer: stacking those gives
  the scanned import exactly, logits agree to 1e-5 and both export byte-identical folders."""
  hf_model, folder = _make_hf(name, tmp_path)
  _, cfg_u, graphdef_u, unrolled = load_hf_model(folder, _mesh(), scan_layers=False)
  arch, cfg_s, graphdef_s, scanned = load_hf_model(folder, _mesh())
  assert not cfg_u.scan_layers and 0 in unrolled["layers"]
  for a, b in zip(jax.tree.leaves(stack_layers(unrolled)), jax.tree.leaves(scanned)):
    np.testing.assert_array_equal(a, b)
  np.testing.assert_allclose(_logits(graphdef_s, scanned, _ids()), _logits(graphdef_u, unrolled, _ids()), atol=1e-5)
  np.testing.assert_allclose(_logits(graphdef_u, unrolled, _ids()), _hf_logits(hf_model, _ids()), atol=1e-4)
  a = save_hf_model(str(tmp_path / "u"), arch, cfg_u, unrolled)
  b = save_hf_model(str(tmp_path / "s"), arch, cfg_s, scanned)
  assert _files(a) == _files(b)


def test_bfloat16_checkpoint_loads_and_round_trips_bytes(tmp_path):
  hf_model, _ = _make_hf("qwen3", tmp_path)
  folder = str(tmp_path / "bf16")
  hf_model.to(torch.bfloat16).save_pretrained(folder)
  with SafetensorsFolder(folder) as w:
    assert w.dtype("model.norm.weight") == "BF16" and str(w.get("model.norm.weight").dtype) == "bfloat16"
  arch, cfg, graphdef, params = load_hf_model(folder, _mesh())
  assert params["embed"].dtype == jnp.float32       # param_dtype, cast from the stored bf16
  ref = hf_model.float()
  np.testing.assert_allclose(_logits(graphdef, params, _ids()), _hf_logits(ref, _ids()), atol=1e-4)
  a = save_hf_model(str(tmp_path / "a"), arch, cfg, params, dtype="bfloat16")
  arch_a, cfg_a, _, params_a = load_hf_model(a, _mesh())
  b = save_hf_model(str(tmp_path / "b"), arch_a, cfg_a, params_a, dtype="bfloat16")
  assert _files(a) == _files(b)
  # the bf16 export holds exactly the checkpoint's bf16 values
  theirs, ours = load_file(os.path.join(folder, "model.safetensors")), load_file(os.path.join(a, "model.safetensors"))
  assert sorted(theirs) == sorted(ours)
  for k in theirs:
    np.testing.assert_array_equal(theirs[k], ours[k])


def test_sharded_index_loads(tmp_path):
  hf_model, _ = _make_hf("llama", tmp_path)
  sharded = str(tmp_path / "sharded")
  hf_model.save_pretrained(sharded, max_shard_size="20KB")
  assert os.path.exists(os.path.join(sharded, "model.safetensors.index.json"))
  assert len([n for n in os.listdir(sharded) if n.endswith(".safetensors")]) > 2
  _, _, graphdef, params = load_hf_model(sharded, _mesh())
  np.testing.assert_allclose(_logits(graphdef, params, _ids()), _hf_logits(hf_model, _ids()), atol=1e-4)
  # a shard the index names is gone
  index = json.load(open(os.path.join(sharded, "model.safetensors.index.json")))
  gone = sorted(set(index["weight_map"].values()))[1]
  os.remove(os.path.join(sharded, gone))
  with pytest.raises(FileNotFoundError, match=f"shard file.*missing.*{gone}"):
    load_hf_model(sharded, _mesh())


class _Recorder:
  """A SafetensorsFolder stand-in that records which block of which tensor was read."""

  def __init__(self, tensors):
    self.tensors, self.reads = tensors, []

  def read(self, key, index=()):
    self.reads.append((key, index))
    return self.tensors[key][index]


def test_blocks_are_read_per_slice_and_equal_the_full_transform():
  cfg = ModelConfig(vocab_size=16, d_model=12, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=4,
                    mlp_dim=10, qkv_bias=True, o_bias=True, tie_embeddings=False)
  rng = np.random.default_rng(0)
  maps = {m.ours[-1]: m for m in _param_map(cfg)}
  tensors = {m.hf: rng.normal(size=m.hf_shape).astype(np.float32) for m in maps.values()}
  weights = _Recorder(tensors)
  for name, index in [("q", (slice(None), slice(2, 4), slice(None))),      # heads-sharded
                      ("q", (slice(6, 12), slice(1, 2), slice(1, 3))),       # embed + head_dim too
                      ("o", (slice(1, 3), slice(None), slice(0, 6))),
                      ("k_bias", (slice(1, 2), slice(None))),
                      ("lm_head", (slice(None), slice(8, 16))), ("down", (slice(0, 5), slice(None)))]:
    m = maps[name]
    full = m.to_ours(tensors[m.hf])
    np.testing.assert_array_equal(m.read(weights, index), full[index])
    np.testing.assert_array_equal(m.to_hf(full), tensors[m.hf])
  # q heads 2..3 of [h*hd, d] are rows 8..16 only; lm_head vocab 8..16 rows 8..16 only
  assert weights.reads[0] == ("model.layers.0.self_attn.q_proj.weight", (slice(8, 16), slice(0, 12)))
  assert weights.reads[4] == ("lm_head.weight", (slice(8, 16), slice(0, 12)))


def test_stacked_blocks_read_only_their_layers_rows():
  """A device's block of a scanned [L, ...] parameter reads the layers its first slice
  covers, each only its own block, and equals that block of the stacked transforms."""
  cfg = ModelConfig(vocab_size=16, d_model=12, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=4,
                    mlp_dim=10, scan_layers=True)
  rng = np.random.default_rng(0)
  maps = _param_map(cfg)
  tensors = {m.hf: rng.normal(size=m.hf_shape).astype(np.float32) for m in maps}
  rows = sorted([m for m in maps if m.ours == ("layers", "attn", "q")], key=lambda m: m.layer)
  assert [m.layer for m in rows] == [0, 1, 2]
  full = np.stack([m.to_ours(tensors[m.hf]) for m in rows])                # [3, 12, 4, 4]
  weights = _Recorder(tensors)
  index = (slice(1, 3), slice(None), slice(2, 4), slice(None))
  np.testing.assert_array_equal(_read_stacked(weights, rows, index), full[index])
  assert [key for key, _ in weights.reads] == ["model.layers.1.self_attn.q_proj.weight",
                                                "model.layers.2.self_attn.q_proj.weight"]
  assert all(ix == (slice(8, 16), slice(0, 12)) for _, ix in weights.reads)   # heads 2..3 only


MULTI = r"""
import os, sys, json
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
import numpy as np, jax, jax.numpy as jnp
from flax import nnx
from rewardlab.models import hf
from rewardlab.sharding import make_mesh
reads = []
orig = hf.SafetensorsFolder.read
def read(self, key, index=()):
  out = orig(self, key, index)
  reads.append(out.size)
  return out
hf.SafetensorsFolder.read = read
ids = jnp.asarray(np.random.default_rng(0).integers(0, 96, (2, 11)))
out = {}
for name, spec in (("one", None), ("mesh", {"data": 2, "fsdp": 2, "tensor": 2})):
  mesh = make_mesh({"data": 1}, jax.devices()[:1]) if spec is None else make_mesh(spec)
  reads.clear()
  _, cfg, g, p = hf.load_hf_model(sys.argv[1], mesh)
  q = p["layers"]["attn"]["q"]   # stacked [L, d, h, hd]: layers whole, embed/heads sharded
  out[name] = dict(logits=np.asarray(jax.jit(lambda p: nnx.merge(g, p)(ids).logits)(p)).tolist(),
                   largest_read=max(reads), q_shard=list(q.addressable_shards[0].data.shape))
print(json.dumps(out))
"""


def test_sharded_mesh_reads_blocks_and_matches_one_device(tmp_path):
  hf_model, folder = _make_hf("qwen2", tmp_path)
  env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
  run = subprocess.run([sys.executable, "-c", MULTI, folder], capture_output=True, text=True, env=env,
                       timeout=300)
  assert run.returncode == 0, run.stderr[-3000:]
  out = json.loads(run.stdout.strip().splitlines()[-1])
  np.testing.assert_allclose(out["mesh"]["logits"], out["one"]["logits"], atol=1e-5)
  np.testing.assert_allclose(out["one"]["logits"], _hf_logits(hf_model, _ids()), atol=1e-4)
  assert out["mesh"]["q_shard"] == [2, 16, 2, 8]  # 2 layers, embed over fsdp=2, heads over tensor=2
  # the largest single read on the mesh is a shard of the embedding, not the whole matrix
  assert out["mesh"]["largest_read"] * 4 <= out["one"]["largest_read"]


# ----------------------------------------------------------------------------- refusals
def _edit_tensors(folder, fn):
  path = os.path.join(folder, "model.safetensors")
  tensors = load_file(path)
  fn(tensors)
  save_file(tensors, path, metadata={"format": "pt"})


def _edit_config(folder, **changes):
  path = os.path.join(folder, "config.json")
  cfg = json.load(open(path))
  cfg.update(changes)
  json.dump(cfg, open(path, "w"))


def test_unused_tensor_is_refused_by_name(tmp_path):
  _, folder = _make_hf("qwen3", tmp_path)
  # a bias config.json does not ask for: before, load_hf_model dropped o_proj.bias silently
  _edit_tensors(folder, lambda t: t.update({"model.layers.1.self_attn.o_proj.bias": np.zeros(32, np.float32)}))
  with pytest.raises(ValueError, match=r"would not use \(refusing to drop them\): "
                                       r"model\.layers\.1\.self_attn\.o_proj\.bias"):
    load_hf_model(folder, _mesh())


def test_missing_tensor_is_refused_by_name(tmp_path):
  _, folder = _make_hf("llama", tmp_path)   # untied: lm_head.weight is needed
  _edit_tensors(folder, lambda t: (t.pop("lm_head.weight"), t.pop("model.layers.0.mlp.up_proj.weight")))
  with pytest.raises(ValueError, match=r"missing tensor\(s\) the config needs: lm_head\.weight, "
                                       r"model\.layers\.0\.mlp\.up_proj\.weight"):
    load_hf_model(folder, _mesh())


def test_wrong_shape_is_refused_by_name(tmp_path):
  _, folder = _make_hf("llama", tmp_path)
  _edit_config(folder, intermediate_size=80)
  with pytest.raises(ValueError, match=r"wrong shape.*gate_proj\.weight is \(64, 32\), expected \(80, 32\) "
                                       r"\(for layers/mlp/gate\[0\]\)"):
    load_hf_model(folder, _mesh())


def test_tied_config_with_a_different_lm_head_is_refused(tmp_path):
  _, folder = _make_hf("qwen2", tmp_path)   # untied checkpoint ...
  _edit_config(folder, tie_word_embeddings=True)   # ... whose config claims tied
  with pytest.raises(ValueError, match="lm_head.weight differs from the embedding.*tie_word_embeddings=true"):
    load_hf_model(folder, _mesh())
  # a tied checkpoint that writes the shared matrix twice is fine: it is checked, not dropped
  hf_model, tied = _make_hf("qwen3", tmp_path)
  _edit_tensors(tied, lambda t: t.update({"lm_head.weight": t["model.embed_tokens.weight"].copy()}))
  _, _, graphdef, params = load_hf_model(tied, _mesh())
  np.testing.assert_allclose(_logits(graphdef, params, _ids()), _hf_logits(hf_model, _ids()), atol=1e-4)


def _seq_cls(tmp_path, **extra):
  extra = dict(SMALL, **extra)
  torch.manual_seed(1)
  cfg = transformers.Qwen2Config(num_labels=1, pad_token_id=0, **extra)
  hf = transformers.Qwen2ForSequenceClassification(cfg).eval()
  folder = str(tmp_path / "rm")
  hf.save_pretrained(folder)
  return hf, folder


def test_sequence_classifier_is_refused_by_the_causal_lm_importer(tmp_path):
  _, folder = _seq_cls(tmp_path)
  assert read_hf_config(folder)["tie_word_embeddings"] is False
  with pytest.raises(ValueError, match="Qwen2ForSequenceClassification is a sequence-classification "
                                       "checkpoint.*load_hf_reward_model"):
    load_hf_model(folder, _mesh())
  _edit_config(folder, architectures=["Qwen2ForCausalLM"])   # even when config.json says otherwise
  with pytest.raises(ValueError, match="score.weight.*load_hf_reward_model"):
    load_hf_model(folder, _mesh())


def test_sequence_classification_scores_match(tmp_path):
  hf, folder = _seq_cls(tmp_path)   # untied in config.json, and no lm_head: the trunk needs none
  ids = _ids()
  ids[:, 8:] = 0  # right padding: the score is read at the last non-pad token
  ids[1, 5:] = 0
  with torch.no_grad():
    ref = hf(torch.tensor(ids), attention_mask=torch.tensor(ids != 0)).logits.numpy()
  arch, mcfg, graphdef, params, head_def, head_params = load_hf_reward_model(folder, _mesh())
  assert "lm_head" not in params
  valid = jnp.asarray(ids != 0)
  hidden, _ = nnx.merge(graphdef, params).hidden_states(jnp.asarray(ids), valid=valid)
  scores = nnx.merge(head_def, head_params)(hidden, valid)
  np.testing.assert_allclose(np.asarray(scores), ref, atol=1e-4, rtol=1e-4)
  pad = {"pad_token_id": 0}   # transformers' classifier needs it to find each row's last token
  out = save_hf_model(str(tmp_path / "rm_export"), arch, mcfg, params, head_params, config_extra=pad)
  arch2, mcfg2, _, params2, _, head2 = load_hf_reward_model(out, _mesh())
  again = save_hf_model(str(tmp_path / "rm_again"), arch2, mcfg2, params2, head2, config_extra=pad)
  assert _files(out) == _files(again)
  reloaded = transformers.AutoModelForSequenceClassification.from_pretrained(out).eval()
  with torch.no_grad():
    np.testing.assert_allclose(reloaded(torch.tensor(ids), attention_mask=torch.tensor(ids != 0)).logits.numpy(),
                               ref, atol=1e-4)
  # a causal LM is not a reward model; an extra tensor in a classifier is refused like any other
  _, lm = _make_hf("qwen2", tmp_path)
  with pytest.raises(ValueError, match="no 'score.weight'.*load_hf_model"):
    load_hf_reward_model(lm, _mesh())
  _edit_tensors(folder, lambda t: t.update({"score.bias": np.zeros(1, np.float32)}))
  with pytest.raises(ValueError, match=r"would not use.*score\.bias"):
    load_hf_reward_model(folder, _mesh())


def test_bad_folders_name_what_is_wrong(tmp_path):
  _, folder = _make_hf("llama", tmp_path)
  cfg = read_hf_config(folder)
  _edit_config(folder, model_type="mamba")
  with pytest.raises(ValueError, match="model_type 'mamba' is not supported"):
    load_hf_model(folder, _mesh())
  _edit_config(folder, model_type="llama", mlp_bias=True, hidden_act="relu")
  with pytest.raises(ValueError, match="mlp_bias=true.*hidden_act='relu' is not supported"):
    load_hf_model(folder, _mesh())
  _edit_config(folder, mlp_bias=False, hidden_act="silu", rope_parameters=dict(rope_type="yarn", factor=2.0))
  with pytest.raises(ValueError, match="rope scaling type 'yarn' is not supported"):
    load_hf_model(folder, _mesh())
  _edit_config(folder, rope_parameters=cfg["rope_parameters"], hidden_size=None)
  with pytest.raises(ValueError, match=r"llama/config\.json: missing field\(s\) \['hidden_size'\]"):
    load_hf_model(folder, _mesh())
  json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
  open(os.path.join(folder, "config.json"), "a").write("}")
  with pytest.raises(ValueError, match=r"config\.json:\d+: not valid JSON"):
    load_hf_model(folder, _mesh())
  os.remove(os.path.join(folder, "config.json"))
  with pytest.raises(FileNotFoundError, match="no config.json"):
    load_hf_model(folder, _mesh())
  # no safetensors, only a torch pickle
  json.dump(cfg, open(os.path.join(folder, "config.json"), "w"))
  os.rename(os.path.join(folder, "model.safetensors"), os.path.join(folder, "pytorch_model.bin"))
  with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors.*pytorch_model\.bin.*torch pickles"):
    load_hf_model(folder, _mesh())
  # the weights alone do not make a tokenizer
  with pytest.raises(FileNotFoundError, match="no tokenizer.json"):
    load_tokenizer(folder)


def test_export_refuses_what_the_arch_cannot_express():
  cfg = ModelConfig(vocab_size=64, d_model=32, n_layers=1, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=64,
                    qkv_bias=True)   # q/k/v bias without an o bias: Qwen2, not Llama
  assert infer_hf_arch(cfg) == "qwen2"
  with pytest.raises(ValueError, match=r"llama config\.json cannot express.*o_bias: False vs True"):
    save_hf_model("/nonexistent", "llama", cfg, {})
  assert infer_hf_arch(ModelConfig(qk_norm=True, o_bias=True, qkv_bias=True)) == "qwen3"
  with pytest.raises(ValueError, match="no supported HF architecture"):
    infer_hf_arch(ModelConfig(qk_norm=True, embed_scale=True))


# ----------------------------------------------------------------------------- RoPE
def _ulps(a, b):
  return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64))


@pytest.mark.parametrize("rope", [None, dict(rope_type="linear", factor=4.0),
                                  dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                       original_max_position_embeddings=8192),
                                  dict(rope_type="llama3", factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                       original_max_position_embeddings=16)])
def test_rope_frequencies_match_transformers_to_one_ulp(rope):
  """Before: XLA's f32 pow put the base frequencies up to 18 ulp off, llama3 scaling 2 ulp."""
  from rewardlab.models.hf import model_config_from_hf
  worst = []
  for theta in (1e4, 5e4, 5e5, 1e6):
    for head_dim in (64, 128):
      params = dict(rope or dict(rope_type="default"), rope_theta=theta)
      hf_cfg = transformers.LlamaConfig(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                                        max_position_embeddings=16384, rope_parameters=params)
      ref = transformers.models.llama.modeling_llama.LlamaRotaryEmbedding(hf_cfg).inv_freq.numpy()
      ours = rope_inv_freq(model_config_from_hf(hf_cfg.to_dict())[1])
      worst.append(int(_ulps(ours, ref).max()))
  assert max(worst) <= 1, worst   # 1 ulp: torch's vectorised f32 pow is itself not correctly rounded


def test_llama3_rope_logits_stay_close_over_500_positions(tmp_path):
  """With sharp attention (weights init 0.2), a 2-ulp frequency error drifted the logits by
  2.7e-4 at positions 448..511; computed as transformers does, 3e-5."""
  torch.manual_seed(0)
  cfg = transformers.LlamaConfig(vocab_size=96, hidden_size=128, intermediate_size=64, num_hidden_layers=2,
                                 num_attention_heads=2, num_key_value_heads=1, head_dim=64,
                                 max_position_embeddings=1024, initializer_range=0.2,
                                 rope_parameters=dict(ROPE3, rope_theta=500000.0))
  model = transformers.LlamaForCausalLM(cfg).eval()
  model.save_pretrained(str(tmp_path / "l3"))
  ids = np.random.default_rng(0).integers(0, 96, (1, 512))
  _, _, graphdef, params = load_hf_model(str(tmp_path / "l3"), _mesh())
  diff = np.abs(_logits(graphdef, params, ids) - _hf_logits(model, ids)).max(-1)[0]
  assert diff[-64:].max() < 1e-4, diff[-64:].max()


def test_reward_model_scorer_scores_a_hf_classifier_folder_like_transformers(tmp_path):
  from test_hf_tokenizer_lora import make_tokenizer_folder
  from rewardlab.rewards.reward_model import RewardModelScorer
  hf, folder = _seq_cls(tmp_path, vocab_size=300)
  make_tokenizer_folder(folder, 300)
  scorer = RewardModelScorer(folder, _mesh(), batch_size=4, seq_len=24)
  prompts, completions = ["12+7=", "3+4=", "hello"], ["19", "8", " world, the assistant says hi"]
  got = scorer.score(prompts, completions)
  tokens, valid, _ = scorer._encode(list(zip(prompts, completions)), 0, 3)
  assert scorer.tokenizer.pad_id == 0 and not valid[:, -1].all()
  with torch.no_grad():
    ref = hf(torch.tensor(tokens), attention_mask=torch.tensor(valid)).logits.numpy()[:, 0]
  np.testing.assert_allclose(got, ref, atol=1e-4)


@pytest.mark.parametrize("name", ["gemma2", "gemma3"])
def test_sliding_window_on_a_long_left_padded_batch_matches_transformers(name, tmp_path):
  """24 tokens through windows of 4; row 1 left-padded by 7: its window counts tokens, and
  transformers (positions passed as generate() does) agrees on every real token."""
  hf_model, folder = _make_hf(name, tmp_path)
  _, cfg, graphdef, params = load_hf_model(folder, _mesh())
  assert cfg.sliding_window == 4 and any(cfg.layer_is_local) and not all(cfg.layer_is_local)
  ids = _ids(24)
  valid = np.ones(ids.shape, bool)
  valid[1, :7] = False
  positions = np.maximum(np.cumsum(valid, 1) - 1, 0)
  with torch.no_grad():
    ref = hf_model(torch.tensor(ids), attention_mask=torch.tensor(valid.astype(np.int64)),
                   position_ids=torch.tensor(positions)).logits.float().numpy()
  model = nnx.merge(graphdef, params)
  ours = np.asarray(model(jnp.asarray(ids), valid=jnp.asarray(valid)).logits)
  np.testing.assert_allclose(ours[valid], ref[valid], atol=1e-4, rtol=1e-4)
  alone = np.asarray(model(jnp.asarray(ids[1:, 7:])).logits)   # the same tokens, unpadded
  np.testing.assert_allclose(alone[0], ours[1, 7:], atol=1e-5)


def test_gemma_family_refusals(tmp_path):
  _, folder = _make_hf("gemma3", tmp_path)
  _edit_config(folder, layer_types=["sliding_attention", "full_attention", "full_attention"])
  with pytest.raises(ValueError, match="not every k-th layer global"):
    load_hf_model(folder, _mesh())
  _edit_config(folder, layer_types=["sliding_attention", "sliding_attention", "full_attention"],
               attn_logit_softcapping=30.0)
  with pytest.raises(ValueError, match="transformers does not apply it to Gemma 3"):
    load_hf_model(folder, _mesh())
  _edit_config(folder, attn_logit_softcapping=None, model_type="gemma3")
  with pytest.raises(ValueError, match="multimodal Gemma3ForConditionalGeneration.*gemma3_text"):
    load_hf_model(folder, _mesh())
  # a Gemma 2 checkpoint read as Gemma 1 has norms Gemma 1 does not use: refused by name
  _, g2 = _make_hf("gemma2", tmp_path)
  _edit_config(g2, model_type="gemma", layer_types=None)
  with pytest.raises(ValueError, match=r"would not use.*pre_feedforward_layernorm"):
    load_hf_model(g2, _mesh())
