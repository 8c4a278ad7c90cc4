"""Runs that fail loudly and recover: a NaN / inf loss, gradient or reward stops the run before
the update is applied (or is skipped and counted), metrics.jsonl stays strict JSON, and a
broken or half-written checkpoint is reported, set aside and replaced by the newest intact one."""
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import jax
import numpy as np
import pytest

from helpers import ROOT, load_config, micro_sft_config
from rewardlab.errors import NonFiniteError
from rewardlab.pipelines import rl, sft
from rewardlab.rollout import rewards as rollout_rewards
from rewardlab.train.checkpoint import Checkpointer


def strict_lines(workdir):
  """Every metrics.jsonl line parses as strict JSON (no NaN / Infinity tokens)."""
  def refuse(token):
    raise ValueError(f"non-strict JSON token {token}")
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return [json.loads(line, parse_constant=refuse) for line in f]


def exploding_sft_config(**train):
  """SGD at lr 1e30: step 1 is finite, step 2's gradients are NaN."""
  c = micro_sft_config(steps=6)
  c.optim.update(name="sgd", lr=1e30, clip_norm=0.0, warmup_steps=0, schedule="constant")
  c.train.update(checkpoint_every=1, keep_checkpoints=10, **train)
  return c


def test_nonfinite_gradient_stops_the_run_before_the_update(tmp_path):
  with pytest.raises(NonFiniteError, match=r"step 2: gradient norm is nan \(update 1 of 1\); first parameters "
                                           r"with non-finite gradients: embed, layers/0/"):
    sft.run(exploding_sft_config(), str(tmp_path))
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), every=1)
  assert ckpt.manager.all_steps() == [1]                 # nothing saved at or after the bad step
  restored = ckpt.restore(sft_state_like(tmp_path))
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(restored.params))
  ckpt.close()
  assert [r["step"] for r in strict_lines(tmp_path) if r["split"] == "train"] == [1]


def sft_state_like(tmp_path):
  """A live state of the exploding config's shapes (restore target)."""
  from rewardlab.sharding import make_mesh
  from rewardlab.train.optim import make_optimizer
  from rewardlab.train.policy import PolicySpec, build_policy
  from rewardlab.train.state import create_train_state
  c = exploding_sft_config()
  mesh = make_mesh(dict(c.mesh))
  policy = build_policy(PolicySpec.from_config(c), mesh)
  return create_train_state(policy.params, make_optimizer(c.optim, c.train.steps)[0], mesh, c.seed)


def test_skip_nonfinite_steps_skips_counts_and_then_stops(tmp_path):
  with pytest.raises(NonFiniteError, match=r"step 4: .*2 non-finite steps skipped before, the most "
                                           r"train.skip_nonfinite_steps=2 allows"):
    sft.run(exploding_sft_config(skip_nonfinite_steps=2), str(tmp_path))
  train = [r for r in strict_lines(tmp_path) if r["split"] == "train"]
  assert [(r["step"], r["nonfinite_update"], r["nonfinite_skipped"]) for r in train] == [
      (1, 0.0, 0), (2, 1.0, 1), (3, 1.0, 2)]
  assert train[1]["grad_norm"] is None and "grad_norm" in train[1]["nonfinite"]   # null + flag
  like = sft_state_like(tmp_path)
  ckpt = Checkpointer(str(tmp_path / "checkpoints"), every=1)
  after_1, after_3 = ckpt.restore(like, 1), ckpt.restore(like, 3)
  ckpt.close()
  for a, b in zip(jax.tree.leaves(after_1.params), jax.tree.leaves(after_3.params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))   # skipped updates changed nothing
  assert int(after_3.step) == 3


def test_cli_exits_non_zero_with_one_line(tmp_path):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "rewardlab", "train", "--config", "configs/sft_arithmetic.py:tiny",
                        "--workdir", str(tmp_path), "--config.optim.name=sgd", "--config.optim.lr=1e30",
                        "--config.optim.clip_norm=0", "--config.optim.warmup_steps=0",
                        "--config.optim.schedule=constant", "--config.train.progress=False",
                        "--config.model.n_layers=1", "--config.data.batch_size=8", "--config.eval.num_problems=8",
                        "--config.eval.batch_size=8"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
  assert out.returncode == 3, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last.startswith("rewardlab: stopped: step 2: gradient norm is nan"), last


def test_cli_names_a_bad_data_row_in_one_line(tmp_path):
  """A row the loader refuses (here non-UTF-8 bytes on line 2) ends the run with exit 2 and one
  line naming file:line, not a traceback."""
  pairs = tmp_path / "pairs.jsonl"
  pairs.write_bytes(b'{"prompt": "1+1=", "chosen": "2", "rejected": "3"}\n'
                    b'{"prompt": "2+2=", "chosen": "4", "rejected": "caf\xe9"}\n')
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  out = subprocess.run([sys.executable, "-m", "rewardlab", "train", "--config", "configs/dpo_synthetic.py:tiny",
                        "--workdir", str(tmp_path / "run"), f"--config.data.pref_path={pairs}",
                        "--config.sft_warmup.steps=0", "--config.train.progress=False"],
                       capture_output=True, text=True, cwd=ROOT, env=env, timeout=600)
  assert out.returncode == 2, out.stderr[-2000:]
  assert "Traceback" not in out.stderr, out.stderr[-2000:]
  last = out.stderr.strip().splitlines()[-1]
  assert last == f"rewardlab: bad data: {pairs}:2: not valid UTF-8 (byte 0xe9 at column 51)", last


def test_infinite_reward_stops_rl_before_any_update(tmp_path, monkeypatch):
  monkeypatch.setitem(rollout_rewards.REWARD_BUILDERS, "broken_judge",
                      lambda ctx: lambda c: np.where(np.arange(len(c.texts)) % 3 == 1, np.inf, 0.5))
  config = load_config("grpo_arithmetic", "tiny")
  config.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)
  config.sft_warmup.steps = 0
  config.rl.update(num_prompts=4, group_size=4, minibatch_size=8)
  config.rl.rewards = {"exact_answer": 1.0, "broken_judge": 0.5}
  config.train.update(steps=2, eval_every=0, progress=False, tensorboard=False)
  with pytest.raises(NonFiniteError, match=r"step 1: reward is not finite at rows \[1, 4, 7, 10, 13\]; "
                                           r"broken_judge at rows \[1, 4, 7, 10, 13\]"):
    rl.run(config, str(tmp_path))
  assert not glob.glob(str(tmp_path / "checkpoints" / "*"))


def _records(records):
  return {(r["step"], r["split"]): {k: v for k, v in r.items() if k != "tokens_per_s"} for r in records}


def _truncate(step_dir):
  for f in glob.glob(os.path.join(step_dir, "default", "**", "d", "*"), recursive=True):
    with open(f, "r+b") as fh:
      fh.truncate(os.path.getsize(f) // 2)


def _delete_manifest(step_dir):
  for f in glob.glob(os.path.join(step_dir, "default", "**", "manifest.ocdbt"), recursive=True):
    os.remove(f)


def _zero_bytes(step_dir):
  for f in glob.glob(os.path.join(step_dir, "**", "*"), recursive=True):
    if os.path.isfile(f):
      open(f, "w").close()


@pytest.fixture(scope="module")
def finished_sft_run(tmp_path_factory):
  """A micro SFT run of 6 steps with checkpoints at 3 and 6."""
  workdir = str(tmp_path_factory.mktemp("full"))
  summary = sft.run(micro_sft_config(steps=6), workdir)
  return workdir, _records(summary["records"])


@pytest.mark.parametrize("corrupt", [_truncate, _delete_manifest, _zero_bytes],
                         ids=["truncated", "manifest_deleted", "zero_bytes"])
def test_broken_latest_checkpoint_is_set_aside_and_the_previous_one_resumes(corrupt, finished_sft_run, tmp_path,
                                                                           capfd):
  full_dir, full_records = finished_sft_run
  workdir = str(tmp_path / "run")
  shutil.copytree(full_dir, workdir)
  corrupt(os.path.join(workdir, "checkpoints", "6"))
  resumed = sft.run(micro_sft_config(steps=6), workdir)       # steps 4-6 again, from checkpoint 3
  err = capfd.readouterr().err
  lines = [ln for ln in err.splitlines() if "is unreadable" in ln]
  assert len(lines) == 1 and f"{workdir}/checkpoints/6 is unreadable (" in lines[0], err
  assert "falling back to the previous one" in lines[0]
  broken = glob.glob(os.path.join(workdir, "checkpoints.broken", "6-*"))
  assert len(broken) == 1 and os.listdir(broken[0])            # kept aside, not deleted
  assert _records(resumed["records"]) == full_records          # resume == uninterrupted


KILLED_SAVE = textwrap.dedent("""
    import sys
    import jax, jax.numpy as jnp
    from rewardlab.train.checkpoint import Checkpointer
    ck = Checkpointer(sys.argv[1], every=1)
    ck.maybe_save(1, {"w": jnp.full((1000,), 1.0)})
    ck.manager.wait_until_finished()
    print("saved 1", flush=True)
    big = {"w": jax.random.normal(jax.random.PRNGKey(0), (int(sys.argv[2]),))}
    ck.maybe_save(2, big)          # asynchronous: the parent kills us while it writes
    ck.manager.wait_until_finished()
    print("saved 2", flush=True)
""")


def test_kill_during_save_leaves_the_previous_checkpoint_latest(tmp_path):
  directory = str(tmp_path / "ck")
  child = subprocess.Popen([sys.executable, "-c", KILLED_SAVE, directory, str(60_000_000)],
                           stdout=subprocess.PIPE, text=True, cwd=ROOT, env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert child.stdout.readline().strip() == "saved 1"
  deadline = time.time() + 120
  while not glob.glob(os.path.join(directory, "2.orbax-checkpoint-tmp*")) and time.time() < deadline:
    time.sleep(0.01)
  child.send_signal(signal.SIGKILL)
  child.wait()
  assert glob.glob(os.path.join(directory, "2.orbax-checkpoint-tmp*")), "the save was not caught in flight"
  ckpt = Checkpointer(directory, every=1)
  assert ckpt.latest_step() == 1
  restored = ckpt.restore({"w": jax.numpy.zeros((1000,))})
  ckpt.close()
  np.testing.assert_array_equal(np.asarray(restored["w"]), np.ones(1000))


FULL_DISK = textwrap.dedent("""
    import resource, signal, sys
    import jax, jax.numpy as jnp
    from rewardlab.errors import CheckpointError
    from rewardlab.train.checkpoint import Checkpointer
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)      # writes past the limit fail with EFBIG
    ck = Checkpointer(sys.argv[1], every=1)
    ck.maybe_save(1, {"w": jnp.full((1000,), 1.0)})
    ck.manager.wait_until_finished()
    resource.setrlimit(resource.RLIMIT_FSIZE, (200_000, 200_000))   # no file over 200 kB
    try:
      ck.maybe_save(2, {"w": jax.random.normal(jax.random.PRNGKey(0), (1_000_000,))})
      ck.close()
    except CheckpointError as e:
      print("CheckpointError:", e)
""")


def test_a_failed_save_is_one_line_and_the_previous_checkpoint_stays_latest(tmp_path):
  """A write that fails mid-save (the disk full, simulated by a file-size limit)."""
  directory = str(tmp_path / "ck")
  out = subprocess.run([sys.executable, "-c", FULL_DISK, directory], capture_output=True, text=True, cwd=ROOT,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"), timeout=300)
  line = out.stdout.strip().splitlines()[-1]
  assert line.startswith(f"CheckpointError: saving a checkpoint under {directory} failed (") and \
      "File too large" in line and line.endswith("the latest intact checkpoint is step 1"), out.stdout + out.stderr
  ckpt = Checkpointer(directory, every=1)
  assert ckpt.manager.all_steps() == [1]
  ckpt.close()
