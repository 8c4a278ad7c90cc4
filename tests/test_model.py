import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardlab.models import FAMILIES, ModelConfig, Transformer, init_cache
from rewardlab.models.transformer import rope, stack_layers, unstack_layers


def _model(cfg, seed=0):
  return Transformer(cfg, rngs=nnx.Rngs(seed))


def _tokens(b, t, v, seed=0):
  return jax.random.randint(jax.random.PRNGKey(seed), (b, t), 0, v)


@pytest.mark.parametrize("family", sorted(FAMILIES))
def test_causality_every_family(family, tiny_model_cfg):
  cfg = dataclasses.replace(tiny_model_cfg, **FAMILIES[family])
  model = _model(cfg)
  toks = _tokens(2, 10, cfg.vocab_size)
  changed = toks.at[:, 6].set((toks[:, 6] + 1) % cfg.vocab_size)
  a, b = model(toks).logits, model(changed).logits
  np.testing.assert_array_equal(a[:, :6], b[:, :6])      # earlier positions untouched
  assert not np.allclose(a[:, 6:], b[:, 6:])              # later ones do change
  assert cfg.num_params() == sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


def test_rope_scores_depend_only_on_relative_position():
  q = jax.random.normal(jax.random.PRNGKey(0), (1, 1, 1, 16))
  k = jax.random.normal(jax.random.PRNGKey(1), (1, 1, 1, 16))

  def score(m, n):
    qm = rope(q, jnp.array([[m]]), 10_000.0)
    kn = rope(k, jnp.array([[n]]), 10_000.0)
    return float(jnp.sum(qm * kn))

  assert score(3, 1) == pytest.approx(score(10, 8), abs=1e-4)
  assert score(7, 7) == pytest.approx(score(0, 0), abs=1e-4)
  assert score(5, 1) != pytest.approx(score(5, 2), abs=1e-3)
  # rotation preserves norms
  np.testing.assert_allclose(jnp.linalg.norm(rope(q, jnp.array([[123]]), 1e4)),
                             jnp.linalg.norm(q), rtol=1e-5)


def _plain_mha_numpy(params, cfg, tokens):
  """Independent numpy reference: multi-head attention with one kv head per query head."""
  p = jax.tree.map(np.asarray, params)
  x = p["embed"][tokens]

  def norm(x, w):
    return x / np.sqrt(np.mean(x * x, -1, keepdims=True) + cfg.norm_eps) * w

  def rope_np(x, pos):
    half = x.shape[-1] // 2
    inv = 1.0 / (cfg.rope_theta ** (np.arange(half) / half))
    ang = pos[:, None] * inv
    cos, sin = np.cos(ang)[:, None], np.sin(ang)[:, None]
    x1, x2 = x[..., :half], x[..., half:]
    return np.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], -1)

  t = tokens.shape[0]
  pos = np.arange(t)
  for i in range(cfg.n_layers):
    lp = p["layers"][i]
    h = norm(x, lp["attn_norm"]["scale"])
    q = rope_np(np.einsum("td,dhk->thk", h, lp["attn"]["q"]), pos)
    k = rope_np(np.einsum("td,dhk->thk", h, lp["attn"]["k"]), pos)
    v = np.einsum("td,dhk->thk", h, lp["attn"]["v"])
    s = np.einsum("thk,shk->hts", q, k) / np.sqrt(cfg.head_dim)
    s = np.where(np.tril(np.ones((t, t), bool)), s, -np.inf)
    w = np.exp(s - s.max(-1, keepdims=True))
    w /= w.sum(-1, keepdims=True)
    o = np.einsum("hts,shk->thk", w, v)
    x = x + np.einsum("thk,hkd->td", o, lp["attn"]["o"])
    h = norm(x, lp["mlp_norm"]["scale"])
    g = h @ lp["mlp"]["gate"]
    x = x + ((g / (1 + np.exp(-g))) * (h @ lp["mlp"]["up"])) @ lp["mlp"]["down"]
  x = norm(x, p["final_norm"]["scale"])
  return x @ p["embed"].T


def test_gqa_with_all_kv_heads_equals_plain_multi_head_attention(tiny_model_cfg):
  cfg = dataclasses.replace(tiny_model_cfg, n_kv_heads=tiny_model_cfg.n_heads)
  model = _model(cfg)
  toks = _tokens(1, 9, cfg.vocab_size)
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  ref = _plain_mha_numpy(params, cfg, np.asarray(toks[0]))
  np.testing.assert_allclose(model(toks).logits[0], ref, atol=2e-4, rtol=2e-4)


def test_gqa_shares_kv_heads(tiny_model_cfg):
  """Grouped-query attention equals MHA whose kv heads are copies of the shared ones."""
  gqa = _model(tiny_model_cfg)
  mha_cfg = dataclasses.replace(tiny_model_cfg, n_kv_heads=tiny_model_cfg.n_heads)
  mha = _model(mha_cfg)
  p = nnx.to_pure_dict(nnx.state(gqa, nnx.Param))
  g = tiny_model_cfg.n_heads // tiny_model_cfg.n_kv_heads
  q = jax.tree.map(lambda x: x, p)
  for layer in q["layers"].values():
    for name in ("k", "v"):
      layer["attn"][name] = jnp.repeat(layer["attn"][name], g, axis=1)
  nnx.update(mha, q)
  toks = _tokens(2, 7, tiny_model_cfg.vocab_size)
  np.testing.assert_allclose(gqa(toks).logits, mha(toks).logits, atol=1e-5)


def _assert_cached_decode_matches_full_forward(model, cfg, cache):
  """A 5-token prefill into `cache` (room for 12), then 3 one-token steps, give the logits
  of one full forward pass."""
  toks = _tokens(2, 8, cfg.vocab_size)
  full = model(toks).logits
  pos = jnp.broadcast_to(jnp.arange(8), (2, 8))
  out = model(toks[:, :5], pos[:, :5], cache=cache)
  pieces = [out.logits]
  for t in range(5, 8):
    out = model(toks[:, t:t + 1], pos[:, t:t + 1], cache=out.cache)
    pieces.append(out.logits)
  np.testing.assert_allclose(jnp.concatenate(pieces, 1), full, atol=1e-5)


def test_cached_decoding_matches_full_forward(tiny_model_cfg):
  model = _model(tiny_model_cfg)
  _assert_cached_decode_matches_full_forward(model, tiny_model_cfg, init_cache(tiny_model_cfg, 2, 12))


def test_left_padding_does_not_change_real_positions(tiny_model_cfg):
  model = _model(tiny_model_cfg)
  toks = _tokens(1, 6, tiny_model_cfg.vocab_size)
  padded = jnp.concatenate([jnp.zeros((1, 3), toks.dtype), toks], 1)
  valid = jnp.array([[False] * 3 + [True] * 6])
  a = model(toks).logits
  b = model(padded, valid=valid).logits[:, 3:]
  np.testing.assert_allclose(a, b, atol=1e-5)


def _scanned_twin(cfg, seed=0):
  """(unrolled model, scanned model with the same weights)."""
  unrolled = _model(cfg, seed)
  scanned = _model(dataclasses.replace(cfg, scan_layers=True), seed + 1)
  graphdef, params = nnx.split(scanned, nnx.Param)
  nnx.replace_by_pure_dict(params, stack_layers(nnx.to_pure_dict(nnx.state(unrolled, nnx.Param))))
  return unrolled, nnx.merge(graphdef, params)


# Gemma 2 / 3 mix global and sliding-window layers (window 3 < 9 tokens): the scan selects
# each layer's mask and RoPE by its integer kind
SCAN_FAMILIES = {"qwen2": {}, "qwen3": {}, "gemma2": dict(sliding_window=3),
                 "gemma3": dict(sliding_window=3, n_layers=4, sliding_window_pattern=2)}


@pytest.mark.parametrize("family", sorted(SCAN_FAMILIES))
def test_scanned_layers_equal_unrolled_logits_and_gradients(family, tiny_model_cfg):
  cfg = dataclasses.replace(tiny_model_cfg, **{**FAMILIES[family], **SCAN_FAMILIES[family]})
  unrolled, scanned = _scanned_twin(cfg)
  toks = _tokens(2, 9, cfg.vocab_size)
  valid = jnp.array([[False] * 2 + [True] * 7, [True] * 9])                  # left padding in row 0
  a, b = unrolled(toks, valid=valid).logits, scanned(toks, valid=valid).logits
  np.testing.assert_allclose(b, a, atol=1e-5, rtol=1e-5)
  assert nnx.state(scanned, nnx.Param)["layers"]["attn"]["q"][...].shape[0] == cfg.n_layers

  def loss(m):
    return jnp.mean(m(toks, valid=valid).logits[:, 2:] ** 2)
  g_unrolled = nnx.to_pure_dict(nnx.grad(loss)(unrolled))
  g_scanned = unstack_layers(nnx.to_pure_dict(nnx.grad(loss)(scanned)))
  for x, y in zip(jax.tree.leaves(g_unrolled), jax.tree.leaves(g_scanned)):
    np.testing.assert_allclose(y, x, atol=1e-5, rtol=1e-4)


def test_stack_and_unstack_layers_are_inverse(tiny_model_cfg):
  params = nnx.to_pure_dict(nnx.state(_model(tiny_model_cfg), nnx.Param))
  stacked = stack_layers(params)
  assert stacked["layers"]["mlp"]["up"].shape == (2, 32, 64)
  np.testing.assert_array_equal(stacked["layers"]["mlp"]["up"][1], params["layers"][1]["mlp"]["up"])
  back = unstack_layers(stacked)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for x, y in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    np.testing.assert_array_equal(x, y)
  with pytest.raises(ValueError, match="already stacked"):
    stack_layers(stacked)


@pytest.mark.parametrize("family", ["qwen3", "gemma2"])
def test_scanned_cached_decoding_matches_full_forward(family, tiny_model_cfg):
  """The stacked [L, ...] cache carried through the scan, written in place per layer."""
  cfg = dataclasses.replace(tiny_model_cfg, **{**FAMILIES[family], **SCAN_FAMILIES[family]}, scan_layers=True)
  model = _model(cfg)
  cache = init_cache(cfg, 2, 12)
  assert cache.k.shape == (cfg.n_layers, 2, cfg.n_kv_heads, cfg.head_dim, 12)
  _assert_cached_decode_matches_full_forward(model, cfg, cache)


@pytest.mark.parametrize("scan", [False, True])
def test_remat_policies_give_the_same_gradients(scan, tiny_model_cfg):
  cfg = dataclasses.replace(tiny_model_cfg, scan_layers=scan)
  toks = _tokens(2, 8, cfg.vocab_size)

  def grads(remat):
    model = _model(dataclasses.replace(cfg, remat=remat))
    return nnx.grad(lambda m: jnp.mean(m(toks).logits ** 2))(model)
  ref = jax.tree.leaves(grads("none"))
  for remat in ("full", "dots_with_no_batch_dims_saveable", True):
    for a, b in zip(ref, jax.tree.leaves(grads(remat))):
      np.testing.assert_allclose(b, a, atol=1e-6)
  assert ModelConfig(remat=True).remat == "full" and ModelConfig(remat=False).remat == "none"
  with pytest.raises(ValueError, match="remat='dots'.*not in"):
    ModelConfig(remat="dots")


def test_bfloat16_compute_and_remat(tiny_model_cfg):
  toks = _tokens(2, 8, tiny_model_cfg.vocab_size)
  ref = _model(tiny_model_cfg)
  bf16 = _model(dataclasses.replace(tiny_model_cfg, dtype="bfloat16"))
  assert bf16(toks).logits.dtype == jnp.float32
  assert nnx.state(bf16, nnx.Param)["embed"][...].dtype == jnp.float32  # params stay f32
  np.testing.assert_allclose(bf16(toks).logits, ref(toks).logits, atol=0.1)

  remat = _model(dataclasses.replace(tiny_model_cfg, remat=True))

  def loss(m):
    return jnp.mean(m(toks).logits ** 2)

  g1 = nnx.grad(loss)(ref)
  g2 = nnx.grad(loss)(remat)
  for a, b in zip(jax.tree.leaves(g1), jax.tree.leaves(g2)):
    np.testing.assert_allclose(a, b, atol=1e-6)


def test_params_carry_logical_axes(tiny_model_cfg):
  model = _model(dataclasses.replace(tiny_model_cfg, tie_embeddings=False, qkv_bias=True))
  axes = {"/".join(map(str, path)): v.get_metadata()["axes"]
          for path, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  assert axes["embed"] == ("vocab", "embed")
  assert axes["lm_head"] == ("embed", "vocab")
  assert axes["layers/0/attn/q"] == ("embed", "heads", "head_dim")
  assert axes["layers/0/attn/k_bias"] == ("kv_heads", "head_dim")
  assert axes["layers/1/mlp/down"] == ("mlp", "embed")
  scanned = _model(dataclasses.replace(tiny_model_cfg, scan_layers=True, qkv_bias=True))
  axes = {"/".join(map(str, path)): v.get_metadata()["axes"]
          for path, v in nnx.to_flat_state(nnx.state(scanned, nnx.Param))}
  assert axes["layers/attn/q"] == ("layers", "embed", "heads", "head_dim")
  assert axes["layers/attn/k_bias"] == ("layers", "kv_heads", "head_dim")
  assert axes["layers/attn_norm/scale"] == ("layers", "norm")


def test_bad_model_config_names_the_field():
  with pytest.raises(ValueError, match="n_kv_heads"):
    ModelConfig(n_heads=4, n_kv_heads=3)
  with pytest.raises(ValueError, match="unknown field.*d_modle"):
    ModelConfig.from_mapping({"d_modle": 3})
