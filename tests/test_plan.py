"""`rewardlab plan`: loop-aware cost and collectives from HLO, memory figures checked against
the live train state, the fit check that refuses a run, the CLI, and (with libtpu) a plan
for a TPU topology."""
import dataclasses
import importlib.util
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from helpers import ROOT, load_config, micro_sft_config
from rewardlab.plan import chips, hlo
from rewardlab.plan.chips import local_topology
from rewardlab.plan.fit import DoesNotFit, check_fit
from rewardlab.plan.functions import per_chip_bytes
from rewardlab.plan.planner import plan_config

HAS_LIBTPU = importlib.util.find_spec("libtpu") is not None


def test_loop_aware_cost_counts_every_iteration_of_nested_scans():
  """XLA's own cost analysis counts a loop body once; the loop-aware figure counts 3 x 5
  iterations of a [128, 256] x [256, 256] matmul, nothing less and little more."""
  def f(x, w):
    def outer(c, wo):
      return jax.lax.scan(lambda c, wi: (jnp.tanh(c @ wi), None), c, wo)[0], None
    return jax.lax.scan(outer, x, w)[0].sum()
  compiled = jax.jit(f).lower(jax.ShapeDtypeStruct((128, 256), jnp.float32),
                              jax.ShapeDtypeStruct((3, 5, 256, 256), jnp.float32)).compile()
  cost = hlo.loop_aware_cost(compiled.as_text())
  matmuls = 2 * 128 * 256 * 256 * 15
  assert matmuls <= cost.flops <= 1.01 * matmuls
  assert cost.xla_flops < matmuls / 10
  assert sorted(lp["trip"] for lp in cost.loops) == [3, 5] and all(lp["known"] for lp in cost.loops)
  weight = 256 * 256 * 4
  assert 15 * weight <= cost.bytes_accessed <= 15 * 8 * weight   # a slice per iteration, not the stack


# An optimized-HLO excerpt in the TPU compiler's form: no recorded trip count (the condition
# compares a counter that starts at 2 with 6: 4 trips), async collectives inside the body.
TPU_STYLE_HLO = """HloModule jit_step, is_scheduled=true

%cond (p.0: (s32[], bf16[8,128])) -> pred[] {
  %p.0 = (s32[], bf16[8,128]{1,0:T(8,128)(2,1)}) parameter(0)
  %limit = s32[]{:T(128)} constant(6)
  %i.0 = s32[]{:T(128)} get-tuple-element(%p.0), index=0
  ROOT %lt = pred[]{:T(512)} compare(%i.0, %limit), direction=LT
}

%body (p.1: (s32[], bf16[8,128])) -> (s32[], bf16[8,128]) {
  %p.1 = (s32[], bf16[8,128]{1,0:T(8,128)(2,1)}) parameter(0)
  %i.1 = s32[]{:T(128)} get-tuple-element(%p.1), index=0
  %x = bf16[8,128]{1,0:T(8,128)(2,1)} get-tuple-element(%p.1), index=1
  %ag = (bf16[8,128]{1,0:T(8,128)(2,1)}, bf16[64,128]{1,0:T(8,128)(2,1)}) all-gather-start(%x), channel_id=1, dimensions={0}
  %agd = bf16[64,128]{1,0:T(8,128)(2,1)} all-gather-done(%ag)
  %cp = (bf16[8,128]{1,0}, bf16[8,128]{1,0}, u32[]{:S(2)}, u32[]{:S(2)}) collective-permute-start(%x), channel_id=2, source_target_pairs={{0,1},{1,0}}
  %cpd = bf16[8,128]{1,0} collective-permute-done(%cp)
  %one = s32[]{:T(128)} constant(1)
  %next = s32[]{:T(128)} add(%i.1, %one)
  ROOT %t = (s32[], bf16[8,128]{1,0:T(8,128)(2,1)}) tuple(%next, %cpd)
}

%sum (x: f32[], y: f32[]) -> f32[] {
  %x = f32[] parameter(0)
  %y = f32[] parameter(1)
  ROOT %s = f32[] add(%x, %y)
}

ENTRY %main (a: bf16[8,128]) -> f32[8,128] {
  %a = bf16[8,128]{1,0:T(8,128)(2,1)} parameter(0)
  %start = s32[]{:T(128)} constant(2)
  %init = (s32[], bf16[8,128]{1,0:T(8,128)(2,1)}) tuple(%start, %a)
  %loop = (s32[], bf16[8,128]{1,0:T(8,128)(2,1)}) while(%init), condition=%cond, body=%body
  %out = bf16[8,128]{1,0:T(8,128)(2,1)} get-tuple-element(%loop), index=1
  ROOT %ar = f32[8,128]{1,0} all-reduce(%out), channel_id=3, to_apply=%sum
}
"""


def test_collectives_are_counted_per_loop_iteration_with_their_output_bytes():
  comps, entry, _ = hlo.parse_module(TPU_STYLE_HLO)
  loop = next(i for i in comps[entry].instrs if i.op == "while")
  assert hlo.trip_count(comps, comps[entry], loop) == 4
  coll = hlo.collectives(TPU_STYLE_HLO)
  assert coll["all-gather"] == {"count": 4.0, "bytes": 4 * 64 * 128 * 2}       # the gathered output
  assert coll["collective-permute"] == {"count": 4.0, "bytes": 4 * 8 * 128 * 2}
  assert coll["all-reduce"]["count"] == 1.0 and coll["all-reduce"]["bytes"] == 8 * 128 * 4
  assert "all-to-all" not in coll


def _live_sft(config):
  """The SFT pipeline's own state and first batch, built for real."""
  from rewardlab.data import make_task
  from rewardlab.pipelines.sft import make_sft_loss_fn, sft_batches
  from rewardlab.sharding import batch_sharding, make_mesh, shard_batch
  from rewardlab.train.optim import make_optimizer
  from rewardlab.train.policy import PolicySpec, build_policy
  from rewardlab.train.state import create_train_state, shardings_of
  from rewardlab.train.step import make_update_step
  mesh = make_mesh(dict(config.mesh))
  policy = build_policy(PolicySpec.from_config(config), mesh)
  opt, schedule = make_optimizer(config.optim, config.train.steps)
  state = create_train_state(policy.params, opt, mesh, config.seed, frozen=policy.frozen)
  task = make_task(config.data.task, **config.data.task_kwargs)
  batch = shard_batch(sft_batches(task, policy.tokenizer, config.seed, config.data.batch_size,
                                  config.data.seq_len)(0), mesh)
  step = make_update_step(policy.graphdef, make_sft_loss_fn(config.objective, config.train.logprob_chunk), opt,
                          schedule, shardings_of(state), batch_sharding(mesh), merge=policy.merge)
  return state, batch, step


@pytest.mark.parametrize("lora_rank", [0, 4])
def test_planned_memory_equals_the_live_train_state_and_batch(lora_rank):
  """On the CPU backend the compiled step's argument bytes are exactly the live TrainState +
  batch (with LoRA: adapters, their Adam moments and the frozen base), its outputs the new
  state + metrics, and the donated state is aliased; the step's FLOPs (vocab-chunk scan
  counted per chunk) are the model FLOPs plus a little."""
  config = micro_sft_config()
  config.train.logprob_chunk = 64     # 264-token vocab in 5 chunks: the scan must be counted 5 times
  config.lora.rank = lora_rank
  report = plan_config(config, local_topology(measure=False), only=["sft_update"])
  f = report.functions[0]
  state, batch, step = _live_sft(config)
  assert f.argument == per_chip_bytes(state) + per_chip_bytes(batch)
  out = jax.eval_shape(step, state, batch)   # + the output tuple's table of 8-byte buffer pointers
  assert f.output == per_chip_bytes(out) + 8 * len(jax.tree.leaves(out))
  assert f.alias == per_chip_bytes(state)          # donated, frozen base included (returned as is)
  if not lora_rank:
    assert f.model_flops <= f.flops <= 1.3 * f.model_flops
    assert f.xla_flops < 0.8 * f.flops


def test_planned_rl_state_matches_the_pipeline_state():
  """PPO's abstract learner state (policy + value head, Adam moments, frozen reference) has
  the tree, shapes, dtypes and bytes the RL pipeline builds for real."""
  import jax.numpy as jnp
  from rewardlab.pipelines import rl
  from rewardlab.plan.functions import abstract_params, abstract_policy, abstract_state
  from rewardlab.sharding import make_mesh
  from rewardlab.train.optim import make_optimizer
  from rewardlab.train.policy import PolicySpec, build_policy
  from rewardlab.train.state import create_train_state
  config = load_config("rl_ppo", "tiny")
  mesh = make_mesh(dict(config.mesh))
  opt, _ = make_optimizer(config.optim, 10)
  policy = build_policy(PolicySpec.from_config(config), mesh)
  _, trainable, _ = rl.actor_critic(policy, config.seed, mesh)
  live = create_train_state(trainable, opt, mesh, config.seed,
                            frozen={"ref": jax.tree.map(jnp.copy, policy.params), "base": None})
  pol = abstract_policy(config, mesh)
  make_head = rl.actor_critic_defs(pol.model_cfg, config.seed)[0]
  abstract = abstract_state({"policy": pol.params, "value_head": abstract_params(make_head, mesh)[1]}, opt, mesh,
                            frozen={"ref": pol.full(), "base": None})
  assert jax.tree.structure(live) == jax.tree.structure(abstract)
  assert jax.tree.map(lambda x: (x.shape, x.dtype), live) == jax.tree.map(lambda x: (x.shape, x.dtype), abstract)
  assert per_chip_bytes(live) == per_chip_bytes(abstract)


def test_batch_specs_match_the_real_batch_builders():
  """The abstract batches plan compiles with have the fields, shapes and dtypes of the
  pipelines' own builders (SFT, DPO incl. TGDPO's per-token fields, RM)."""
  from rewardlab.data import ByteTokenizer, sft_batch
  from rewardlab.data.preference import PreferencePair, pair_batch, rm_batch
  from rewardlab.data.tasks import Problem
  from rewardlab.plan.functions import _seq_batch, pair_batch_spec, rm_batch_spec
  from rewardlab.sharding import make_mesh
  tok, mesh = ByteTokenizer(), make_mesh({"data": -1})
  pairs = [PreferencePair("1+1=", "2", "3", chosen_token_rewards=(0.5, 0.1), rejected_token_rewards=(0.2, 0.3))] * 4
  same = lambda real, spec: (jax.tree.map(lambda x: (x.shape, np.dtype(x.dtype)), tuple(real))  # noqa: E731
                             == jax.tree.map(lambda x: (x.shape, np.dtype(x.dtype)), tuple(spec)))
  assert same(sft_batch([Problem("1+1=", "2")] * 4, tok, 12), _seq_batch(mesh, 4, 12))
  assert same(pair_batch(pairs, tok, 12), pair_batch_spec(mesh, 4, 12))
  assert same(pair_batch(pairs, tok, 12, np.zeros(8, np.float32), np.zeros((8, 11), np.float32),
                         token_rewards=True), pair_batch_spec(mesh, 4, 12, token_level=True))
  assert same(rm_batch(pairs, tok, 12, 3, 8), rm_batch_spec(mesh, 4, 12, 3, 8))


def test_check_fit_refuses_a_config_over_its_budget():
  config = micro_sft_config()
  assert check_fit(config) is None                       # off unless asked for
  config.train.check_fit = True
  config.train.memory_budget_gib = 1e-4                  # 105 kB per device
  with pytest.raises(DoesNotFit, match=r"sft_update needs .* GiB per device: over 90% of 0.0001 GiB "
                                       r"\(train.memory_budget_gib\)"):
    check_fit(config)
  config.train.memory_budget_gib = 16.0
  report = check_fit(config)
  assert report.fits and [f.name for f in report.functions] == ["sft_update"]


def _cli(*args, timeout=600):
  env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT)
  return subprocess.run([sys.executable, "-m", "rewardlab", *args], capture_output=True, text=True, cwd=ROOT,
                        env=env, timeout=timeout)


def test_train_is_refused_before_it_starts_when_the_plan_does_not_fit(tmp_path):
  cfg = tmp_path / "over_budget.py"
  cfg.write_text("import sys\nsys.path.insert(0, %r)\nfrom helpers import micro_sft_config\n\n"
                 "def get_config():\n  c = micro_sft_config()\n  c.train.check_fit = True\n"
                 "  c.train.memory_budget_gib = 1e-4\n  return c\n" % os.path.join(ROOT, "tests"))
  out = _cli("train", f"--config={cfg}", f"--workdir={tmp_path / 'run'}")
  assert out.returncode == 2, out.stderr[-2000:]
  assert "refused before training: sft_update needs" in out.stderr
  assert not (tmp_path / "run").exists()


def test_cli_plan_json_and_exit_status():
  """--json is machine-readable; the exit status says whether everything fits (a margin of
  ~0 makes nothing fit)."""
  cfg = os.path.join(ROOT, "configs", "sft_arithmetic.py") + ":tiny"
  out = _cli("plan", f"--config={cfg}", "--topology=local", "--json", "--margin=1e-9",
             "--config.model.n_layers=1", "--config.data.batch_size=8")
  assert out.returncode == 1, out.stderr[-2000:]
  plan = json.loads(out.stdout)
  (f,) = plan["functions"]
  assert f["name"] == "sft_update" and not f["fits"] and not plan["fits"]
  assert f["argument"] > 0 and f["flops"] > 0 and f["total"] >= f["argument"]


def test_tpu_topology_without_libtpu_says_how_to_install(monkeypatch):
  monkeypatch.setattr(chips.importlib.util, "find_spec", lambda name: None)
  with pytest.raises(chips.TopologyError, match=r'^planning for a TPU topology needs libtpu.*pip install -e "\.\[tpu\]"'):
    chips.resolve_topology("v5p:2x2x2")
  with pytest.raises(chips.TopologyError, match="expected <v4|v5e|v5p|v6e>:<AxB"):
    chips.resolve_topology("v9:2x2")


@pytest.mark.slow
@pytest.mark.skipif(not HAS_LIBTPU, reason="libtpu not installed (pip install -e '.[tpu]')")
def test_plan_a_tiny_config_for_a_tpu_topology():
  """A 1-layer bf16 GRPO config planned for v5e:2x2 (4 abstract chips, FSDP over them):
  every function compiles, fits, communicates, and its loop-aware FLOPs cover the model's."""
  config = load_config("grpo_arithmetic", "tiny")
  config.model.update(d_model=64, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=32, mlp_dim=128, dtype="bfloat16")
  config.mesh.update(data=1, fsdp=4, tensor=1)
  report = plan_config(config, "v5e:2x2")
  assert report.n_devices == 4 and report.chip.name == "TPU v5e" and report.chip.hbm_bytes == 16e9
  names = [f.name for f in report.functions]
  assert names == ["rl_update", "reference_logprobs", "sampler_prefill", "sampler_decode_step"]
  assert report.fits
  for f in report.functions:
    assert f.flops >= f.model_flops > 0 and f.bytes_accessed > 0 and f.bound_s > 0
    assert f.collectives, f"{f.name} has no collectives on an FSDP mesh"
  update = report.functions[0]
  assert "all-gather" in update.collectives or "all-reduce" in update.collectives
  assert report.functions[-1].tokens == config.rl.num_prompts * config.rl.group_size


def test_suggest_finds_the_micro_batches_that_fit_and_prints_them_as_flags():
  """A budget the 256-row step exceeds but a 128-row micro-step meets: the search tries
  micro-batches first (same mesh, no extra recompute), stops at the first that fits and
  prints it as an override flag; what it cannot search is said."""
  from rewardlab.plan.suggest import format_suggestion, suggest
  config = micro_sft_config()
  config.model.vocab_size = 2048
  config.data.batch_size = 256
  config.train.micro_batches = 1
  topo = local_topology(measure=False)
  report = plan_config(config, topo)
  need = report.functions[0].total
  tight = dataclasses.replace(topo, chip=dataclasses.replace(topo.chip, hbm_bytes=0.8 * need / 0.9))
  report.functions[0].hbm = tight.chip.hbm_bytes      # the same plan against the tighter budget
  assert not report.fits
  found = suggest(config, tight, report, budget=1)
  assert found.found is not None and found.found.flags() == "--config.train.micro_batches=2"
  assert found.report.fits and found.found.peak_gib * 2 ** 30 < 0.8 * need
  text = format_suggestion(found)
  assert "paste these overrides" in text and "--config.train.micro_batches=2" in text
