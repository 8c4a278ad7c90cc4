import json

import numpy as np
import pytest

from helpers import load_config
from rewardlab.data import make_task
from rewardlab.data.preference import (corrupt_answer, gold_reward, load_preference_jsonl,
                                       synthetic_pairs)
from rewardlab.objectives import OBJECTIVES
from rewardlab.pipelines import PIPELINES, preference
from rewardlab.train import validate


def test_gold_reward_and_synthetic_pairs():
  assert gold_reward("123", "123") == 1.0
  assert gold_reward("124", "123") == pytest.approx(0.5 * 2 / 3)
  assert gold_reward("23", "123") == pytest.approx(0.5 * 2 / 3 - 0.1)
  rng = np.random.default_rng(0)
  assert all(corrupt_answer("57", rng) != "57" for _ in range(200))
  task = make_task("addition")
  pairs = synthetic_pairs(task, np.random.default_rng(0), 200)
  assert all(p.chosen != p.rejected for p in pairs)
  gold = lambda text, prompt: gold_reward(text, str(eval(prompt[:-1])))
  assert all(gold(p.chosen, p.prompt) > gold(p.rejected, p.prompt) for p in pairs)
  noisy = synthetic_pairs(task, np.random.default_rng(0), 400, label_noise=0.3)
  flipped = np.mean([gold(p.chosen, p.prompt) < gold(p.rejected, p.prompt) for p in noisy])
  assert 0.2 < flipped < 0.4


def test_jsonl_loader_names_file_line_and_field(tmp_path):
  good = tmp_path / "good.jsonl"
  good.write_text(json.dumps({"prompt": "1+1=", "chosen": "2", "rejected": "3", "subset": "math"}) + "\n\n")
  [pair] = load_preference_jsonl(str(good))
  assert pair.chosen == "2" and pair.subset == "math"
  cases = [('{"prompt": "1+1=", "chosen": "2"}', "bad.jsonl:2: missing or non-string field 'rejected'"),
           ('{"prompt": "1+1=", "chosen": "2", "rejected": "2"}', "bad.jsonl:2: chosen equals rejected"),
           ('{"prompt": "1+1=", "chosen": "", "rejected": "2"}', "bad.jsonl:2: empty completion"),
           ('{"prompt": "1+1=", "chosen": "2", ', "bad.jsonl:2: not valid JSON")]
  for line, message in cases:
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}) + "\n" + line + "\n")
    with pytest.raises(ValueError, match=message):
      load_preference_jsonl(str(bad))


def _micro(objective="dpo"):
  c = load_config("dpo_synthetic", "tiny")
  c.objective.name = objective
  c.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)
  c.sft_warmup.steps = 4
  c.data.update(num_pairs=32, batch_size=8)
  c.train.update(steps=4, log_every=1, eval_every=2, checkpoint_every=2, progress=False,
                 tensorboard=False)
  c.eval.update(num_problems=8, batch_size=8, max_new_tokens=3)
  return c


def test_reference_is_computed_once_and_skipped_when_reference_free(tmp_path):
  dpo = preference.run(_micro("dpo"), str(tmp_path / "dpo"))
  simpo = preference.run(_micro("simpo"), str(tmp_path / "simpo"))
  train = lambda s: [r for r in s["records"] if r["split"] == "train"]
  assert all(r["ref_forward_passes"] == 1.0 for r in train(dpo))
  assert all(r["ref_forward_passes"] == 0.0 for r in train(simpo))
  # step 1 of DPO: policy == reference, so implicit rewards start at exactly 0
  assert train(dpo)[0]["reward_margin"] == pytest.approx(0.0, abs=1e-5)


def test_preference_data_errors(tmp_path):
  c = _micro()
  c.data.num_pairs = 4
  with pytest.raises(ValueError, match="4 pairs, fewer than data.batch_size=8"):
    preference.run(c, str(tmp_path / "few"))
  c = _micro()
  bad = tmp_path / "pairs.jsonl"
  bad.write_text('{"prompt": "1+1=", "chosen": "2"}\n')
  c.data.pref_path = str(bad)
  with pytest.raises(ValueError, match="pairs.jsonl:1: missing or non-string field 'rejected'"):
    preference.run(c, str(tmp_path / "bad"))
  c = _micro()
  c.data.pref_path = ""
  c.objective.name = "grpo"
  from rewardlab.train import ConfigError
  with pytest.raises(ConfigError, match="objective.name: 'grpo' is not allowed"):
    validate(c, OBJECTIVES, PIPELINES, n_devices=1)


@pytest.mark.slow
def test_dpo_tiny_learns_the_preferences_and_rpo_beats_the_reference(tmp_path):
  """Tiny config: SFT warm-up (300 steps), then 100 steps on 1024 gold-labelled pairs.
  Measured on the 2-core CPU: DPO's implicit-reward accuracy 0.86 -> 0.98 and margin
  0.07 -> 0.47, but its greedy gold reward moves little (0.445 -> 0.419: it mostly pushes
  the off-policy rejected answers down); RPO (DPO + chosen NLL) raises the gold reward
  0.445 -> 0.470 with win rate 0.53 against the reference."""
  config = load_config("dpo_synthetic", "tiny")
  config.train.update(progress=False, tensorboard=False)
  dpo = preference.run(config, str(tmp_path / "dpo"))
  train = [r for r in dpo["records"] if r["split"] == "train"]
  assert train[-1]["reward_accuracy"] > 0.9
  assert train[-1]["reward_margin"] > 3 * train[0]["reward_margin"] > 0
  assert train[-1]["reward_rejected"] < train[0]["reward_rejected"]
  config.objective.name = "rpo"
  rpo = preference.run(config, str(tmp_path / "rpo"))
  end = rpo["evals"][-1]
  assert end["gold_reward"] > end["gold_reward_ref"], end
  assert end["win_rate_vs_ref"] > 0.5


def test_bad_pairs_are_errors_or_counted_skips(tmp_path):
  from rewardlab.data import ByteTokenizer
  from rewardlab.data.preference import drop_too_long, load_preferences
  rows = [{"prompt": "1+1=", "chosen": "2", "rejected": "3"},
          {"prompt": "1+1=", "chosen": "2", "rejected": "2"},
          {"prompt": "1+1=", "chosen": "", "rejected": "2"},
          {"prompt": "1+1=", "chosen": "2" * 40, "rejected": "3"},
          {"prompt": "1+1=", "chosen": "2", "rejected": "2"}]
  path = tmp_path / "pairs.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  with pytest.raises(ValueError, match="pairs.jsonl:2: chosen equals rejected"):
    load_preferences(str(path))
  skipped = {}
  pairs = drop_too_long(load_preferences(str(path), skipped), ByteTokenizer(), 16, skipped)
  assert [p.chosen for p in pairs] == ["2"]
  assert skipped == {"chosen equals rejected": 2, "empty completion": 1, "too_long": 1,
                     "first_skipped_at": f"{path}:2"}
  with pytest.raises(ValueError, match=r"preference pair 1 .* over data.seq_len=16"):
    drop_too_long(load_preferences(str(path), {}), ByteTokenizer(), 16)


def test_kto_trains_from_pairs_in_the_pipeline(tmp_path):
  kto = preference.run(_micro("kto"), str(tmp_path / "kto"))
  train = [r for r in kto["records"] if r["split"] == "train"]
  assert len(train) == 4 and all(np.isfinite(r["loss"]) for r in train)
  assert train[0]["kl_reference_point"] == pytest.approx(0.0, abs=1e-5)   # policy == reference at step 1


def test_kto_trains_on_unpaired_rows_with_cached_reference_and_kl_partners(tmp_path):
  """data.unpaired_path: TRL's unpaired rows (standard and conversational) train KTO; the
  reference's log-probs of each row and of its KL partner are cached once, so at step 1
  (policy == reference) the implicit rewards and the reference point z are 0."""
  rows = []
  for i, p in enumerate(synthetic_pairs(make_task("addition"), np.random.default_rng(3), 12)):
    rows.append({"prompt": p.prompt, "completion": p.chosen, "label": True})
    rows.append({"prompt": [{"role": "user", "content": p.prompt}],
                 "completion": [{"role": "assistant", "content": p.rejected}], "label": False})
  path = tmp_path / "unpaired.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in rows))
  config = _micro("kto")
  config.data.unpaired_path = str(path)
  config.data.seq_len = 32
  validate(config, OBJECTIVES, PIPELINES, n_devices=1)
  out = preference.run(config, str(tmp_path / "run"))
  train = [r for r in out["records"] if r["split"] == "train"]
  assert out["num_pairs"] == 24 and len(train) == 4 and all(np.isfinite(r["loss"]) for r in train)
  first = train[0]
  assert first["kl_reference_point"] == pytest.approx(0.0, abs=1e-5)
  assert first["reward_chosen"] == pytest.approx(0.0, abs=1e-5) and first["ref_forward_passes"] == 1.0
  assert first["loss"] == pytest.approx(0.5, abs=1e-5)          # 1 - sigmoid(0) for every row
  assert train[-1]["reward_margin"] > 0                          # desirable rows pulled above undesirable
  config.objective.name = "dpo"
  with pytest.raises(Exception, match="data.unpaired_path: unpaired rows train KTO only"):
    validate(config, OBJECTIVES, PIPELINES, n_devices=1)


def test_sppo_trains_from_pairs_in_the_pipeline(tmp_path):
  sppo = preference.run(_micro("sppo"), str(tmp_path / "sppo"))
  train = [r for r in sppo["records"] if r["split"] == "train"]
  assert len(train) == 4 and all(np.isfinite(r["loss"]) for r in train)
  # labelled pairs: P(chosen > pi) = 1, P(rejected > pi) = 0 -> targets +-eta/2, mean 0
  assert train[0]["target_mean"] == pytest.approx(0.0) and train[0]["loss"] == pytest.approx(0.25, rel=1e-3)


def test_gold_token_rewards_and_tgdpo_in_the_pipeline(tmp_path):
  from rewardlab.data import ByteTokenizer
  from rewardlab.data.preference import PreferencePair, gold_token_rewards, pair_batch
  assert gold_token_rewards("124", "123") == (1.0, 1.0, -1.0, 0.0)      # + EOS
  assert gold_token_rewards("9123\n.", "123") == (-1.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0)
  pair = PreferencePair("1+2=", "3", "4", chosen_token_rewards=(1.0, 0.0), rejected_token_rewards=(-1.0, 0.0))
  b = pair_batch([pair], ByteTokenizer(), 10, token_rewards=True)
  # log-prob index 4 predicts token 5, the first completion token after BOS + "1+2="
  np.testing.assert_array_equal(b.token_rewards[:, 4:6], [[1.0, 0.0], [-1.0, 0.0]])
  assert b.token_rewards[:, :4].sum() == 0 and b.token_rewards[:, 6:].sum() == 0
  with pytest.raises(ValueError, match="has no token rewards"):
    pair_batch([pair._replace(chosen_token_rewards=None)], ByteTokenizer(), 10, token_rewards=True)
  cfg = _micro("tgdpo")
  tg = preference.run(cfg, str(tmp_path / "tgdpo"))
  cfg0 = _micro("tgdpo")
  cfg0.objective.token_alpha = 0.0                      # alpha = 0 is DPO exactly
  dpo = preference.run(_micro("dpo"), str(tmp_path / "dpo"))
  tg0 = preference.run(cfg0, str(tmp_path / "tg0"))
  first = lambda s: [r for r in s["records"] if r["split"] == "train"]  # noqa: E731
  assert [r["loss"] for r in first(tg0)] == pytest.approx([r["loss"] for r in first(dpo)], rel=1e-4)
  assert all(np.isfinite(r["loss"]) for r in first(tg))
  assert first(tg)[-1]["loss"] != pytest.approx(first(dpo)[-1]["loss"], rel=1e-4)
