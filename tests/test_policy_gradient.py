"""Closed-form and gradient checks of the policy-gradient objectives."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rewardlab.objectives import policy_gradient as pg
from rewardlab.ops import aggregate


def test_group_advantages_closed_form():
  r = jnp.array([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 2.0, 2.0])
  a = pg.grpo_advantages(r, 4)
  u = 0.5 / (np.sqrt(1 / 3) + 1e-4)                                # mean .5, unbiased std sqrt(1/3)
  np.testing.assert_allclose(a[:4], [u, -u, -u, u], rtol=1e-6)
  np.testing.assert_allclose(a[4:], 0.0)                          # all-equal group -> 0
  a_pop = pg.grpo_advantages(r, 4, eps=1e-6, std="population")    # the pre-issue-21 convention
  np.testing.assert_allclose(a_pop[:4], [1, -1, -1, 1], atol=1e-5)  # population std .5
  np.testing.assert_allclose(pg.dr_grpo_advantages(r, 4)[:4], [0.5, -0.5, -0.5, 0.5])
  # RLOO: baseline excludes the sample itself
  r3 = jnp.array([3.0, 0.0, 0.0])
  np.testing.assert_allclose(pg.rloo_advantages(r3, 3), [3.0, -1.5, -1.5])
  assert float(pg.zero_grad_group_fraction(a, 4)) == 0.5
  np.testing.assert_array_equal(pg.nonuniform_groups(r, 4), [True, False])


def test_clipped_surrogate_closed_form_and_metrics():
  logp_old = jnp.log(jnp.array([[0.5, 0.5]]))
  logp_new = jnp.log(jnp.array([[0.75, 0.25]]))      # ratios 1.5 and 0.5
  mask = jnp.ones((1, 2), bool)
  loss, m = pg.policy_gradient_loss(logp_new, logp_old, logp_old, mask, jnp.array([2.0]),
                                    clip_low=0.2, clip_high=0.2, beta=0.0)
  # A > 0: min(1.5*2, 1.2*2) = 2.4; min(0.5*2, 0.8*2) = 1.0 -> loss = -(2.4 + 1.0) / 2
  assert float(loss) == pytest.approx(-1.7, rel=1e-6)
  assert float(m["clip_frac"]) == pytest.approx(0.5)
  loss_neg, _ = pg.policy_gradient_loss(logp_new, logp_old, logp_old, mask, jnp.array([-2.0]))
  # A < 0: min(-3, -2.4) = -3; min(-1, -1.6) = -1.6 -> loss = (3 + 1.6) / 2
  assert float(loss_neg) == pytest.approx(2.3, rel=1e-6)
  # KL penalty with k3: exp(ref - new) - (ref - new) - 1 averaged, times beta
  lref = jnp.log(jnp.array([[0.5, 0.5]]))
  with_kl, m = pg.policy_gradient_loss(logp_new, logp_old, lref, mask, jnp.array([2.0]), beta=0.1)
  k3 = np.array([0.5 / 0.75 - np.log(0.5 / 0.75) - 1, 0.5 / 0.25 - np.log(0.5 / 0.25) - 1])
  assert float(with_kl) == pytest.approx(-1.7 + 0.1 * k3.mean(), rel=1e-5)
  assert float(m["kl_ref"]) == pytest.approx(k3.mean(), rel=1e-5)


def test_clipping_stops_the_gradient_exactly_where_ppo_says():
  logp_old = jnp.zeros((1, 4))
  logp_new = jnp.log(jnp.array([[1.5, 1.1, 0.5, 0.9]]))  # ratios
  mask = jnp.ones((1, 4), bool)

  def grad(adv):
    return jax.grad(lambda x: pg.policy_gradient_loss(x, logp_old, None, mask, jnp.array([adv]))[0])(logp_new)

  g_pos, g_neg = grad(1.0), grad(-1.0)
  # A > 0: ratio 1.5 > 1.2 is clipped (no gradient); 1.1, 0.5, 0.9 are not
  assert float(g_pos[0, 0]) == 0.0 and all(float(g_pos[0, i]) < 0 for i in (1, 2, 3))
  # A < 0: ratio 0.5 < 0.8 is clipped; ratio 1.5 is not (pessimistic bound keeps it)
  assert float(g_neg[0, 2]) == 0.0 and all(float(g_neg[0, i]) > 0 for i in (0, 1, 3))


def test_all_equal_group_gives_zero_policy_gradient():
  rewards = jnp.array([1.0, 1.0, 1.0, 1.0])
  logp = jax.random.normal(jax.random.PRNGKey(0), (4, 3)) - 2
  mask = jnp.ones((4, 3), bool)
  for adv_fn in (pg.grpo_advantages, pg.dr_grpo_advantages):
    adv = adv_fn(rewards, 4)
    g = jax.grad(lambda x: pg.policy_gradient_loss(x, logp, logp, mask, adv)[0])(logp)
    np.testing.assert_allclose(g, 0.0, atol=1e-7)


def test_grpo_with_ratio_one_no_clip_no_kl_equals_reinforce():
  rewards = jnp.array([1.0, 0.0, 0.0, 0.5])
  logp = jax.random.normal(jax.random.PRNGKey(1), (4, 3)) - 2
  mask = jnp.array([[1, 1, 1], [1, 1, 0], [1, 0, 0], [1, 1, 1]], bool)
  adv = pg.grpo_advantages(rewards, 4)
  g = jax.grad(lambda x: pg.policy_gradient_loss(x, jax.lax.stop_gradient(x), None, mask, adv,
                                                 clip_low=1e9, clip_high=1e9)[0])(logp)
  # REINFORCE with group advantage, per-sequence mean then mean over sequences
  reinforce = jax.grad(lambda x: -aggregate(x * adv[:, None], mask, "seq_mean"))(logp)
  np.testing.assert_allclose(g, reinforce, atol=1e-6)


def test_gspo_with_uniform_token_ratios_equals_token_level_grpo():
  logp_old = jnp.full((2, 3), -1.0)
  logp_new = logp_old + jnp.array([[0.1], [-0.05]])   # same ratio on every token of a row
  mask = jnp.ones((2, 3), bool)
  adv = jnp.array([1.0, -1.0])
  kw = dict(clip_low=0.2, clip_high=0.2, aggregation="seq_mean")
  seq, _ = pg.policy_gradient_loss(logp_new, logp_old, None, mask, adv, ratio_level="sequence", **kw)
  tok, _ = pg.policy_gradient_loss(logp_new, logp_old, None, mask, adv, ratio_level="token", **kw)
  assert float(seq) == pytest.approx(float(tok), rel=1e-6)
  g_seq = jax.grad(lambda x: pg.policy_gradient_loss(x, logp_old, None, mask, adv, ratio_level="sequence", **kw)[0])(logp_new)
  g_tok = jax.grad(lambda x: pg.policy_gradient_loss(x, logp_old, None, mask, adv, ratio_level="token", **kw)[0])(logp_new)
  np.testing.assert_allclose(g_seq, g_tok, atol=1e-6)


def test_aggregations_weight_long_and_short_sequences_as_papers_describe():
  """Same advantage on a 1-token and a 3-token answer: GRPO's seq_mean gives each
  *sequence* equal weight (the short answer's token gets 3x the gradient of a long one's);
  DAPO's token_mean and Dr.GRPO's constant_sum give every *token* equal weight."""
  logp = jnp.zeros((2, 3))
  mask = jnp.array([[1, 0, 0], [1, 1, 1]], bool)
  adv = jnp.array([1.0, 1.0])
  grads = {agg: jax.grad(lambda x: pg.policy_gradient_loss(x, jax.lax.stop_gradient(x), None, mask, adv,
                                                           aggregation=agg, max_len=3)[0])(logp)
           for agg in ("seq_mean", "token_mean", "constant_sum")}
  short, long_ = float(grads["seq_mean"][0, 0]), float(grads["seq_mean"][1, 0])
  assert short == pytest.approx(3 * long_)
  for agg in ("token_mean", "constant_sum"):
    assert float(grads[agg][0, 0]) == pytest.approx(float(grads[agg][1, 0]))
  assert float(grads["constant_sum"][0, 0]) == pytest.approx(-1 / 6)   # 1 / (B * max_len)
  assert float(grads["token_mean"][0, 0]) == pytest.approx(-1 / 4)     # 1 / (4 tokens)


def test_reinforce_pp_folds_kl_into_reward_and_normalises_over_batch():
  mask = jnp.array([[1, 1, 0], [1, 1, 1]], bool)
  logp_old = jnp.log(jnp.full((2, 3), 0.5))
  adv = pg.reinforce_pp_advantages(jnp.array([1.0, 0.0]), logp_old, logp_old, mask, beta=0.1)
  # no KL (policy == ref): returns are [1, 1, -] and [0, 0, 0] -> normalised over 5 tokens
  ret = np.array([1, 1, 0, 0, 0], float)
  want = (ret - ret.mean()) / (ret.std() + 1e-6)
  np.testing.assert_allclose(np.asarray(adv)[np.asarray(mask)], want, atol=1e-5)
  assert float(adv[0, 2]) == 0.0


def test_gae_and_ppo_value_loss_closed_form():
  rewards = jnp.array([[0.0, 0.0, 1.0]])
  values = jnp.array([[0.5, 0.5, 0.5]])
  mask = jnp.ones((1, 3), bool)
  adv, ret = pg.gae_advantages(rewards, values, mask, gamma=1.0, lam=1.0)
  np.testing.assert_allclose(adv, [[0.5, 0.5, 0.5]], atol=1e-6)   # Monte-Carlo: 1 - V
  np.testing.assert_allclose(ret, [[1.0, 1.0, 1.0]], atol=1e-6)
  adv0, _ = pg.gae_advantages(rewards, values, mask, gamma=1.0, lam=0.0)
  np.testing.assert_allclose(adv0, [[0.0, 0.0, 0.5]], atol=1e-6)  # one-step TD errors
  logp = jnp.zeros((1, 3))
  loss, m = pg.ppo_loss(logp, logp, None, mask, adv, jnp.array([[0.9, 0.5, 0.5]]), values, ret,
                        value_clip=0.2, value_coef=0.5)
  # ratio 1: pg = -mean(adv) = -0.5; value: token0 max((0.9-1)^2, (0.7-1)^2) = 0.09; others 0.25
  v = 0.5 * np.mean([0.09, 0.25, 0.25])
  assert float(loss) == pytest.approx(-0.5 + 0.5 * v, rel=1e-5)
  assert float(m["value_clip_frac"]) == pytest.approx(1 / 3)


def test_overlong_penalty_and_bad_inputs():
  np.testing.assert_allclose(pg.overlong_penalty(jnp.array([4, 6, 7, 8]), 8, 4), [0, -0.5, -0.75, -1.0])
  with pytest.raises(ValueError, match="group_size=1"):
    pg.check_rewards(np.ones(4), 1)
  with pytest.raises(ValueError, match="NaN/inf at rows \\[2\\]"):
    pg.check_rewards(np.array([1.0, 0.0, np.nan, 1.0]), 2)
  with pytest.raises(ValueError, match="do not split into groups of 4"):
    pg.check_rewards(np.ones(6), 4)
  with pytest.raises(ValueError, match="ratio_level"):
    pg.policy_gradient_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), None, jnp.ones((1, 2)), jnp.ones(1),
                            ratio_level="word")


def test_rewards_and_pass_at_k():
  from rewardlab.data import Problem
  from rewardlab.eval import pass_at_k
  from rewardlab.rewards import combine
  probs = [Problem("1+1=", "2")] * 3
  fn = combine({"exact_answer": 1.0, "format": 0.1})
  np.testing.assert_allclose(fn(["2", "3", "2 apples"], probs, np.array([2, 2, 9])), [1.1, 0.1, 0.0])
  assert pass_at_k(5, 0, 1) == 0.0 and pass_at_k(5, 5, 3) == 1.0
  assert pass_at_k(4, 1, 1) == pytest.approx(0.25)
  assert pass_at_k(4, 1, 2) == pytest.approx(1 - (3 * 2) / (4 * 3))   # 1 - C(3,2)/C(4,2)
  with pytest.raises(ValueError, match="unknown"):
    combine({"vibes": 1.0})


def test_clip_higher_uses_each_bound_on_its_own_side():
  """DAPO's asymmetric range [1 - 0.2, 1 + 0.28]: a ratio of 1.25 is inside it (clipped by a
  symmetric 0.2), 0.75 is below it (inside a symmetric 0.28)."""
  logp_old = jnp.zeros((1, 4))
  logp_new = jnp.log(jnp.array([[1.25, 1.3, 0.75, 0.85]]))
  mask = jnp.ones((1, 4), bool)
  kw = dict(clip_low=0.2, clip_high=0.28, beta=0.0, aggregation="token_mean")
  pos, m_pos = pg.policy_gradient_loss(logp_new, logp_old, None, mask, jnp.array([1.0]), **kw)
  assert float(pos) == pytest.approx(-(1.25 + 1.28 + 0.75 + 0.85) / 4, rel=1e-6)
  assert float(m_pos["clip_frac"]) == pytest.approx(0.25)          # only 1.3 > 1.28
  neg, m_neg = pg.policy_gradient_loss(logp_new, logp_old, None, mask, jnp.array([-1.0]), **kw)
  assert float(neg) == pytest.approx((1.25 + 1.3 + 0.8 + 0.85) / 4, rel=1e-6)
  assert float(m_neg["clip_frac"]) == pytest.approx(0.25)          # only 0.75 < 0.8
  g = jax.grad(lambda x: pg.policy_gradient_loss(x, logp_old, None, mask, jnp.array([1.0]), **kw)[0])(logp_new)
  np.testing.assert_allclose(g, [[-1.25 / 4, 0.0, -0.75 / 4, -0.85 / 4]], rtol=1e-6)   # d(-rho)/dlogp = -rho
  # PPO passes the same asymmetric range to its surrogate
  zeros = jnp.zeros((1, 4))
  ppo, _ = pg.ppo_loss(logp_new, logp_old, None, mask, jnp.ones((1, 4)), zeros, zeros, zeros, value_coef=0.0, **kw)
  assert float(ppo) == pytest.approx(float(pos), rel=1e-6)


def test_surrogate_metrics_closed_form():
  logp_old = jnp.zeros((2, 3))
  logp_new = jnp.log(jnp.array([[1.5, 0.5, 1.0], [1.0, 2.0, 3.0]]))
  mask = jnp.array([[True, True, True], [True, False, False]])
  adv = jnp.array([[1.0, 1.0, 1.0], [-2.0, -2.0, -2.0]])
  ent = jnp.array([[0.5, 1.5, 1.0], [2.5, 100.0, 100.0]])
  _, m = pg.policy_gradient_loss(logp_new, logp_old, logp_old, mask, adv, beta=0.0, entropy=ent)
  assert float(m["ratio_mean"]) == pytest.approx((1.5 + 0.5 + 1.0 + 1.0) / 4, rel=1e-6)
  assert float(m["adv_mean"]) == pytest.approx((1 + 1 + 1 - 2) / 4, rel=1e-6)
  assert float(m["adv_std"]) == pytest.approx(np.std([1.0, 1.0, 1.0, -2.0]), rel=1e-6)
  assert float(m["entropy"]) == pytest.approx(5.5 / 4, rel=1e-6)
  assert float(m["response_length"]) == pytest.approx(2.0)      # lengths 3 and 1
  # approx_kl_old = mean k3(new || old) over the 4 real tokens
  k3 = [1 / 1.5 + np.log(1.5) - 1, 1 / 0.5 + np.log(0.5) - 1, 0.0, 0.0]
  assert float(m["approx_kl_old"]) == pytest.approx(np.mean(k3), rel=1e-5)
  assert float(m["clip_frac"]) == pytest.approx(1 / 4)   # 1.5 > 1.2 with A > 0; 0.5 < 0.8 but A > 0
  # kl_ref_seq: a completion's summed k3 to the reference, averaged over the sequences
  _, m = pg.policy_gradient_loss(logp_old, logp_old, logp_new, mask, adv, beta=0.0)
  k3_ref = np.exp(np.asarray(logp_new) - 0.0) - np.asarray(logp_new) - 1.0    # k3(pi=old || ref=new)
  want = np.mean([(k3_ref * np.asarray(mask))[i].sum() for i in range(2)])
  assert float(m["kl_ref_seq"]) == pytest.approx(want, rel=1e-5)
  assert float(m["kl_ref_seq"]) != pytest.approx(float(m["kl_ref"]), rel=1e-3)


def test_clip_frac_counts_tokens_whose_clipped_term_is_the_smaller():
  """clip_frac is the share of tokens where clipping changed the objective, verl's
  gt(-A clip(rho), -A rho) (TRL: rho < 1 - eps_low with A < 0, or rho > 1 + eps_high with
  A > 0): a ratio exactly at a bound, or A = 0, changes nothing and is not counted."""
  ratios = np.array([0.5, 0.75, 0.85, 1.0, 1.1, 1.25, 1.3, 2.0], np.float32)
  advs = np.array([-2.0, -0.5, 0.0, 0.5, 2.0], np.float32)
  rho = np.tile(ratios, len(advs))[None]
  a = np.repeat(advs, len(ratios))[None]
  mask = jnp.ones(rho.shape, bool)
  for lo, hi in ((0.2, 0.28), (0.0, 0.0)):
    _, m = pg.policy_gradient_loss(jnp.log(jnp.asarray(rho)), jnp.zeros(rho.shape), None, mask, jnp.asarray(a),
                                   clip_low=lo, clip_high=hi)
    clipped = np.clip(rho.astype(np.float64), 1 - lo, 1 + hi)
    want = np.mean(-a * clipped > -a * rho.astype(np.float64) + 1e-9)
    assert float(m["clip_frac"]) == pytest.approx(want, abs=1e-6), (lo, hi)
  # zero range: A < 0 with the 3 ratios below 1, A > 0 with the 4 above; 1.0 and A = 0 never
  assert want == pytest.approx((2 * 3 + 2 * 4) / 40)


def test_ppo_value_loss_closed_form_and_kl_kept_out_of_the_loss():
  """0.5 max((V - R)^2, (V_old + clip(V - V_old, -c, c) - R)^2) per token (PPO2 / OpenRLHF
  ValueLoss), token_mean; the surrogate is policy_gradient_loss without a KL term."""
  values = jnp.array([[0.9, 0.1, 0.5, 0.75, 0.3]])
  old = jnp.array([[0.5, 0.5, 0.5, 0.5, 0.6]])
  returns = jnp.array([[1.0, 0.0, 2.0, 0.0, -1.0]])
  mask = jnp.array([[True, True, True, True, False]])
  logp = jnp.log(jnp.array([[1.1, 0.9, 1.0, 1.3, 1.0]]))
  ref = jnp.zeros((1, 5)) - 3.0                    # far from the policy: a KL term would show
  adv = jnp.array([[1.0, -1.0, 0.5, 2.0, 1.0]])
  ent = jnp.array([[1.0, 2.0, 3.0, 4.0, 100.0]])
  loss, m = pg.ppo_loss(logp, jnp.zeros((1, 5)), ref, mask, adv, values, old, returns, clip_low=0.2,
                        clip_high=0.28, value_clip=0.25, value_coef=0.5, entropy=ent)
  v, vo, r = (np.asarray(x, np.float64)[0, :4] for x in (values, old, returns))
  v_clip = vo + np.clip(v - vo, -0.25, 0.25)
  v_loss = np.mean(0.5 * np.maximum((v - r) ** 2, (v_clip - r) ** 2))
  pg_loss, _ = pg.policy_gradient_loss(logp, jnp.zeros((1, 5)), None, mask, adv, clip_low=0.2, clip_high=0.28,
                                       beta=0.0, aggregation="token_mean")
  assert float(m["value_loss"]) == pytest.approx(v_loss, rel=1e-6)
  assert float(loss) == pytest.approx(float(pg_loss) + 0.5 * v_loss, rel=1e-6)
  assert float(m["value_clip_frac"]) == pytest.approx(2 / 4)   # |0.4|, |-0.4| > 0.25; |0.25| is not
  assert float(m["entropy"]) == pytest.approx(2.5, rel=1e-6)
  assert float(m["kl_ref"]) > 1.0                               # logged, not in the loss


def test_overlong_penalty_buffer_of_one_and_past_the_limit():
  np.testing.assert_allclose(pg.overlong_penalty(jnp.array([6, 7, 8, 12]), 8, 1, penalty=2.0),
                             [0.0, 0.0, -2.0, -2.0])
  np.testing.assert_allclose(pg.overlong_penalty(jnp.array([3, 10]), 8, 0), [0.0, -1.0])   # no buffer


def test_method_defaults_are_the_papers_and_anchors():
  """The defaults users compare against: GRPO (DeepSeekMath; TRL's advantage), Dr.GRPO,
  DAPO (clip-higher 0.28, token mean, no KL), GSPO (sequence ratio, 3e-4 / 4e-4), RLOO,
  REINFORCE++ (KL in the reward), PPO (GAE 1 / 0.95, value clip 0.2, coef 0.5)."""
  P = pg.PG_OBJECTIVES
  assert P["grpo"] == dict(advantage="grpo", advantage_std="unbiased", adv_eps=1e-4, clip_low=0.2, clip_high=0.2,
                           beta=0.04, kl="k3", kl_clamp=10.0, aggregation="seq_mean", ratio_level="token")
  assert P["dr_grpo"] == dict(advantage="dr_grpo", clip_low=0.2, clip_high=0.2, beta=0.0, kl="k3", kl_clamp=10.0,
                              aggregation="constant_sum", ratio_level="token")
  assert P["dapo"] == dict(advantage="grpo", advantage_std="unbiased", adv_eps=1e-6, clip_low=0.2, clip_high=0.28,
                           beta=0.0, kl="k3", kl_clamp=10.0, aggregation="token_mean", ratio_level="token",
                           dynamic_sampling=True, overlong_buffer=1, overlong_penalty=1.0)
  assert P["gspo"] == dict(advantage="grpo", advantage_std="unbiased", adv_eps=1e-6, clip_low=3e-4, clip_high=4e-4,
                           beta=0.0, kl="k3", kl_clamp=10.0, aggregation="seq_mean", ratio_level="sequence")
  assert P["rloo"] == dict(advantage="rloo", clip_low=0.2, clip_high=0.2, beta=0.0, kl="k3", kl_clamp=10.0,
                           aggregation="token_mean", ratio_level="token")
  assert P["reinforce_pp"] == dict(advantage="reinforce_pp", clip_low=0.2, clip_high=0.2, beta=0.0, kl="k1",
                                   kl_clamp=10.0, kl_in_reward=0.01, aggregation="token_mean", ratio_level="token")
  assert P["ppo"] == dict(advantage="gae", clip_low=0.2, clip_high=0.2, beta=0.0, kl="k1", kl_in_reward=0.02,
                          gamma=1.0, lam=0.95, value_clip=0.2, value_coef=0.5, aggregation="token_mean",
                          ratio_level="token")
  assert set(pg.OBJECTIVES) == set(P) and pg.OBJECTIVES["ppo"] is pg.ppo_loss
  # the functions' own defaults: a symmetric 0.2 clip, no KL unless asked, PPO's value settings
  logp = jnp.log(jnp.array([[1.25, 0.75]]))
  mask = jnp.ones((1, 2), bool)
  loss, _ = pg.policy_gradient_loss(logp, jnp.zeros((1, 2)), jnp.zeros((1, 2)) - 5.0, mask, jnp.ones(1))
  assert float(loss) == pytest.approx(-(1.2 + 0.75) / 2, rel=1e-6)
  v = jnp.array([[1.0, 0.0]])
  ppo, m = pg.ppo_loss(jnp.zeros((1, 2)), jnp.zeros((1, 2)), None, mask, jnp.zeros((1, 2)), v, v - 0.5,
                       jnp.full((1, 2), 2.0))
  # V - V_old = 0.5 clipped to 0.2: V_clip = [0.7, -0.3], the larger error wins; coef 0.5
  assert float(ppo) == pytest.approx(0.5 * np.mean(0.5 * np.array([1.3 ** 2, 2.3 ** 2])), rel=1e-6)
  assert float(m["value_clip_frac"]) == 1.0


def test_check_rewards_accepts_valid_groups_and_lists_the_first_bad_rows():
  pg.check_rewards(np.zeros(4, np.float32), 2)              # groups of 2 are enough
  pg.check_rewards(np.zeros(4, np.float32), 4)              # one whole group
  pg.check_rewards(np.zeros(3, np.float32), 1, need_groups=False)
  bad = np.zeros(8)
  bad[[1, 2, 3, 4, 5, 7]] = np.inf
  with pytest.raises(ValueError, match=r"NaN/inf at rows \[1, 2, 3, 4, 5\]$"):
    pg.check_rewards(bad, 2)
  with pytest.raises(ValueError, match=r"rewards must be \[B\], got shape \(2, 2\)"):
    pg.check_rewards(np.zeros((2, 2)), 2)


def test_rloo_baseline_per_group_with_several_groups():
  r = jnp.array([3.0, 0.0, 0.0, 1.0, 1.0, 4.0])
  np.testing.assert_allclose(pg.rloo_advantages(r, 3), [3.0, -1.5, -1.5, -1.5, -1.5, 3.0])
  np.testing.assert_allclose(pg.dr_grpo_advantages(r, 3), [2.0, -1.0, -1.0, -1.0, -1.0, 2.0])
  np.testing.assert_array_equal(pg.nonuniform_groups(jnp.array([1.0, 1.0, 0.0, 1.0]), 2), [False, True])
  assert float(pg.zero_grad_group_fraction(jnp.array([0.0, 0.0, 0.0, 1e-3]), 2)) == 0.5


def test_reinforce_pp_kl_penalty_per_token_and_returns_to_go():
  """Policy != reference: token reward -beta * k1_t, the sequence reward at the last real
  token, returns summed from the end, then whitened over the batch's real tokens."""
  mask = jnp.array([[1, 1, 1], [1, 1, 0]], bool)
  logp_old = jnp.array([[-1.0, -2.0, -0.5], [-1.5, -1.0, -3.0]])
  logp_ref = jnp.array([[-1.5, -1.0, -0.5], [-1.0, -2.0, -9.0]])
  rewards = jnp.array([1.0, 2.0])
  beta = 0.5
  adv = pg.reinforce_pp_advantages(rewards, logp_old, logp_ref, mask, beta=beta, kl="k1", eps=1e-6)
  k1 = np.array([[0.5, -1.0, 0.0], [-0.5, 1.0, 0.0]])          # logp_old - logp_ref, masked
  outcome = np.array([[0, 0, 1.0], [0, 2.0, 0]])                 # at each row's last real token
  token_r = -beta * k1 + outcome
  ret = np.flip(np.cumsum(np.flip(token_r, 1), 1), 1)
  real = np.asarray(mask)
  want = (ret[real] - ret[real].mean()) / (ret[real].std() + 1e-6)
  np.testing.assert_allclose(np.asarray(adv)[real], want, rtol=1e-5)
  assert float(adv[1, 2]) == 0.0
  # the default KL coefficient is 0.01
  default = pg.reinforce_pp_advantages(rewards, logp_old, logp_ref, mask)
  ret01 = np.flip(np.cumsum(np.flip(-0.01 * k1 + outcome, 1), 1), 1)
  np.testing.assert_allclose(np.asarray(default)[real], (ret01[real] - ret01[real].mean()) / ret01[real].std(),
                             rtol=1e-4)


def test_gae_defaults_and_padding():
  """Default gamma 1, lambda 0.95; padded positions get advantage 0 and bootstrap nothing."""
  rewards = jnp.array([[0.0, 1.0, 0.0]])
  values = jnp.array([[0.2, 0.4, 7.0]])          # the padded value must not leak in
  mask = jnp.array([[True, True, False]])
  adv, ret = pg.gae_advantages(rewards, values, mask)
  d1 = 1.0 - 0.4                                  # last real token: no next value
  d0 = 0.0 + 0.4 - 0.2
  np.testing.assert_allclose(adv, [[d0 + 0.95 * d1, d1, 0.0]], rtol=1e-6)
  np.testing.assert_allclose(ret, [[d0 + 0.95 * d1 + 0.2, d1 + 0.4, 0.0]], rtol=1e-6)
  adv_g, _ = pg.gae_advantages(rewards, values, mask, gamma=0.5, lam=1.0)
  np.testing.assert_allclose(adv_g, [[(0.5 * 0.4 - 0.2) + 0.5 * 0.6, 0.6, 0.0]], rtol=1e-6)
