"""Reward-model heads, objectives, data loaders and the evaluation report (unit level)."""
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rewardlab.data import ByteTokenizer, make_task
from rewardlab.data.preference import (PreferencePair, load_preference_parquet, load_preferences, rm_batch,
                                       step_labels, step_text, synthetic_rm_pairs)
from rewardlab.eval.reward_model import format_report, rm_report
from rewardlab.models import ModelConfig
from rewardlab.models import heads as H
from rewardlab.models.reward_model import HeadConfig, RewardModel, pair_logit, response_scores
from rewardlab.objectives import reward_model as rmo

ls = lambda x: float(jax.nn.log_sigmoid(x))  # noqa: E731


def test_bradley_terry_closed_form_margin_smoothing_ties_centering():
  rc, rr = jnp.array([1.0, 0.5]), jnp.array([0.0, 1.5])
  loss, m = rmo.bradley_terry(rc, rr)
  assert float(loss) == pytest.approx(-(ls(1.0) + ls(-1.0)) / 2, rel=1e-6)
  assert float(m["accuracy"]) == 0.5
  loss, _ = rmo.bradley_terry(rc, rr, margin=jnp.array([0.5, 0.5]))
  assert float(loss) == pytest.approx(-(ls(0.5) + ls(-1.5)) / 2, rel=1e-6)
  loss, _ = rmo.bradley_terry(rc[:1], rr[:1], label_smoothing=0.1)
  assert float(loss) == pytest.approx(-0.9 * ls(1.0) - 0.1 * ls(-1.0), rel=1e-6)
  loss, _ = rmo.bradley_terry(rc[:1], rr[:1], center_coef=0.01)
  assert float(loss) == pytest.approx(-ls(1.0) + 0.01 * 1.0, rel=1e-6)
  # a tie has target 1/2: symmetric in d, minimal (zero gradient) at d = 0, margin ignored
  tie = jnp.array([True])
  f = lambda d: rmo.bradley_terry(jnp.array([d]), jnp.array([0.0]), tie=tie, margin=jnp.array([3.0]))[0]  # noqa: E731
  assert float(f(0.7)) == pytest.approx(float(f(-0.7)), rel=1e-6)
  assert float(f(0.7)) == pytest.approx(-0.5 * ls(0.7) - 0.5 * ls(-0.7), rel=1e-6)
  assert abs(float(jax.grad(f)(0.0))) < 1e-7 and float(jax.grad(f)(0.7)) > 0
  # ties do not count toward accuracy
  _, m = rmo.bradley_terry(jnp.array([1.0, -1.0]), jnp.zeros(2), tie=jnp.array([False, True]))
  assert float(m["accuracy"]) == 1.0


def test_bt_gradient_raises_chosen_lowers_rejected():
  g = jax.grad(lambda r: rmo.bradley_terry(r[:1], r[1:])[0])(jnp.array([0.2, 0.4]))
  assert g[0] < 0 < g[1]


def test_other_objectives_closed_form():
  # MSE over rated attributes only
  loss, _ = rmo.attribute_mse(jnp.array([[1.0, 5.0]]), jnp.array([[0.0, 0.0]]), jnp.array([[True, False]]))
  assert float(loss) == 1.0
  # ordinal: one-hot levels give P = 1 / 0 / 1/2
  big = 30.0
  one_hot = lambda k: jnp.eye(5)[k] * big  # noqa: E731
  p = rmo.ordinal_pair_prob(jnp.stack([one_hot(3), one_hot(1), one_hot(2)]),
                            jnp.stack([one_hot(1), one_hot(3), one_hot(2)]))
  np.testing.assert_allclose(p, [1.0, 0.0, 0.5], atol=1e-6)
  lc, lr = jnp.array([[0.1, 0.5, -0.2]]), jnp.array([[0.3, -0.1, 0.0]])
  pc, pr = jax.nn.softmax(lc), jax.nn.softmax(lr)
  by_hand = sum(pc[0, i] * pr[0, j] * (1.0 if i > j else 0.5 if i == j else 0.0)
                for i in range(3) for j in range(3))
  assert float(rmo.ordinal_pair_prob(lc, lr)[0]) == pytest.approx(float(by_hand), rel=1e-6)
  loss, _ = rmo.ordinal_ce(jnp.log(jnp.array([[0.2, 0.8]])), jnp.array([1]), jnp.array([True]))
  assert float(loss) == pytest.approx(-np.log(0.8), rel=1e-6)
  loss, m = rmo.process_bce(jnp.array([[2.0, -1.0, 9.0]]), jnp.array([[1.0, 1.0, 0.0]]),
                            jnp.array([[True, True, False]]))
  assert float(loss) == pytest.approx(-(ls(2.0) + ls(-1.0)) / 2, rel=1e-6)
  assert float(m["step_accuracy"]) == 0.5


def test_pair_metrics_and_centering_by_hand():
  """accuracy over decided pairs with a strict win (d = 0 is not one), margin and P(chosen)
  as batch means, the centering term (r_c + r_r)^2 per pair."""
  rc, rr = jnp.array([1.5, 0.0, 2.0]), jnp.array([0.5, 0.0, -1.0])
  tie = jnp.array([False, False, True])
  loss, m = rmo.bradley_terry(rc, rr, tie=tie, center_coef=0.1)
  d = np.array([1.0, 0.0, 3.0])
  center = np.array([4.0, 0.0, 1.0])
  nll = [-ls(1.0), -ls(0.0), -0.5 * ls(3.0) - 0.5 * ls(-3.0)]
  assert float(loss) == pytest.approx(np.mean(np.array(nll) + 0.1 * center), rel=1e-6)
  assert float(m["accuracy"]) == 0.5
  assert float(m["margin"]) == pytest.approx(d.mean(), rel=1e-6)
  assert float(m["prob_chosen"]) == pytest.approx(np.mean(1 / (1 + np.exp(-d))), rel=1e-6)
  assert float(m["reward_chosen"]) == pytest.approx(3.5 / 3, rel=1e-6)
  assert float(m["reward_rejected"]) == pytest.approx(-0.5 / 3, rel=1e-6)
  assert float(m["center"]) == pytest.approx(5 / 3, rel=1e-6)
  _, m = rmo.bradley_terry(rc, rr, tie=jnp.ones(3, bool))
  assert float(m["accuracy"]) == 0.0                       # nothing decided: 0, not NaN


def test_attribute_mse_ordinal_general_and_process_by_hand():
  pred = jnp.array([[1.0, 2.0, 3.0], [0.5, 0.0, 0.0]])
  ratings = jnp.array([[0.0, 1.0, 5.0], [1.0, 9.0, 9.0]])
  mask = jnp.array([[True, True, True], [True, False, False]])
  loss, m = rmo.attribute_mse(pred, ratings, mask)
  assert float(loss) == pytest.approx((1 + 1 + 4 + 0.25) / 4, rel=1e-6) and float(m["attribute_mse"]) == float(loss)
  assert float(rmo.attribute_mse(pred, ratings, jnp.zeros_like(mask))[0]) == 0.0
  # ordinal preference: -log P(c > r), ties target 1/2, P clipped to [1e-6, 1 - 1e-6]
  lc = jnp.array([[0.1, 0.5, -0.2], [2.0, 0.0, -1.0], [0.0, 0.0, 0.0]])
  lr = jnp.array([[0.3, -0.1, 0.0], [-1.0, 0.0, 1.0], [1.0, 0.0, 0.0]])
  pc, pr = np.asarray(jax.nn.softmax(lc)), np.asarray(jax.nn.softmax(lr))
  beats = np.array([[1.0 if i > j else 0.5 if i == j else 0.0 for j in range(3)] for i in range(3)])
  p = np.einsum("bi,ij,bj->b", pc, beats, pr)
  tie = jnp.array([False, False, True])
  loss, m = rmo.ordinal_preference(lc, lr, tie=tie, label_smoothing=0.1)
  want = [-(0.9 * np.log(p[0]) + 0.1 * np.log1p(-p[0])), -(0.9 * np.log(p[1]) + 0.1 * np.log1p(-p[1])),
          -(0.5 * np.log(p[2]) + 0.5 * np.log1p(-p[2]))]
  assert float(loss) == pytest.approx(np.mean(want), rel=1e-5)
  logit = np.log(p) - np.log1p(-p)
  assert float(m["margin"]) == pytest.approx(logit.mean(), rel=1e-5)
  assert float(m["accuracy"]) == pytest.approx(np.mean(logit[:2] > 0))
  default, _ = rmo.ordinal_preference(lc[:2], lr[:2])      # no ties, no smoothing
  assert float(default) == pytest.approx(-np.mean(np.log(p[:2])), rel=1e-5)
  sure_loss, _ = rmo.ordinal_preference(jnp.eye(3)[:1] * 40.0, jnp.eye(3)[2:] * 40.0)   # P = 0 -> 1e-6
  assert float(sure_loss) == pytest.approx(-np.log(1e-6), rel=1e-4)
  # general preference: the score is the logit
  loss, m = rmo.general_preference(jnp.array([2.0, -1.0, 0.5]), tie=jnp.array([False, False, True]))
  assert float(loss) == pytest.approx(np.mean([-ls(2.0), -ls(-1.0), -0.5 * ls(0.5) - 0.5 * ls(-0.5)]), rel=1e-6)
  assert float(m["accuracy"]) == 0.5
  assert float(rmo.general_preference(jnp.array([2.0]), label_smoothing=0.2)[0]) == pytest.approx(
      -0.8 * ls(2.0) - 0.2 * ls(-2.0), rel=1e-6)
  # ordinal CE and process BCE average over real entries only; a logit of 0 predicts "wrong"
  loss, _ = rmo.ordinal_ce(jnp.log(jnp.array([[0.2, 0.8], [0.5, 0.5], [0.9, 0.1]])), jnp.array([1, 0, 1]),
                           jnp.array([True, True, False]))
  assert float(loss) == pytest.approx(-(np.log(0.8) + np.log(0.5)) / 2, rel=1e-6)
  loss, m = rmo.process_bce(jnp.array([[2.0, 0.0], [-1.0, 5.0]]), jnp.array([[1.0, 1.0], [0.0, 1.0]]),
                            jnp.array([[True, True], [True, False]]))
  assert float(loss) == pytest.approx(-(ls(2.0) + ls(0.0) + ls(1.0)) / 3, rel=1e-6)
  assert float(m["step_accuracy"]) == pytest.approx(2 / 3)
  loss, m = rmo.process_bce(jnp.array([[-3.0, 4.0]]), jnp.array([[0.0, 0.0]]), jnp.array([[True, False]]))
  assert float(loss) == pytest.approx(-ls(3.0), rel=1e-6) and float(m["step_accuracy"]) == 1.0   # one real step


def test_ensemble_aggregation_order_and_agreement():
  scores = jax.random.uniform(jax.random.PRNGKey(0), (256, 5))
  mean, mn, uwo = (H.ENSEMBLE_AGGREGATIONS[k](scores, 1.0) for k in ("mean", "min", "uwo"))
  # min <= UWO holds whenever lam * (max - mean) <= 1 (Bhatia-Davis: var <= (mean-min)(max-mean))
  assert bool(jnp.all(mn <= uwo + 1e-6)) and bool(jnp.all(uwo <= mean + 1e-6))
  agree = jnp.broadcast_to(jnp.array([[0.3], [-1.2]]), (2, 5))
  for how in ("mean", "min", "uwo"):
    np.testing.assert_allclose(H.ENSEMBLE_AGGREGATIONS[how](agree, 1.0), [0.3, -1.2], rtol=1e-6)


def test_general_preference_antisymmetric_and_fits_a_cycle_bt_cannot():
  v = jax.random.normal(jax.random.PRNGKey(1), (3, 6))
  s = H.general_preference_score(v[:, None], v[None, :])
  np.testing.assert_allclose(s, -s.T, atol=1e-6)
  np.testing.assert_allclose(jnp.diag(s), 0.0, atol=1e-7)
  winners, losers = jnp.array([0, 1, 2]), jnp.array([1, 2, 0])     # a > b > c > a

  def fit(loss_of, params):
    opt = optax.adam(0.05)
    state = opt.init(params)
    for _ in range(500):
      g = jax.grad(loss_of)(params)
      updates, state = opt.update(g, state)
      params = optax.apply_updates(params, updates)
    return params

  gpm_loss = lambda e: rmo.general_preference(H.general_preference_score(e[winners], e[losers]))[0]  # noqa: E731
  emb = fit(gpm_loss, 0.1 * jax.random.normal(jax.random.PRNGKey(2), (3, 2)))
  gpm_acc = float(jnp.mean(H.general_preference_score(emb[winners], emb[losers]) > 0))
  bt_loss = lambda r: rmo.bradley_terry(r[winners], r[losers])[0]  # noqa: E731
  r = fit(bt_loss, jnp.array([0.1, 0.0, -0.1]))
  bt_acc = float(jnp.mean(r[winners] > r[losers]))
  assert gpm_acc == 1.0 and float(gpm_loss(emb)) < 0.1
  assert bt_acc <= 2 / 3 and float(bt_loss(r)) >= np.log(2) - 1e-3   # BT's best is all-equal rewards


def test_process_head_reads_exactly_the_separator_positions():
  sep = 59
  tokens = jnp.array([[1, sep, 5, 7, sep, 8, sep, 0],      # prompt separator at 1 is ignored
                      [2, 3, 4, sep, 9, 9, 0, 0]])
  valid = jnp.array([[1, 1, 1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 1, 0, 0]], bool)
  start = jnp.array([2, 3])
  pos, mask = H.separator_positions(tokens, valid, start, sep, max_steps=3)
  np.testing.assert_array_equal(pos, [[4, 6, 0], [3, 0, 0]])
  np.testing.assert_array_equal(mask, [[True, True, False], [True, False, False]])
  head = H.ProcessHead(4, rngs=nnx.Rngs(0))
  hidden = jax.random.normal(jax.random.PRNGKey(0), (2, 8, 4))
  out = head(hidden, pos)
  changed = hidden.at[0, jnp.array([0, 1, 2, 3, 5, 7])].add(100.0).at[1, jnp.array([0, 1, 2, 4, 5])].add(100.0)
  np.testing.assert_allclose(head(changed, pos)[mask], out[mask], rtol=1e-6)  # real steps only
  np.testing.assert_allclose(out[0, :2], hidden[0, jnp.array([4, 6])] @ head.kernel[...] + head.bias[...], rtol=1e-6)


@pytest.mark.parametrize("head", ["scalar", "ensemble", "gated", "ordinal", "general", "process"])
def test_every_head_gives_antisymmetric_pair_logits_and_learns(head):
  cfg = ModelConfig(vocab_size=264, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16,
                    mlp_dim=64, max_seq_len=24)
  tok = ByteTokenizer()
  hc = HeadConfig(head, num_members=3, independent_trunks=(head == "ensemble"),
                  sep_id=tok.encode(";")[0] if head == "process" else -1)
  task = make_task("addition", max_digits=2)
  pairs = synthetic_rm_pairs(task, np.random.default_rng(0), 16, steps=head == "process")
  b = rm_batch(pairs, tok, 24, 3, 8)
  model = RewardModel(cfg, hc, rngs=nnx.Rngs(0))
  out = model(jnp.asarray(b.tokens), jnp.asarray(b.valid), jnp.asarray(b.completion_start))
  swap = lambda x: x.reshape(16, 2, *x.shape[1:])[:, ::-1].reshape(x.shape)  # noqa: E731  (pair-major rows)
  out_swapped = model(swap(b.tokens), swap(b.valid), swap(b.completion_start))
  np.testing.assert_allclose(pair_logit(hc, out), -pair_logit(hc, out_swapped), atol=2e-5)
  assert response_scores(hc, out, group_size=4).shape == (32,)
  from rewardlab.pipelines.reward_model import rm_loss
  import ml_collections
  rc = ml_collections.ConfigDict(dict(label_smoothing=0.0, use_margin=False, margin_scale=1.0,
                                      center_coef=0.0, mse_weight=1.0, ordinal_ce_weight=0.5,
                                      rating_range=(0.0, 1.0)))
  graphdef, params = nnx.split(model, nnx.Param)
  batch = jax.tree.map(jnp.asarray, b)

  def loss_of(p):
    m = nnx.merge(graphdef, p)
    return rm_loss(hc, rc, m(batch.tokens, batch.valid, batch.completion_start), batch)[0]

  opt = optax.adam(3e-3)
  state, losses = opt.init(params), []
  step = jax.jit(lambda p, s: (lambda l, g: (l, *opt.update(g, s, p)))(*jax.value_and_grad(loss_of)(p)))
  for _ in range(15):
    loss, updates, state = step(params, state)
    params = optax.apply_updates(params, updates)
    losses.append(float(loss))
  assert losses[-1] < losses[0]


@pytest.mark.parametrize("head", ["scalar", "ensemble"])
def test_scanned_trunks_score_and_train_like_unrolled_ones(head):
  """Reward-model trunks (K independent ones for the ensemble) and a value head on scanned
  layers: same rewards, same value estimates, same gradients as the unrolled trunks."""
  import dataclasses
  from rewardlab.models import Transformer
  from rewardlab.models.transformer import stack_layers, unstack_layers
  cfg = ModelConfig(vocab_size=264, d_model=32, n_layers=2, n_heads=2, n_kv_heads=1, head_dim=16,
                    mlp_dim=64, max_seq_len=24)
  scfg = dataclasses.replace(cfg, scan_layers=True)
  hc = HeadConfig(head, num_members=3, independent_trunks=head == "ensemble")
  b = rm_batch(synthetic_rm_pairs(make_task("addition", max_digits=2), np.random.default_rng(0), 8),
               ByteTokenizer(), 24, 3, 8)
  args = (jnp.asarray(b.tokens), jnp.asarray(b.valid), jnp.asarray(b.completion_start))
  unrolled = RewardModel(cfg, hc, rngs=nnx.Rngs(0))
  graphdef, params = nnx.split(RewardModel(scfg, hc, rngs=nnx.Rngs(1)), nnx.Param)
  p = nnx.to_pure_dict(nnx.state(unrolled, nnx.Param))
  p["trunks"] = {i: stack_layers(t) for i, t in p["trunks"].items()}
  nnx.replace_by_pure_dict(params, p)
  scanned = nnx.merge(graphdef, params)
  assert len(scanned.trunks) == hc.num_trunks
  np.testing.assert_allclose(scanned(*args)["reward"], unrolled(*args)["reward"], atol=1e-5)
  loss = lambda m: jnp.mean(jax.nn.log_sigmoid(pair_logit(hc, m(*args))))  # noqa: E731
  g_u = nnx.to_pure_dict(nnx.grad(loss)(unrolled))
  g_s = nnx.to_pure_dict(nnx.grad(loss)(scanned))
  g_s["trunks"] = {i: unstack_layers(t) for i, t in g_s["trunks"].items()}
  for x, y in zip(jax.tree.leaves(g_u), jax.tree.leaves(g_s)):
    np.testing.assert_allclose(y, x, atol=1e-5, rtol=1e-4)
  # PPO's value head on a scanned policy trunk
  value = H.ValueHead(cfg.d_model, rngs=nnx.Rngs(2))
  policy_u = Transformer(cfg, rngs=nnx.Rngs(0))
  pg, pp = nnx.split(Transformer(scfg, rngs=nnx.Rngs(1)), nnx.Param)
  nnx.replace_by_pure_dict(pp, stack_layers(nnx.to_pure_dict(nnx.state(policy_u, nnx.Param))))
  values = [value(m.hidden_states(args[0], valid=args[1])[0]) for m in (policy_u, nnx.merge(pg, pp))]
  np.testing.assert_allclose(values[1], values[0], atol=1e-5)


def test_loaders_parquet_and_jsonl_agree_and_name_rows(tmp_path):
  pairs = synthetic_rm_pairs(make_task("addition"), np.random.default_rng(0), 12, tie_frac=0.3)
  rows = [{k: (list(v) if isinstance(v, tuple) else v) for k, v in p._asdict().items() if v is not None}
          for p in pairs]
  with open(tmp_path / "p.jsonl", "w") as f:
    f.writelines(json.dumps(r) + "\n" for r in rows)
  import pyarrow as pa
  import pyarrow.parquet as pq
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "p.parquet")
  assert load_preferences(str(tmp_path / "p.jsonl")) == pairs
  assert load_preferences(str(tmp_path / "p.parquet")) == pairs
  bad = [dict(rows[0]), {"prompt": "1+1=", "chosen": "2"}]
  pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
  with pytest.raises(ValueError, match=r"bad.parquet:row 2: missing or non-string field 'rejected'"):
    load_preference_parquet(str(tmp_path / "bad.parquet"))
  with open(tmp_path / "bad.jsonl", "w") as f:
    f.write(json.dumps(rows[0]) + "\n" + json.dumps(dict(rows[0], chosen_ratings=["x"])) + "\n")
  with pytest.raises(ValueError, match=r"bad.jsonl:2: field 'chosen_ratings' must be a list of numbers"):
    load_preferences(str(tmp_path / "bad.jsonl"))
  with pytest.raises(ValueError, match="unknown preference file type"):
    load_preferences(str(tmp_path / "p.csv"))


def test_tfds_builder_round_trips_local_files(tmp_path):
  from rewardlab.data.tfds_preference import load_tfds_preferences, tfds_to_pairs
  pairs = synthetic_rm_pairs(make_task("addition"), np.random.default_rng(1), 10, tie_frac=0.3, steps=True)
  with open(tmp_path / "train.jsonl", "w") as f:
    for p in pairs:
      f.write(json.dumps({k: v for k, v in p._asdict().items() if v is not None}) + "\n")
  sources = load_tfds_preferences({"train": str(tmp_path / "train.jsonl")}, str(tmp_path / "tfds"))
  back = sorted(tfds_to_pairs(sources["train"]), key=lambda p: (p.prompt, p.chosen, p.rejected))
  want = sorted(pairs, key=lambda p: (p.prompt, p.chosen, p.rejected))
  assert len(back) == len(want)
  for got, exp in zip(back, want):
    assert got._replace(margin=None, chosen_steps=None, rejected_steps=None) == exp._replace(
        margin=None, chosen_steps=None, rejected_steps=None)
    assert got.margin == pytest.approx(exp.margin, abs=1e-6) and got.chosen_steps == exp.chosen_steps


def test_synthetic_data_gold_labels_noise_length_and_steps():
  task = make_task("addition")
  gold = lambda text, prompt: __import__("rewardlab.data.preference", fromlist=["x"]).gold_reward(  # noqa: E731
      text, str(eval(prompt[:-1])))
  clean = synthetic_rm_pairs(task, np.random.default_rng(0), 400)
  assert all(gold(p.chosen, p.prompt) > gold(p.rejected, p.prompt) for p in clean)
  noisy = synthetic_rm_pairs(task, np.random.default_rng(0), 800, label_noise=0.25)
  assert 0.18 < np.mean([gold(p.chosen, p.prompt) < gold(p.rejected, p.prompt) for p in noisy]) < 0.32
  longer = lambda ps: np.mean([len(p.chosen) > len(p.rejected) for p in ps])  # noqa: E731
  biased = synthetic_rm_pairs(task, np.random.default_rng(0), 800, length_bias=0.8)
  trap = synthetic_rm_pairs(task, np.random.default_rng(0), 800, length_trap=1.0)
  assert longer(biased) > 0.8 > 0.1 > longer(trap)
  ties = [p for p in synthetic_rm_pairs(task, np.random.default_rng(0), 200, tie_frac=0.5) if p.tie]
  assert ties and all(gold(p.chosen, p.prompt) == gold(p.rejected, p.prompt) for p in ties)
  assert step_text("123") == "3;2;1;"
  assert step_labels("124", "123") == (0.0, 0.0, 0.0) and step_labels("173", "123") == (1.0, 0.0, 0.0)
  assert step_labels("23", "123") == (1.0, 0.0)   # all present digits right, but one is missing


def test_rm_report_by_hand():
  P = lambda pr, c, r, subset, cat, tie=False: PreferencePair(pr, c, r, None, subset, cat, tie)  # noqa: E731
  pairs = [P("q1", "a", "b", "s1", "x"), P("q1", "a", "c", "s1", "x"), P("q1", "a", "d", "s1", "x"),
           P("q2", "e", "f", "s2", "y"), P("q2", "e", "g", "s2", "y"), P("q2", "e", "h", "s2", "y"),
           P("q3", "i", "j", "s2", "y", tie=True)]
  logits = np.array([2.0, 1.0, 0.5, 3.0, -1.0, 0.2, -5.0])
  gold = np.array([[1, 0], [1, 0], [1, 0], [1, 0], [1, 0], [1, 0], [0.5, 0.5]], float)
  rep = rm_report(pairs, logits, scores=np.stack([logits, np.zeros(7)], 1), gold=gold)
  assert rep["count"] == 6 and rep["accuracy"] == pytest.approx(5 / 6)
  assert rep["by_subset"]["s1"]["accuracy"] == 1.0 and rep["by_subset"]["s2"]["accuracy"] == pytest.approx(2 / 3)
  assert rep["best_of_4"] == {"accuracy": 0.5, "count": 2}
  assert rep["gold"]["pairwise_agreement"] == pytest.approx(5 / 6)
  assert sum(r["count"] for r in rep["calibration"]["table"]) == 6
  assert "| subset: s2 | 3 | 0.667 |" in format_report(rep)
