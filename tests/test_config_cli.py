import os
import subprocess
import sys

import pytest

from helpers import ROOT, load_config
from rewardlab.objectives import OBJECTIVES
from rewardlab.pipelines import PIPELINES
from rewardlab.train import ConfigError, validate


def _validate(c, n_devices=8):
  validate(c, OBJECTIVES, PIPELINES, n_devices=n_devices)


def test_default_configs_validate():
  _validate(load_config("sft_arithmetic"))
  _validate(load_config("sft_arithmetic", "tiny"))


@pytest.mark.parametrize("edit, match", [
    (lambda c: setattr(c.objective, "name", "dpoo"), r"objective.name: 'dpoo' is not allowed; allowed: \[.*'sft'"),
    (lambda c: setattr(c, "pipeline", "ppo_magic"), r"config.pipeline: 'ppo_magic' is not allowed"),
    (lambda c: c.mesh.update(data=3, fsdp=1, tensor=1), r"mesh: shape .* uses 3 devices but 8 are available"),
    (lambda c: setattr(c.data, "seq_len", 500), r"data.seq_len: 500 is over model.max_seq_len=64"),
    (lambda c: setattr(c.eval, "max_new_tokens", 100), r"eval.max_new_tokens: .* over model.max_seq_len"),
    (lambda c: setattr(c.data, "task", "chess"), r"data.task: 'chess' is not allowed; allowed: \['addition'"),
    (lambda c: setattr(c.optim, "schedule", "step"), r"optim.schedule: 'step' is not allowed"),
    (lambda c: setattr(c.model, "n_kv_heads", 3), r"config.model config: n_heads=4 must be a multiple of n_kv_heads=3"),
    (lambda c: setattr(c.data, "batch_size", 12), r"data.batch_size: 12 is not divisible by mesh data x fsdp = 8"),
    (lambda c: setattr(c.objective, "aggregation", "max"), r"objective.aggregation: 'max' is not allowed"),
    (lambda c: setattr(c.train, "micro_batches", 3),
     r"train.micro_batches: data.batch_size=128 is not divisible by micro_batches x mesh data x fsdp = 3 x 8"),
    (lambda c: setattr(c.model, "preset", "qwen9-1b"), r"model.preset='qwen9-1b' is not a known preset; allowed"),
])
def test_bad_config_names_field_and_allowed_values(edit, match):
  c = load_config("sft_arithmetic")
  edit(c)
  with pytest.raises(ConfigError, match=match):
    _validate(c)


def _cli(*args):
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  return subprocess.run([sys.executable, "-m", "rewardlab", *args], capture_output=True,
                        text=True, cwd=ROOT, env=env, timeout=300)


def test_cli_rejects_bad_override_and_bad_value(tmp_path):
  cfg = os.path.join(ROOT, "configs", "sft_arithmetic.py") + ":tiny"
  out = _cli("train", f"--config={cfg}", "--config.optim.lrr=3", f"--workdir={tmp_path}")
  assert out.returncode != 0 and "lrr" in out.stderr
  out = _cli("train", f"--config={cfg}", "--config.objective.name=nope", f"--workdir={tmp_path}")
  assert out.returncode == 2
  assert "bad config: config.objective.name: 'nope' is not allowed" in out.stderr
  out = _cli("fly", f"--config={cfg}")
  assert out.returncode != 0 and "usage: rewardlab train" in out.stderr


def test_cli_trains_and_resumes(tmp_path):
  """The console entry runs a (micro) config end to end, then resumes to a longer run."""
  cfg = os.path.join(ROOT, "configs", "sft_arithmetic.py") + ":tiny"
  common = [f"--config={cfg}", f"--workdir={tmp_path}", "--config.train.progress=False",
            "--config.model.n_layers=1", "--config.eval.num_problems=8", "--config.eval.batch_size=8",
            "--config.data.batch_size=8", "--config.train.eval_every=2", "--config.train.checkpoint_every=2"]
  out = _cli("train", *common, "--config.train.steps=2")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "done in" in out.stdout
  for name in ("metrics.jsonl", "config.json", "curves.png", "checkpoints"):
    assert os.path.exists(tmp_path / name), name
  out = _cli("train", *common, "--config.train.steps=4")
  assert out.returncode == 0, out.stderr[-2000:]
  from rewardlab.train.metrics import read_metrics
  steps = [r["step"] for r in read_metrics(str(tmp_path), "eval")]
  assert steps == [0, 2, 4]  # resumed from step 2 without re-running step 0's eval


# study configs, read by experiments/<name>.py (which builds pipeline configs from them), not pipeline configs
STUDY_CONFIGS = {"overoptimization"}


@pytest.mark.parametrize("name", sorted(f[:-3] for f in os.listdir(os.path.join(ROOT, "configs"))
                                        if f.endswith(".py") and f[:-3] not in STUDY_CONFIGS))
def test_every_config_file_validates(name):
  """Every experiment config (default and tiny) passes start-up validation; planning configs
  (configs/plan_*.py: real sizes for `rewardlab plan`) have no tiny variant."""
  for variant in ("",) if name.startswith("plan_") else ("", "tiny"):
    _validate(load_config(name, variant), n_devices=1)


@pytest.mark.parametrize("edit, match", [
    (lambda c: setattr(c.rm.head, "type", "tree"), r"config.rm.head.type='tree'; allowed"),
    (lambda c: setattr(c.rm.head, "aggregation", "max"), r"config.rm.head.aggregation='max'"),
    (lambda c: setattr(c.rm, "label_smoothing", 0.7), r"rm.label_smoothing: 0.7 must be in \[0, 0.5\)"),
    (lambda c: setattr(c.data, "label_noise", 1.5), r"data.label_noise: 1.5 must be in \[0, 1\]"),
])
def test_rm_config_errors(edit, match):
  c = load_config("rm_synthetic")
  edit(c)
  with pytest.raises(ConfigError, match=match):
    _validate(c, n_devices=1)


def test_online_and_rl_reward_config_errors():
  c = load_config("online_dpo_synthetic")
  c.online.ranker = "/nowhere"
  with pytest.raises(ConfigError, match="online.ranker: '/nowhere': 'gold', 'self_judge' or a reward-model folder"):
    _validate(c, n_devices=1)
  c = load_config("grpo_arithmetic")
  c.rl.rewards = {"reward_model": 1.0}
  with pytest.raises(ConfigError, match=r"'reward_model' needs rl.reward_model_path"):
    _validate(c, n_devices=1)
