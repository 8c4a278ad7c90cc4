"""Online / iterative DPO: on-policy pair construction, counted skips, and resume."""
import numpy as np
import pytest

from helpers import load_config
from rewardlab.pipelines import online_preference
from rewardlab.train import loop
from rewardlab.train.step import make_update_step


def test_best_vs_worst_pairs_and_counted_skips():
  prompts = ["a"] * 3 + ["b"] * 3 + ["c"] * 3 + ["d"] * 3
  texts = ["1", "2", "3", "x", "x", "y", "4", "4", "4", "5", "6" * 30, "7"]
  scores = np.array([0.1, 0.9, 0.5, 0.3, 0.3, 0.31, 0.2, 0.8, 0.2, 1.0, 0.0, 0.5])
  fits = lambda p, c: len(c) < 10  # noqa: E731
  pairs, skipped = online_preference.best_vs_worst(prompts, texts, scores, 3, 0.05, fits)
  assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [("a", "2", "1")]
  assert pairs[0].margin == pytest.approx(0.8)
  assert skipped == {"small_margin": 1, "identical": 1, "too_long": 1}


def micro_online_config(steps=4):
  c = load_config("online_dpo_synthetic", "tiny")
  c.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)
  c.sft_warmup.steps = 0
  c.data.batch_size = 8
  c.online.update(prompts_per_round=32, samples_per_prompt=4, steps_per_round=2, max_new_tokens=3)
  c.train.update(steps=steps, log_every=1, eval_every=2, checkpoint_every=2, progress=False,
                 tensorboard=False)
  c.eval.update(num_problems=8, batch_size=8, max_new_tokens=3)
  return c


def test_online_dpo_resume_equals_uninterrupted(tmp_path, monkeypatch):
  config = micro_online_config()
  built = []
  def recording(*args, **kwargs):
    built.append(make_update_step(*args, **kwargs))
    return built[-1]
  monkeypatch.setattr(loop, "make_update_step", recording)
  full = online_preference.run(config, str(tmp_path / "full"))
  assert [r["round"] for r in full["rounds"]] == [0, 1]
  # both rounds ran on one jitted update step, compiled once (it was rebuilt per round)
  assert len(built) == 1 and built[0]._cache_size() == 1
  assert all(r["pairs_kept"] >= 8 for r in full["rounds"])
  online_preference.run(config, str(tmp_path / "cut"), stop_at_step=3)   # dies mid-round 1
  resumed = online_preference.run(config, str(tmp_path / "cut"))
  strip = lambda recs: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in recs]  # noqa: E731
  assert strip(resumed["records"]) == strip(full["records"])


def test_self_rewarding_round_pairs_rank_by_the_models_own_judge_and_train(tmp_path):
  config = load_config("self_rewarding", "tiny")
  micro = micro_online_config()
  for section in ("model", "online", "train", "eval"):
    config[section].update(dict(micro[section]))
  config.online.update(ranker="self_judge", reference="previous", min_margin=0.0)
  config.sft_warmup.update(steps=4, judge_fraction=0.5)
  config.data.batch_size = 8
  summary = online_preference.run(config, str(tmp_path))
  rounds = summary["rounds"]
  assert len(rounds) == 2 and all(r["pairs_kept"] >= 8 for r in rounds)
  # chosen = the completion the model itself judged best: a strictly positive judge gap
  assert all(r["pair_margin_mean"] > 0 for r in rounds)
  assert all(0.0 <= r["ranker_auc"] <= 1.0 or np.isnan(r["ranker_auc"]) for r in rounds)
  train = [r for r in summary["records"] if r["split"] == "train"]
  assert len(train) == 4 and all(np.isfinite(r["loss"]) for r in train)


def test_sppo_win_probabilities_from_the_group():
  s = np.array([0.1, 0.9, 0.5, 0.5])
  assert online_preference.win_prob_in_group(s, 1) == 1.0
  assert online_preference.win_prob_in_group(s, 0) == 0.0
  assert online_preference.win_prob_in_group(s, 2) == pytest.approx((1 + 0.5) / 3)
  pairs, _ = online_preference.best_vs_worst(["a"] * 4, ["1", "2", "3", "4"], s, 4, 0.0, lambda p, c: True)
  assert pairs[0].win_probs == (1.0, 0.0)


def test_kendall_tau_and_temporal_and_cream_pairs():
  assert online_preference.kendall_tau(np.array([1., 2, 3]), np.array([10., 20, 30])) == 1.0
  assert online_preference.kendall_tau(np.array([1., 2, 3]), np.array([3., 2, 1])) == -1.0
  new, old = ["9", "8"], ["1", "2"]
  pairs, _ = online_preference.best_vs_worst(["a", "a"], new, np.array([0.2, 0.9]), 2, 0.0,
                                             lambda p, c: True, older=(old, np.array([0.5, 0.1])),
                                             consistency=np.array([0.75]))
  assert (pairs[0].chosen, pairs[0].rejected) == ("8", "2")      # newer model's best, older's worst
  assert pairs[0].smoothing == pytest.approx(0.25) and pairs[0].margin == pytest.approx(0.8)


@pytest.mark.parametrize("variant", ["cream", "temporal"])
def test_self_rewarding_variants_run_and_resume(variant, tmp_path):
  config = load_config("self_rewarding", "tiny")
  micro = micro_online_config()
  for section in ("model", "online", "train", "eval"):
    config[section].update(dict(micro[section]))
  config.online.update(ranker="self_judge", reference="previous", min_margin=0.0, **{variant: True})
  config.sft_warmup.update(steps=4, judge_fraction=0.5)
  config.data.batch_size = 8
  full = online_preference.run(config, str(tmp_path / "full"))
  rounds = full["rounds"]
  assert len(rounds) == 2 and all(r["pairs_kept"] >= 8 for r in rounds)
  if variant == "cream":
    assert rounds[0]["judge_consistency"] == 1.0 and 0.0 <= rounds[1]["judge_consistency"] <= 1.0
  online_preference.run(config, str(tmp_path / "cut"), stop_at_step=3)
  resumed = online_preference.run(config, str(tmp_path / "cut"))
  strip = lambda recs: [{k: v for k, v in r.items() if k != "tokens_per_s"} for r in recs]  # noqa: E731
  assert strip(resumed["records"]) == strip(full["records"])
