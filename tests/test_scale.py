"""Scale features on CPU: attention kernels against the einsum reference, mixed precision
(f32 master weights, bf16 moments), config checks, and AOT compiles for a TPU topology
(skipped only when libtpu is absent)."""
import dataclasses

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest
from flax import nnx

from rewardlab.aot import abstract_train_state, count_collectives, libtpu_available, tpu_devices
from rewardlab.models import FAMILIES, ModelConfig, Transformer
from rewardlab.models.attention import check_attention_platform, cudnn_attention, splash_attention
from rewardlab.models.transformer import LayerInputs, attention_masks
from rewardlab.train.optim import make_optimizer, master_weights

CFG = ModelConfig(vocab_size=96, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=8, mlp_dim=64,
                  max_seq_len=32)


def _qkv(cfg, b=3, t=16, seed=0):
  ks = jax.random.split(jax.random.PRNGKey(seed), 3)
  q = jax.random.normal(ks[0], (b, t, cfg.n_heads, cfg.head_dim))
  k = jax.random.normal(ks[1], (b, t, cfg.n_kv_heads, cfg.head_dim))
  v = jax.random.normal(ks[2], (b, t, cfg.n_kv_heads, cfg.head_dim))
  return q, k, v


def _valid(b=3, t=16):
  """Row 0 left-padded by 5, row 1 right-padded by 4, row 2 full."""
  valid = np.ones((b, t), bool)
  valid[0, :5] = False
  valid[1, -4:] = False
  return jnp.asarray(valid)


def _reference(q, k, v, valid, cfg, local):
  """The model's own einsum attention (`Attention._attend`) on the same q/k/v."""
  masks, _ = attention_masks(cfg, valid, jnp.int32(0), q.shape[1])
  inputs = LayerInputs(None, masks[1 if local else 0], valid, jnp.int32(0))
  attn = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0))).layers[0].attn
  return attn._attend(q, k, v, inputs, None)[0]


KERNEL_CASES = {  # name -> (config changes, local layer)
    "causal_gqa": (dict(), False),
    "mha": (dict(n_kv_heads=4), False),
    "mqa_window": (dict(n_kv_heads=1, sliding_window=4), True),
    "gqa_window_query_scale": (dict(sliding_window=5, query_pre_attn_scalar=12.0), True),
}


@pytest.mark.parametrize("case", sorted(KERNEL_CASES))
def test_cudnn_wrapper_matches_the_reference(case):
  """The cuDNN path's wrapper (layout, GQA, scale, masks) through jax.nn.dot_product_attention's
  XLA implementation: equal outputs and gradients on real tokens."""
  changes, local = KERNEL_CASES[case]
  cfg = dataclasses.replace(CFG, **changes)
  q, k, v = _qkv(cfg)
  valid = _valid()
  masks, _ = attention_masks(cfg, valid, jnp.int32(0), q.shape[1])
  mask = masks[1 if local else 0]
  got = lambda q, k, v: cudnn_attention(q, k, v, mask, cfg, implementation="xla")  # noqa: E731
  ref = lambda q, k, v: _reference(q, k, v, valid, cfg, local)  # noqa: E731
  np.testing.assert_allclose(got(q, k, v)[valid], ref(q, k, v)[valid], atol=1e-5)
  assert np.all(np.isfinite(got(q, k, v)))                     # padding rows attend to themselves
  w = jax.random.normal(jax.random.PRNGKey(9), q.shape) * valid[:, :, None, None]
  g_got = jax.grad(lambda *a: jnp.sum(got(*a) * w), argnums=(0, 1, 2))(q, k, v)
  g_ref = jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_got, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("case", sorted(KERNEL_CASES) + ["softcap"])
def test_splash_kernel_in_interpret_mode_matches_the_reference(case):
  """Pallas splash attention (interpret mode on CPU): causal + padding via segment ids, GQA
  as one multi-query kernel per kv head, sliding windows, Gemma 2's logit soft-cap."""
  changes, local = KERNEL_CASES.get(case, (dict(attn_logit_softcap=2.0, sliding_window=6), True))
  cfg = dataclasses.replace(CFG, **changes)
  q, k, v = _qkv(cfg, seed=1)
  q = q * 3.0 if cfg.attn_logit_softcap else q                # scores large enough for the cap to bend
  valid = _valid()
  got = lambda q, k, v: splash_attention(q, k, v, valid, cfg, local, interpret=True)  # noqa: E731
  ref = lambda q, k, v: _reference(q, k, v, valid, cfg, local)  # noqa: E731
  np.testing.assert_allclose(got(q, k, v)[valid], ref(q, k, v)[valid], atol=1e-5)
  w = jax.random.normal(jax.random.PRNGKey(9), q.shape) * valid[:, :, None, None]
  g_got = jax.grad(lambda *a: jnp.sum(got(*a) * w), argnums=(0, 1, 2))(q, k, v)
  g_ref = jax.grad(lambda *a: jnp.sum(ref(*a) * w), argnums=(0, 1, 2))(q, k, v)
  for a, b in zip(g_got, g_ref):
    np.testing.assert_allclose(a, b, atol=1e-4)


@pytest.mark.parametrize("impl,family,scan", [("cudnn", "qwen3", True), ("splash", "gemma2", True),
                                              ("splash", "llama", False)])
def test_models_with_a_kernel_give_the_reference_logits(impl, family, scan):
  """Whole models: `model.attention` switches the cache-less pass to the kernel; logits of
  real tokens equal the einsum model's (Gemma 2: local and global layers in one scan,
  selected per layer, soft-capped)."""
  cfg = dataclasses.replace(CFG, **{**FAMILIES[family], "sliding_window": 5 if family == "gemma2" else 0,
                                    "scan_layers": scan})
  graphdef, params = nnx.split(Transformer(cfg, rngs=nnx.Rngs(0)), nnx.Param)
  kernel_graphdef = nnx.split(Transformer(dataclasses.replace(cfg, attention=impl), rngs=nnx.Rngs(0)), nnx.Param)[0]
  tokens = jax.random.randint(jax.random.PRNGKey(2), (3, 16), 0, cfg.vocab_size)
  valid = _valid()
  ref = nnx.merge(graphdef, params)(tokens, valid=valid).logits
  got = jax.jit(lambda p: nnx.merge(kernel_graphdef, p)(tokens, valid=valid).logits)(params)
  np.testing.assert_allclose(got[valid], ref[valid], atol=2e-5)


def test_attention_platform_checks_name_the_field():
  check_attention_platform(CFG, "cpu")
  with pytest.raises(ValueError, match="model.attention='splash' needs a TPU.*'cpu'.*use model.attention='xla'"):
    check_attention_platform(dataclasses.replace(CFG, attention="splash"), "cpu")
  with pytest.raises(ValueError, match="model.attention='cudnn' needs a GPU"):
    check_attention_platform(dataclasses.replace(CFG, attention="cudnn", dtype="bfloat16"), "tpu")
  with pytest.raises(ValueError, match="cudnn' needs model.dtype bfloat16 or float16"):
    check_attention_platform(dataclasses.replace(CFG, attention="cudnn"), "gpu")
  with pytest.raises(ValueError, match="cannot soft-cap"):
    ModelConfig(attention="cudnn", attn_logit_softcap=50.0)
  with pytest.raises(ValueError, match="attention='flash' not in"):
    ModelConfig(attention="flash")
  from rewardlab.train.config import ConfigError, base_config, validate
  from rewardlab.objectives import OBJECTIVES
  from rewardlab.pipelines import PIPELINES
  config = base_config()
  config.model.attention = "splash"
  with pytest.raises(ConfigError, match="config.model.attention='splash' needs a TPU"):
    validate(config, OBJECTIVES, PIPELINES)
  config.model.attention = "xla"
  config.optim.mu_dtype = "float8"
  with pytest.raises(ConfigError, match="optim.mu_dtype.*'float8' is not allowed"):
    validate(config, OBJECTIVES, PIPELINES)


# ----------------------------------------------------------------------------- precision
def _optim(**changes):
  return ml_collections.ConfigDict(dict(dict(
      name="adamw", lr=1e-2, schedule="constant", warmup_steps=0, min_lr_ratio=0.1, b1=0.9, b2=0.98,
      eps=1e-8, weight_decay=0.0, clip_norm=0.0, mu_dtype="", master_dtype="float32"), **changes))


def test_master_weights_keep_updates_bf16_params_lose():
  """lr 1e-3 steps on bf16 weights at 1.0 are under half a bf16 ulp (2^-8): applied in bf16
  they vanish; through the f32 master they accumulate (10 steps: 0.99 exactly in f32, the
  model sees bf16(0.99)). f32 parameters keep no master copy."""
  params = {"w": jnp.ones((3,), jnp.bfloat16), "b": jnp.zeros((2,), jnp.float32)}
  grads = {"w": jnp.ones((3,), jnp.bfloat16), "b": jnp.ones((2,), jnp.float32)}

  def train(opt, p):
    state = opt.init(p)
    for _ in range(10):
      updates, state = opt.update(grads, state, p)
      p = optax.apply_updates(p, updates)
    return p, state
  plain, _ = train(optax.sgd(1e-3), params)
  assert np.all(np.asarray(plain["w"], np.float32) == 1.0)
  mixed, state = train(master_weights(optax.sgd(1e-3)), params)
  np.testing.assert_allclose(state.master["w"], 0.99, rtol=1e-6)
  assert state.master["w"].dtype == jnp.float32 and isinstance(state.master["b"], optax.MaskedNode)
  assert mixed["w"].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(mixed["w"], np.float32), np.float32(jnp.bfloat16(0.99)))
  np.testing.assert_allclose(mixed["b"], plain["b"], rtol=1e-6)            # f32: exactly sgd's updates


def test_bf16_params_with_master_weights_train_like_f32():
  """Tiny SFT-style steps from the same (bf16-representable) weights: bf16 parameters and
  compute with f32 master weights track the f32 run (loss within 1%, weights within bf16
  rounding of f32's); bf16 first moments when asked, f32 second moments."""
  from rewardlab.ops.logprobs import token_logprobs_from_logits
  tokens = jax.random.randint(jax.random.PRNGKey(0), (8, 12), 0, CFG.vocab_size)
  bf16_cfg = dataclasses.replace(CFG, param_dtype="bfloat16", dtype="bfloat16")
  graphdef16, init16 = nnx.split(Transformer(bf16_cfg, rngs=nnx.Rngs(0)), nnx.Param)
  graphdef32 = nnx.split(Transformer(CFG, rngs=nnx.Rngs(0)), nnx.Param)[0]
  init16 = nnx.to_pure_dict(init16)

  def run(graphdef, params, optim, steps=8):
    opt, _ = make_optimizer(optim, steps)
    state = opt.init(params)

    def loss_of(p):
      logits = nnx.merge(graphdef, p)(tokens[:, :-1]).logits
      return -jnp.mean(token_logprobs_from_logits(logits, tokens[:, 1:]))

    @jax.jit
    def step(p, s):
      loss, g = jax.value_and_grad(loss_of)(p)
      u, s = opt.update(g, s, p)
      return optax.apply_updates(p, u), s, loss
    losses = []
    for _ in range(steps):
      params, state, loss = step(params, state)
      losses.append(float(loss))
    return params, state, losses
  f32_params, _, f32_losses = run(graphdef32, jax.tree.map(lambda x: x.astype(jnp.float32), init16), _optim())
  params, state, losses = run(graphdef16, init16, _optim(mu_dtype="bfloat16"))
  assert losses[-1] < losses[0] - 1.0                                       # it learns
  np.testing.assert_allclose(losses, f32_losses, rtol=0.01)
  assert params["embed"].dtype == jnp.bfloat16
  # Adam normalises updates, so an entry whose tiny gradient flips sign moves the other way:
  # compare on average, against how far training moved the weights
  moved = np.mean(np.abs(f32_params["embed"] - np.asarray(init16["embed"], np.float32)))
  apart = np.mean(np.abs(np.asarray(params["embed"], np.float32) - f32_params["embed"]))
  assert apart < 0.1 * moved, (apart, moved)
  inner = state.inner[0][0]                                   # chain -> adamw -> ScaleByAdamState
  assert inner.mu["embed"].dtype == jnp.bfloat16 and inner.nu["embed"].dtype == jnp.float32
  assert state.master["embed"].dtype == jnp.float32
  # the master is the f32 trajectory; the parameters are it rounded to bf16
  np.testing.assert_array_equal(params["embed"], state.master["embed"].astype(jnp.bfloat16))
  with pytest.raises(ValueError, match="optim.master_dtype='float64' is not allowed"):
    make_optimizer(_optim(master_dtype="float64"), 10)


# ----------------------------------------------------------------------------- TPU AOT
needs_libtpu = pytest.mark.skipif(not libtpu_available(), reason="libtpu not installed (pip install -e '.[tpu]')")


@needs_libtpu
def test_tiny_scanned_sft_step_compiles_for_a_tpu_topology():
  """The real SFT update step of a tiny scanned model, FSDP over a v5p:2x2x2 topology's 8
  abstract chips, traced under the mesh (activation constraints on): it compiles, its
  parameters and Adam moments stay sharded, and it holds one while loop body per scan
  (HLO without a per-layer copy), weights all-gathered inside it."""
  from rewardlab.data import SequenceBatch
  from rewardlab.pipelines.sft import make_sft_loss_fn
  from rewardlab.sharding import BATCH_AXES, make_mesh
  from rewardlab.train.config import base_config
  from rewardlab.train.step import make_update_step
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = make_mesh({"data": 1, "fsdp": 8, "tensor": 1}, tpu_devices("v5p:2x2x2"))
  config = base_config()
  optimizer, schedule = make_optimizer(config.optim, 10)
  hlo = {}
  for n_layers in (2, 6):
    cfg = dataclasses.replace(CFG, **FAMILIES["qwen3"], d_model=128, mlp_dim=256, n_layers=n_layers,
                              scan_layers=True, remat="full", max_seq_len=128)
    graphdef, state = abstract_train_state(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), optimizer, mesh)
    assert state.params["layers"]["attn"]["q"].sharding.spec == P(None, "fsdp", None, None)
    sds = jax.ShapeDtypeStruct((16, 128), jnp.int32, sharding=NamedSharding(mesh, P(BATCH_AXES)))
    batch = SequenceBatch(sds, sds.update(dtype=jnp.bool_), sds.update(dtype=jnp.bool_))
    step = make_update_step(graphdef, make_sft_loss_fn(config.objective), optimizer, schedule,
                            jax.tree.map(lambda x: x.sharding, state), jax.tree.map(lambda x: x.sharding, batch))
    with jax.set_mesh(mesh):
      compiled = step.lower(state, batch).compile()
    hlo[n_layers] = compiled.as_text()
    assert compiled.memory_analysis().temp_size_in_bytes > 0
  # depth lives in the loop trip count, not in the program: 6 layers is no bigger than 2
  assert len(hlo[6]) < 1.1 * len(hlo[2])
  assert count_collectives(hlo[6]) == count_collectives(hlo[2])
  assert count_collectives(hlo[6])["all-gather"] > 0


@needs_libtpu
def test_splash_attention_compiles_for_a_tpu_topology():
  """The splash kernel (not its interpret mode) lowers to Mosaic and compiles for TPU, sharded
  per device over batch and kv heads, forward and backward, GQA with a sliding window."""
  from rewardlab.sharding import make_mesh
  from jax.sharding import NamedSharding, PartitionSpec as P
  mesh = make_mesh({"data": 2, "fsdp": 2, "tensor": 2}, tpu_devices("v5p:2x2x2"))
  cfg = dataclasses.replace(CFG, n_heads=8, n_kv_heads=2, head_dim=128, sliding_window=256)
  b, t = 8, 512
  sharded = lambda shape, spec, dtype=jnp.bfloat16: jax.ShapeDtypeStruct(  # noqa: E731
      shape, dtype, sharding=NamedSharding(mesh, spec))
  q = sharded((b, t, 8, 128), P(("data", "fsdp"), None, "tensor", None))
  kv = sharded((b, t, 2, 128), P(("data", "fsdp"), None, "tensor", None))
  valid = sharded((b, t), P(("data", "fsdp"), None), jnp.bool_)

  def loss(q, k, v, valid):
    return jnp.sum(splash_attention(q, k, v, valid, cfg, local=True).astype(jnp.float32))
  with jax.set_mesh(mesh):
    compiled = jax.jit(jax.grad(loss, argnums=(0, 1, 2))).lower(q, kv, kv, valid).compile()
  text = compiled.as_text()
  assert "tpu_custom_call" in text                     # the Mosaic kernels, not an XLA fallback
  assert count_collectives(text)["all-gather"] == 0    # each device runs on its own shard
