"""The sweep runner: grid x seeds as run directories, resumable, summarised with t intervals;
paired comparisons; seeds trained as one vmapped step."""
import copy
import csv
import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from scipy import stats

from helpers import ROOT, load_config, micro_sft_config
from rewardlab.eval.stats import describe_difference, diff_ci, mean_ci
from rewardlab.pipelines import PIPELINES
from rewardlab.sweep import SweepError, SweepSpec, compare, product, run_sweep, summarize_sweep
from rewardlab.sweep.runner import warmup_jobs
from rewardlab.sweep.spec import load_get_sweep, overrides_between, parse_grid, plan, point_name, \
    spec_from_sweep_dict
from rewardlab.sweep.vmapped import run_seeds
from rewardlab.train.metrics import read_metrics


def test_t_interval_and_differences_closed_form():
  # [1, 2, 3]: mean 2, s = 1, and with 2 degrees of freedom the t quantile has the closed
  # form t_p = (2p - 1) sqrt(2 / (4p(1 - p))) = 4.3027 at p = 0.975 -> 2 +- t / sqrt(3)
  t2 = 0.95 * np.sqrt(2 / (4 * 0.975 * 0.025))
  ci = mean_ci([1.0, 2.0, 3.0])
  half = t2 / np.sqrt(3)
  assert (ci.mean, ci.n) == (2.0, 3)
  np.testing.assert_allclose([ci.low, ci.high], [2 - half, 2 + half], rtol=1e-12)
  assert np.isnan(mean_ci([0.5]).low) and mean_ci([0.3, 0.3]).low == 0.3
  # paired by seed: the shared seed effect (+0, +10, +20) cancels; d = [1, 1.2, 0.8]
  a, b = [1.0, 11.2, 20.8], [0.0, 10.0, 20.0]
  paired = diff_ci(a, b, paired=True)
  np.testing.assert_allclose([paired.mean, paired.high - paired.mean], [1.0, t2 * 0.2 / np.sqrt(3)])
  assert paired.low > 0
  welch = diff_ci(a, b, paired=False)   # the seed effect stays in Welch's interval
  assert welch.low < 0 < welch.high and welch.mean == pytest.approx(1.0)
  assert describe_difference(paired, "A", "B", "acc") == f"A > B on acc: +1.000 [{paired.low:.3f}, {paired.high:.3f}]"
  flipped = diff_ci(b, a, paired=True)
  assert describe_difference(flipped, "B", "A", "acc").startswith("A > B on acc: +1.000 [")
  assert describe_difference(welch, "A", "B", "acc").startswith("no difference detected between A and B on acc")


def test_grid_flags_points_and_config_sweeps():
  assert parse_grid("objective.name=dpo,ipo,simpo") == ("objective.name", ["dpo", "ipo", "simpo"])
  assert parse_grid("config.objective.beta=0.05,0.1") == ("objective.beta", [0.05, 0.1])
  assert parse_grid("lora.targets=('q','v'),('q','k','v')") == ("lora.targets", [("q", "v"), ("q", "k", "v")])
  for bad in ("objective.beta", "objective.beta=", "=1,2", "a.b=1,,2"):
    with pytest.raises(SweepError, match="--grid"):
      parse_grid(bad)
  points = product({"objective.name": ["dpo", "ipo"], "objective.beta": [0.05, 0.1]})
  assert [point_name(p) for p in points] == [
      "objective.name=dpo,objective.beta=0.05", "objective.name=dpo,objective.beta=0.1",
      "objective.name=ipo,objective.beta=0.05", "objective.name=ipo,objective.beta=0.1"]
  sweep = load_get_sweep(os.path.join(ROOT, "configs", "dpo_synthetic.py") + ":tiny")
  spec = spec_from_sweep_dict(sweep, base_seed=5)
  assert len(spec.points) == 6 and spec.seeds == (5, 6, 7) and "gold_reward" in spec.metrics
  with pytest.raises(SweepError, match="unknown keys \\['seed'\\]"):
    spec_from_sweep_dict({"grid": {}, "seed": 3}, 0)
  config = micro_sft_config()
  with pytest.raises(SweepError, match="config.optim.lrr: config.optim has no field 'lrr'"):
    run_sweep(config, SweepSpec(product({"optim.lrr": [1.0]}), (0,)), "/nonexistent/sweep")
  with pytest.raises(SweepError, match="objective.name: 'nope' is not allowed"):
    run_sweep(config, SweepSpec(product({"objective.name": ["nope"]}), (0,)), "/nonexistent/sweep")


def test_overrides_between_config_functions_and_warmups_shared_across_them():
  """Rows built by different config functions become one sweep's points; runs that differ only
  in sections their SFT warm-up never reads (a reward-model head) share its warm-up per seed."""
  grpo, label_free = load_config("grpo_arithmetic", "tiny"), load_config("grpo_label_free", "tiny,self_certainty")
  assert overrides_between(grpo, label_free) == {"rl.rewards": {"self_certainty": 1.0}}   # other keys: whole section
  rm = load_config("rm_synthetic", "tiny")
  gated = copy.deepcopy(rm)
  gated.rm.head.type, gated.workdir, gated.data.seq_len = "gated", "elsewhere", 30
  assert overrides_between(rm, gated) == {"data.seq_len": 30, "rm.head.type": "gated"}   # workdir ignored
  with pytest.raises(SweepError, match="has no top-level \\['judge', 'laser', 'rl', 'spark'\\]"):
    overrides_between(grpo, rm)
  points = ({}, {"rm.head.type": "ensemble"}, {"rm.head.type": "gated"}, {"data.label_noise": 0.2})
  todo, copies = warmup_jobs(plan(rm, SweepSpec(points, (0, 1)), "/nonexistent/sweep"), "/nonexistent/sweep")
  assert len(copies) == 8 and len(todo) == 4    # (heads share, label noise apart) x 2 seeds
  assert len({shared for shared, _, _ in copies[:6]}) == 2 and "rm" not in todo[0][0]


def _final(workdir, metric):
  split, _, name = metric.rpartition("/")
  return [r for r in read_metrics(workdir, split or "eval")][-1][name]


@pytest.mark.slow
def test_sweep_2x2_grid_2_seeds_summary_equals_runs_and_rerun_runs_only_the_missing_one(tmp_path):
  config = micro_sft_config(steps=4)
  spec = SweepSpec(product({"optim.lr": [1e-3, 3e-3], "data.batch_size": [4, 8]}), seeds=(0, 1),
                   metrics=("accuracy", "train/loss"))
  out = run_sweep(config, spec, str(tmp_path), log=lambda *_: None)
  dirs = sorted(os.path.relpath(r.workdir, tmp_path) for r in out["runs"])
  assert dirs == sorted(f"optim.lr={lr},data.batch_size={b}/seed_{s}"
                        for lr in (0.001, 0.003) for b in (4, 8) for s in (0, 1))
  assert sorted(out["ran"]) == sorted(r.workdir for r in out["runs"])
  for run in out["runs"]:
    cfg = read_config(run.workdir)
    assert (cfg["seed"], cfg["optim"]["lr"], cfg["data"]["batch_size"]) == (
        run.seed, run.point["optim.lr"], run.point["data.batch_size"])
  # summary.csv = mean and t interval recomputed from each run's metrics.jsonl
  with open(tmp_path / "summary.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == 4 * 2
  for row in rows:
    x = np.array([_final(tmp_path / row["point"] / f"seed_{s}", row["metric"]) for s in (0, 1)])
    half = stats.t.ppf(0.975, 1) * x.std(ddof=1) / np.sqrt(2)
    np.testing.assert_allclose([float(row["mean"]), float(row["ci_low"]), float(row["ci_high"])],
                               [x.mean(), x.mean() - half, x.mean() + half], rtol=1e-9, atol=1e-12)
  table = (tmp_path / "summary.md").read_text()
  assert "| optim.lr | data.batch_size | accuracy | train/loss |" in table
  assert summarize_sweep(str(tmp_path))["table"] == table   # read back from sweep.json alone
  assert os.path.exists(tmp_path / "curves.png")
  a, b = {"optim.lr": 3e-3, "data.batch_size": 8}, {"optim.lr": 1e-3, "data.batch_size": 8}
  comparison = compare(out["summary"]["rows"], a, b, "train/loss", quiet=True)
  assert comparison.paired and comparison.difference.n == 2

  # delete one run: the re-run trains only that one, leaves the others' files alone, and
  # (same seed, same config) reproduces its numbers
  victim = out["runs"][5].workdir
  before = {r.workdir: _text(r.workdir) for r in out["runs"]}
  shutil.rmtree(victim)
  again = run_sweep(config, spec, str(tmp_path), log=lambda *_: None)
  assert again["ran"] == [victim]
  after = {r.workdir: _text(r.workdir) for r in again["runs"]}
  assert {k: v for k, v in after.items() if k != victim} == {k: v for k, v in before.items() if k != victim}
  assert _records(victim) == [{k: v for k, v in json.loads(line).items() if k != "tokens_per_s"}
                               for line in before[victim].splitlines()]
  assert run_sweep(config, spec, str(tmp_path), log=lambda *_: None)["ran"] == []
  # a changed config never silently reuses the old run directories
  config.train.steps = 5
  with pytest.raises(SweepError, match=r"config.json: this run directory was made with a different config "
                                       r"\(train.steps: 4 -> 5"):
    run_sweep(config, spec, str(tmp_path), log=lambda *_: None)


def read_config(workdir):
  with open(os.path.join(workdir, "config.json")) as f:
    return json.load(f)


def _text(workdir):
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    return f.read()


def _records(workdir):
  return [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in read_metrics(workdir)]


def assert_same_metrics(a, b, rtol=1e-4, atol=1e-5):
  """Same records at the same steps, values equal to float tolerance."""
  ra, rb = _records(a), _records(b)
  assert [(r["step"], r["split"], sorted(r)) for r in ra] == [(r["step"], r["split"], sorted(r)) for r in rb]
  for x, y in zip(ra, rb):
    keys = [k for k in x if k not in ("step", "split")]
    np.testing.assert_allclose([x[k] for k in keys], [y[k] for k in keys], rtol=rtol, atol=atol,
                               err_msg=f"{a} vs {b} at step {x['step']} {x['split']}: {keys}")


@pytest.mark.slow
def test_vmapped_sft_seeds_match_separate_runs_and_resume(tmp_path):
  """Two seeds as one vmapped step, interrupted after step 3 and resumed, write the metrics
  of two separate uninterrupted runs (to float tolerance)."""
  configs = []
  for seed in (0, 1):
    c = micro_sft_config(steps=6)
    c.seed = seed
    configs.append(c)
  for c in configs:
    PIPELINES["sft"](c, str(tmp_path / "separate" / f"seed_{c.seed}"))
  dirs = [str(tmp_path / "vmapped" / f"seed_{c.seed}") for c in configs]
  run_seeds(configs, dirs, stop_at_step=4)   # checkpoint at 3: resumes from there
  summaries = run_seeds(configs, dirs)
  for c, d in zip(configs, dirs):
    assert_same_metrics(str(tmp_path / "separate" / f"seed_{c.seed}"), d)
    assert sorted(os.listdir(os.path.join(d, "checkpoints"))) == ["3", "6"]
  # the seeds really differ (init and data), and each summary holds its seed's final state
  first_loss = [[r for r in _records(d) if r["split"] == "train"][0]["loss"] for d in dirs]
  assert abs(first_loss[0] - first_loss[1]) > 1e-3
  assert [int(s["state"].step) for s in summaries] == [6, 6]


@pytest.mark.slow
def test_vmapped_rm_seeds_match_separate_runs_and_export_each_seed(tmp_path):
  configs = []
  for seed in (0, 1):
    c = load_config("rm_synthetic", "tiny")
    c.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)
    c.sft_warmup.steps = 0
    c.data.update(num_pairs=64, eval_pairs=32, batch_size=16)
    c.eval.batch_size = 32
    c.train.update(steps=4, log_every=1, eval_every=2, checkpoint_every=2, progress=False, tensorboard=False)
    c.seed = seed
    configs.append(c)
  dirs = [str(tmp_path / "vmapped" / f"seed_{c.seed}") for c in configs]
  summaries = run_seeds(configs, dirs)
  for c, d, summary in zip(configs, dirs, summaries):
    alone = str(tmp_path / "separate" / f"seed_{c.seed}")
    PIPELINES["rm"](c, alone)
    assert_same_metrics(alone, d)
    assert summary["export"] == os.path.join(d, "reward_model")   # each seed's finish ran
    assert os.path.exists(os.path.join(d, "reward_model", "rm.json")) and os.path.exists(os.path.join(d, "rm_eval.json"))


def _micro_dpo():
  c = load_config("dpo_synthetic", "tiny")
  c.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)
  c.sft_warmup.steps = 4
  c.data.update(num_pairs=32, batch_size=8)
  c.train.update(steps=4, log_every=1, eval_every=2, checkpoint_every=2, progress=False, tensorboard=False)
  c.eval.update(num_problems=8, batch_size=8, max_new_tokens=3)
  return c


@pytest.mark.slow
def test_dpo_sweep_vmapped_shares_warmups_and_matches_a_separate_run(tmp_path):
  """objective x 2 seeds with --vmap_seeds: one vmapped warm-up job for both seeds, shared by
  both objectives (copied, identical), and every run equal to the same run made alone."""
  config = _micro_dpo()
  spec = SweepSpec(product({"objective.name": ["dpo", "ipo"]}), seeds=(0, 1))
  log = []
  out = run_sweep(config, spec, str(tmp_path / "sweep"), vmap_seeds=True, log=log.append)
  assert sum("(vmapped)" in line and "done" in line for line in log) == 3   # warm-ups, dpo, ipo
  shared = os.listdir(tmp_path / "sweep" / "_warmups")
  assert len(shared) == 1 and sorted(os.listdir(tmp_path / "sweep" / "_warmups" / shared[0])) == ["seed_0", "seed_1"]
  for seed in (0, 1):
    dpo, ipo = (tmp_path / "sweep" / f"objective.name={o}" / f"seed_{seed}" / "sft_warmup" for o in ("dpo", "ipo"))
    assert _records(dpo) == _records(ipo)
  alone = copy.deepcopy(config)
  alone.objective.name, alone.seed = "ipo", 1
  PIPELINES["dpo"](alone, str(tmp_path / "alone"))
  assert_same_metrics(str(tmp_path / "alone"), str(tmp_path / "sweep" / "objective.name=ipo" / "seed_1"))
  assert_same_metrics(str(tmp_path / "alone" / "sft_warmup"),
                      str(tmp_path / "sweep" / "objective.name=ipo" / "seed_1" / "sft_warmup"))
  assert [r.point for r in out["summary"]["rows"]] == ["objective.name=dpo", "objective.name=ipo"]


@pytest.mark.slow
def test_cli_sweep_from_flags(tmp_path):
  cfg = os.path.join(ROOT, "configs", "sft_arithmetic.py") + ":tiny"
  micro = ["--config.model.d_model=32", "--config.model.n_layers=1", "--config.model.n_heads=2",
           "--config.model.n_kv_heads=1", "--config.model.mlp_dim=64", "--config.data.batch_size=8",
           "--config.train.steps=2", "--config.train.eval_every=2", "--config.train.checkpoint_every=2",
           "--config.eval.num_problems=8", "--config.eval.batch_size=8", "--config.train.tensorboard=False"]
  env = dict(os.environ, JAX_PLATFORMS="cpu")
  run = lambda *args: subprocess.run([sys.executable, "-m", "rewardlab", "sweep", f"--config={cfg}", *micro, *args,  # noqa: E731
                                      f"--workdir={tmp_path}"], capture_output=True, text=True, cwd=ROOT, env=env,
                                     timeout=600)
  out = run("--grid=optim.lr=0.001,0.003", "--seeds=1", "--metrics=accuracy,train/loss", "--parallel=2")
  assert out.returncode == 0, out.stderr[-2000:]
  assert "| optim.lr | accuracy | train/loss |" in out.stdout
  assert sorted(os.listdir(tmp_path / "optim.lr=0.001")) == ["seed_0"]
  bad = run("--grid=optim.lr")
  assert bad.returncode == 2 and "--grid 'optim.lr': expected FIELD=V1,V2" in bad.stderr
