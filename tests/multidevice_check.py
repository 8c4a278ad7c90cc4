"""Run in a subprocess with 8 simulated CPU devices (see test_sharding.py).

Builds the same SFT update step on a 1-device mesh and on a data=2 x fsdp=2 x tensor=2
mesh, runs two steps from the same initial parameters, and prints the differences as JSON.
Then the same for scanned layers traced under the mesh (`jax.set_mesh`: the model's
activation sharding constraints apply) on data x fsdp x tensor = 2 x 2 x 2,
the sampler on scanned layers, and a forward pass through each attention kernel wrapper
(splash in interpret mode, per device via shard_map).
"""
import contextlib
import dataclasses
import json
import os
import sys

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8"
os.environ["JAX_PLATFORMS"] = "cpu"
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from rewardlab.data import ByteTokenizer, make_task, prompt_batch, sft_batch  # noqa: E402
from rewardlab.sampling import Sampler  # noqa: E402
from rewardlab.models import ModelConfig, Transformer  # noqa: E402
from rewardlab.train.config import base_config  # noqa: E402
from rewardlab.train.optim import make_optimizer  # noqa: E402
from rewardlab.pipelines.sft import make_sft_loss_fn  # noqa: E402
from rewardlab.sharding import batch_sharding, make_mesh, shard_batch  # noqa: E402
from rewardlab.train.state import create_train_state, init_params, shardings_of  # noqa: E402
from rewardlab.train.step import make_loss_and_grad, make_update_step  # noqa: E402


def run(mesh, config, model_cfg, batches, context=False):
  with jax.set_mesh(mesh) if context else contextlib.nullcontext():
    return _run(mesh, config, model_cfg, batches)


def _run(mesh, config, model_cfg, batches):
  graphdef, params = init_params(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)), mesh)
  optimizer, schedule = make_optimizer(config.optim, 10)
  state = create_train_state(params, optimizer, mesh, 0)
  loss_fn = make_sft_loss_fn(config.objective, chunk_size=96)
  sharded = shard_batch(batches[0], mesh)
  (loss, _), grads = jax.jit(make_loss_and_grad(graphdef, loss_fn))(state.params, None, sharded,
                                                                    jax.random.PRNGKey(0))
  step = make_update_step(graphdef, loss_fn, optimizer, schedule, shardings_of(state),
                          batch_sharding(mesh), donate=False)
  losses = []
  for b in batches:
    state, metrics = step(state, shard_batch(b, mesh))
    losses.append(float(metrics["loss"]))
  layer = (lambda t: t["layers"]) if model_cfg.scan_layers else (lambda t: t["layers"][0])
  specs = {"q": str(layer(state.params)["attn"]["q"].sharding.spec),
           "embed": str(state.params["embed"].sharding.spec),
           "mu_q": str(layer(state.opt_state.inner[1][0].mu)["attn"]["q"].sharding.spec)}
  return float(loss), jax.device_get(grads), losses, jax.device_get(state.params), specs


def sample(mesh, model_cfg, context=False):
  """Group sampling (n=2) with temperature/top-p under the given mesh, decoding in three
  segments over a growing cache (grown and re-sharded between segments)."""
  graphdef, params = init_params(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)), mesh)
  tok = ByteTokenizer()
  sampler = Sampler(graphdef, model_cfg.max_seq_len, tok, max_prompt_len=10, mesh=mesh)
  prompts = prompt_batch([f"{i}+{2 * i}=" for i in range(8)], tok, 10)
  with jax.set_mesh(mesh) if context else contextlib.nullcontext():
    out = sampler.sample(params, prompts, jax.random.PRNGKey(7), max_new_tokens=8, n=2,
                         temperature=0.9, top_p=0.95, grow_cache_every=3)
  return np.asarray(out.tokens), np.asarray(out.logps_model), str(out.tokens.sharding.spec)


def forward(mesh, model_cfg, tokens, valid):
  """Logits of a forward pass traced under the mesh (kernels run per device)."""
  graphdef, params = init_params(lambda: Transformer(model_cfg, rngs=nnx.Rngs(0)), mesh)
  with jax.set_mesh(mesh):
    fn = jax.jit(lambda p, t, v: nnx.merge(graphdef, p)(t, valid=v).logits)
    return np.asarray(fn(params, *shard_batch((tokens, valid), mesh)))


def compare(one, other) -> dict:
  """Loss / gradient / parameter differences between two `run` results."""
  return {"loss_1": one[0], "loss_8": other[0], "losses_1": one[2], "losses_8": other[2],
          "grad_max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in
                                   zip(jax.tree.leaves(one[1]), jax.tree.leaves(other[1]))),
          "grad_scale": max(float(np.max(np.abs(a))) for a in jax.tree.leaves(one[1])),
          "param_max_abs_diff": max(float(np.max(np.abs(a - b))) for a, b in
                                    zip(jax.tree.leaves(one[3]), jax.tree.leaves(other[3]))),
          "specs_8": other[4]}


def new_paths(config, model_cfg, batches) -> dict:
  """Scanned layers with activation constraints on data x fsdp x tensor = 2 x 2 x 2 (tensor
  parallelism by mesh and rules only), the sampler on them, and the attention kernel
  wrappers, each against one device."""
  scan_cfg = dataclasses.replace(model_cfg, scan_layers=True, remat="full")
  single = make_mesh({"data": 1}, jax.devices()[:1])
  one = run(single, config, scan_cfg, batches)
  out = {"scan_2x2x2": compare(one, run(make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), config, scan_cfg,
                                        batches, context=True))}
  s1 = sample(single, scan_cfg)
  s8 = sample(make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), scan_cfg, context=True)
  out["scan_sample"] = {"tokens_equal": bool(np.array_equal(s1[0], s8[0])),
                        "logp_max_abs_diff": float(np.max(np.abs(s1[1] - s8[1])))}
  tokens = np.asarray(batches[0].tokens)
  valid = np.ones(tokens.shape, bool)
  valid[::2, :3] = False                                                     # left padding in half the rows
  mesh8 = make_mesh({"data": 2, "fsdp": 2, "tensor": 2})
  ref = forward(single, scan_cfg, tokens, valid)
  for impl in ("cudnn", "splash"):
    got = forward(mesh8, dataclasses.replace(scan_cfg, attention=impl), tokens, valid)
    out[f"attention_{impl}_max_abs_diff"] = float(np.max(np.abs(got - ref)[valid]))
  return out


def traced_under_mesh() -> dict:
  """What the constraints change and that runs get them: the tiny scanned SFT config's update
  step on fsdp=8 as `rewardlab plan` compiles it here (under the mesh) and compiled without
  the mesh context; and the mesh a pipeline's runner traces under."""
  sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs"))
  import sft_arithmetic
  from rewardlab.pipelines import common
  from rewardlab.plan import planner
  from rewardlab.plan.chips import local_topology
  config = sft_arithmetic.get_config("tiny")
  config.model.scan_layers = True
  config.mesh.update(data=1, fsdp=8, tensor=1)
  config.data.batch_size = 16
  topo = local_topology(measure=False)
  under = planner.plan_config(config, topo, only=["sft_update"]).functions[0].collectives
  without = planner._plan_on(config, make_mesh(dict(config.mesh), topo.devices), topo, 0.9, ["sft_update"], "",
                             None).functions[0].collectives
  seen = {}
  common.run_built = lambda built, workdir, stop: seen.update(mesh=dict(jax.sharding.get_abstract_mesh().shape))
  common.runner(lambda config, workdir: None)(config, "/nonexistent")
  return {"all_reduce_bytes_under_mesh": under["all-reduce"]["bytes"],
          "all_reduce_bytes_without": without["all-reduce"]["bytes"], "runner_mesh": seen["mesh"]}


def main():
  config = base_config()
  model_cfg = ModelConfig(vocab_size=264, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                          head_dim=8, mlp_dim=64, max_seq_len=32)
  task, tok = make_task("addition"), ByteTokenizer()
  batches = [sft_batch(task.sample_many(np.random.default_rng(i), 8), tok, 16) for i in range(2)]
  one = run(make_mesh({"data": 1}, jax.devices()[:1]), config, model_cfg, batches)
  eight = run(make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), config, model_cfg, batches)
  sample_1 = sample(make_mesh({"data": 1}, jax.devices()[:1]), model_cfg)
  sample_8 = sample(make_mesh({"data": 2, "fsdp": 2, "tensor": 2}), model_cfg)
  print(json.dumps({"sample_tokens_equal": bool(np.array_equal(sample_1[0], sample_8[0])),
                    "sample_logp_max_abs_diff": float(np.max(np.abs(sample_1[1] - sample_8[1]))),
                    "sample_out_spec": sample_8[2],
                    "n_devices": jax.device_count(), **compare(one, eight),
                    "new": new_paths(config, model_cfg, batches), "traced": traced_under_mesh()}))


if __name__ == "__main__":
  main()
