"""Conventions users compare against (issue 21): GRPO's advantage std and eps, the k3 KL
clamp, IPO's length normalisation. Each is checked against the anchor's formula written out
here in numpy (TRL, OpenRLHF, verl), on tiny arrays, and the old convention via its option."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rewardlab.objectives import policy_gradient as pg
from rewardlab.objectives import preference as po
from rewardlab.ops import kl_estimate

# two groups of 4 and one constant group: std 0 must give advantage 0, not NaN
REWARDS = np.array([1.0, 0.0, 0.0, 1.0, 0.3, 0.9, 0.1, 0.5, 2.0, 2.0, 2.0, 2.0], np.float32)


def _trl_grpo(r, g):
  """TRL GRPOTrainer (scale_rewards="group"): (r - mean) / (nanstd + 1e-4), nanstd with
  Bessel's correction count / (count - 1)."""
  r = r.reshape(-1, g).astype(np.float64)
  mean = r.mean(1, keepdims=True)
  var = ((r - mean) ** 2).mean(1, keepdims=True) * g / (g - 1)
  return ((r - mean) / (np.sqrt(var) + 1e-4)).reshape(-1)


def _verl_grpo(r, g, epsilon=1e-6):
  """verl compute_grpo_outcome_advantage: per index, (score - mean) / (torch.std + epsilon)."""
  out = []
  for group in r.reshape(-1, g).astype(np.float64):
    out.extend((group - group.mean()) / (group.std(ddof=1) + epsilon))
  return np.array(out)


def _openrlhf_group_norm(r, g):
  """OpenRLHF "group_norm": (r - mean(-1)) / (r.std(-1) + 1e-9), torch's std unbiased."""
  r = r.reshape(-1, g).astype(np.float64)
  return ((r - r.mean(-1, keepdims=True)) / (r.std(-1, ddof=1, keepdims=True) + 1e-9)).reshape(-1)


def _advantages(method, rewards, group_size, **overrides):
  settings = dict(pg.PG_OBJECTIVES[method], **overrides)
  return np.asarray(pg.ADVANTAGES[settings["advantage"]](jnp.asarray(rewards), group_size,
                                                         **pg.advantage_kwargs(settings)))


def test_grpo_advantage_defaults_match_trl_verl_and_openrlhf():
  np.testing.assert_allclose(_advantages("grpo", REWARDS, 4), _trl_grpo(REWARDS, 4), rtol=1e-5, atol=1e-6)
  for method in ("dapo", "gspo"):
    np.testing.assert_allclose(_advantages(method, REWARDS, 4), _verl_grpo(REWARDS, 4), rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(_advantages("grpo", REWARDS, 4, adv_eps=1e-9), _openrlhf_group_norm(REWARDS, 4),
                             rtol=1e-5, atol=1e-6)
  # closed form for group [1, 0, 0, 1]: unbiased std sqrt(1/3), eps 1e-4
  want = 0.5 / (np.sqrt(1 / 3) + 1e-4)
  np.testing.assert_allclose(_advantages("grpo", REWARDS, 4)[:4], [want, -want, -want, want], rtol=1e-6)
  np.testing.assert_array_equal(_advantages("grpo", REWARDS, 4)[8:], 0.0)
  # the function's own defaults are TRL's too (what a caller without settings gets)
  np.testing.assert_allclose(pg.grpo_advantages(jnp.asarray(REWARDS), 4), _trl_grpo(REWARDS, 4), rtol=1e-5,
                             atol=1e-6)


def test_population_std_is_the_old_convention_by_option():
  got = _advantages("grpo", REWARDS, 4, advantage_std="population", adv_eps=1e-6)
  r = REWARDS.reshape(-1, 4).astype(np.float64)
  want = ((r - r.mean(1, keepdims=True)) / (r.std(1, keepdims=True) + 1e-6)).reshape(-1)
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(got[:4], [1, -1, -1, 1], atol=1e-5)   # mean .5, population std .5
  # at G = 8 population advantages are sqrt(8 / 7) = 1.069x the unbiased ones
  r8 = np.array([1, 0, 0, 0, 1, 1, 0, 0], np.float32)
  ratio = (pg.grpo_advantages(jnp.asarray(r8), 8, eps=0.0, std="population")
           / pg.grpo_advantages(jnp.asarray(r8), 8, eps=0.0))
  np.testing.assert_allclose(ratio, np.sqrt(8 / 7), rtol=1e-5)


def test_advantage_settings_reach_only_the_estimators_that_take_them():
  assert pg.advantage_kwargs(pg.PG_OBJECTIVES["grpo"]) == {"std": "unbiased", "eps": 1e-4}
  assert pg.advantage_kwargs(pg.PG_OBJECTIVES["dapo"]) == {"std": "unbiased", "eps": 1e-6}
  assert pg.advantage_kwargs(pg.PG_OBJECTIVES["gspo"]) == {"std": "unbiased", "eps": 1e-6}
  for method in ("dr_grpo", "rloo"):
    assert pg.advantage_kwargs(pg.PG_OBJECTIVES[method]) == {}
  # a config override (objective.adv_eps) replaces the method default; an unset field keeps it
  import ml_collections
  from rewardlab.pipelines.rl import objective_settings
  cfg = ml_collections.ConfigDict(dict(name="dapo", adv_eps=1e-9, advantage_std=None, kl_clamp=None))
  settings = objective_settings(cfg)
  assert pg.advantage_kwargs(settings) == {"std": "unbiased", "eps": 1e-9}
  assert settings["kl_clamp"] == 10.0
  assert "kl_clamp" in pg.LOSS_KEYS
  assert all(pg.PG_OBJECTIVES[m]["kl_clamp"] == 10.0 for m in pg.PG_OBJECTIVES if m != "ppo")


def test_bad_advantage_settings_raise_naming_the_field():
  with pytest.raises(ValueError, match="std='sample' is unknown; allowed: \\('unbiased', 'population'\\)"):
    pg.grpo_advantages(jnp.ones(4), 2, std="sample")
  with pytest.raises(ValueError, match="group_size=1"):
    pg.grpo_advantages(jnp.ones(4), 1)
  np.testing.assert_array_equal(pg.grpo_advantages(jnp.ones(4), 1, std="population"), 0.0)


def _verl_k3(logprob, ref_logprob):
  """verl kl_penalty_forward("low_var_kl"): kl = clamp(ref - logp, -20, 20);
  clamp(exp(kl) - kl - 1, -10, 10)."""
  kl = np.clip(ref_logprob - logprob, -20, 20)
  return np.clip(np.exp(kl) - kl - 1, -10, 10)


def _openrlhf_kl(log_probs, log_probs_base, kind):
  """OpenRLHF compute_approx_kl: log_ratio = logp - logp_base, estimator, clamp(-10, 10)."""
  lr = log_probs - log_probs_base
  est = {"k1": lr, "k2": lr ** 2 / 2.0, "k3": np.exp(-lr) - 1 + lr}[kind]
  return np.clip(est, -10, 10)


# log-ratios from tiny to extreme: exp(+-100) overflows float32 without the inner limit
LOGP = np.array([-1.0, -2.0, -0.5, -30.0, -1.0, -101.0, -1.0, -3.0], np.float32)
LOGP_REF = np.array([-1.5, -1.0, -0.5, -1.0, -40.0, -1.0, -101.0, -16.0], np.float32)


def test_k3_clamp_matches_verl_and_openrlhf():
  got = np.asarray(kl_estimate(jnp.asarray(LOGP), jnp.asarray(LOGP_REF), "k3", clamp=10.0))
  with np.errstate(over="ignore"):
    np.testing.assert_allclose(got, _verl_k3(LOGP.astype(np.float64), LOGP_REF.astype(np.float64)), rtol=1e-5)
    np.testing.assert_allclose(got, _openrlhf_kl(LOGP.astype(np.float64), LOGP_REF.astype(np.float64), "k3"),
                               rtol=1e-5)
  assert got.max() == 10.0 and got[2] == 0.0
  for kind in ("k1", "k2"):   # OpenRLHF clamps every estimator; so does clamp= here
    np.testing.assert_allclose(kl_estimate(jnp.asarray(LOGP), jnp.asarray(LOGP_REF), kind, clamp=10.0),
                               _openrlhf_kl(LOGP.astype(np.float64), LOGP_REF.astype(np.float64), kind), rtol=1e-5)
  # off (None or 0): the unclamped estimator, the convention before issue 21
  small = slice(0, 3)
  d = LOGP_REF[small].astype(np.float64) - LOGP[small]
  for off in (None, 0.0):
    np.testing.assert_allclose(kl_estimate(jnp.asarray(LOGP[small]), jnp.asarray(LOGP_REF[small]), "k3", off),
                               np.exp(d) - d - 1, rtol=1e-5)
  assert float(kl_estimate(jnp.asarray(-1.0), jnp.asarray(-16.0), "k3")) == pytest.approx(14.0, rel=1e-5)
  with pytest.raises(ValueError, match="clamp=-1.0 must be >= 0"):
    kl_estimate(jnp.asarray(LOGP), jnp.asarray(LOGP_REF), "k3", clamp=-1.0)


def test_k3_clamp_gradient_is_finite_zero_past_the_bound_and_exact_inside():
  grad = jax.grad(lambda x: jnp.sum(kl_estimate(x, jnp.asarray(LOGP_REF), "k3", clamp=10.0)))(jnp.asarray(LOGP))
  g = np.asarray(grad)
  assert np.all(np.isfinite(g))
  # d/dlogp [exp(ref - logp) - (ref - logp) - 1] = 1 - exp(ref - logp), where |k3| < 10
  inside = np.asarray(kl_estimate(jnp.asarray(LOGP), jnp.asarray(LOGP_REF), "k3")) < 10.0
  d = LOGP_REF.astype(np.float64) - LOGP
  np.testing.assert_allclose(g[inside], (1 - np.exp(d))[inside], rtol=1e-5)
  np.testing.assert_array_equal(g[~inside], 0.0)
  assert inside.sum() == 3 and (~inside).sum() == 5


def test_policy_gradient_loss_clamps_the_kl_penalty_by_default():
  logp, ref = jnp.asarray(LOGP)[None], jnp.asarray(LOGP_REF)[None]
  kw = dict(beta=0.5, kl="k3", aggregation="token_mean")

  def loss(mask, **clamp):   # A = 0: the KL term alone; one [1, 8] shape for every call
    return pg.policy_gradient_loss(logp, logp, ref, jnp.asarray(mask)[None], jnp.zeros(1), **kw, **clamp)

  every = np.ones(8, bool)
  total, m = loss(every)
  with np.errstate(over="ignore"):
    want = _verl_k3(LOGP.astype(np.float64), LOGP_REF.astype(np.float64)).mean()
  assert float(m["kl_ref"]) == pytest.approx(want, rel=1e-5)
  assert float(total) == pytest.approx(0.5 * want, rel=1e-5)
  first3 = np.arange(8) < 3
  d = LOGP_REF[:3].astype(np.float64) - LOGP[:3]
  _, m_off = loss(first3, kl_clamp=0.0)
  assert float(m_off["kl_ref"]) == pytest.approx(np.mean(np.exp(d) - d - 1), rel=1e-5)
  big, _ = loss(np.arange(8) == 4, kl_clamp=None)
  assert float(big) == pytest.approx(0.5 * (np.exp(-39.0) + 39.0 - 1), rel=1e-5)   # unclamped: 19
  g = jax.grad(lambda x: pg.policy_gradient_loss(x, logp, ref, every[None], jnp.ones(1), **kw)[0])(logp)
  assert np.all(np.isfinite(np.asarray(g)))


# IPO parity: summed log-probs [B] with completion lengths (one empty completion: clamp to 1)
LW, LL = jnp.array([-3.0, -5.0, -2.0]), jnp.array([-4.0, -4.0, -1.0])
RW, RL = jnp.array([-3.5, -4.5, -2.5]), jnp.array([-3.5, -4.5, -0.5])
LEN_W, LEN_L = jnp.array([2.0, 4.0, 1.0]), jnp.array([3.0, 1.0, 0.0])


def _trl_ipo(lw, ll, rw, rl, len_w, len_l, beta):
  """TRL DPOTrainer._compute_loss, loss_type "ipo": log-ratios / completion_mask.sum(1).clamp(min=1),
  (delta - 1 / (2 beta))^2, mean."""
  lw, ll, rw, rl, len_w, len_l = (np.asarray(x, np.float64) for x in (lw, ll, rw, rl, len_w, len_l))
  delta = (lw - rw) / np.maximum(len_w, 1.0) - (ll - rl) / np.maximum(len_l, 1.0)
  return np.mean((delta - 1 / (2 * beta)) ** 2)


@pytest.mark.parametrize("beta", [0.1, 0.5])
def test_ipo_length_normalised_by_default_like_trl(beta):
  loss, m = po.ipo_loss(LW, LL, RW, RL, len_w=LEN_W, len_l=LEN_L, beta=beta)
  assert float(loss) == pytest.approx(_trl_ipo(LW, LL, RW, RL, LEN_W, LEN_L, beta), rel=1e-6)
  # by hand, row 0: 0.5 / 2 - (-0.5) / 3 = 5/12, target 1 / (2 beta)
  row0, _ = po.ipo_loss(LW[:1], LL[:1], RW[:1], RL[:1], len_w=LEN_W[:1], len_l=LEN_L[:1], beta=beta)
  assert float(row0) == pytest.approx((5 / 12 - 1 / (2 * beta)) ** 2, rel=1e-6)
  # metrics stay beta * summed log-ratios, as TRL logs rewards/chosen
  assert float(m["reward_chosen"]) == pytest.approx(beta * np.mean([0.5, -0.5, 0.5]), rel=1e-6)


def test_ipo_summed_log_probs_by_option_and_lengths_required():
  gap = (np.array([-3.0, -5.0, -2.0]) - [-3.5, -4.5, -2.5]) - (np.array([-4.0, -4.0, -1.0]) - [-3.5, -4.5, -0.5])
  loss, _ = po.ipo_loss(LW, LL, RW, RL, len_w=LEN_W, len_l=LEN_L, beta=0.5, length_normalize=False)
  assert float(loss) == pytest.approx(np.mean((gap - 1.0) ** 2), rel=1e-6)
  loss_no_len, _ = po.ipo_loss(LW, LL, RW, RL, beta=0.5, length_normalize=False)
  assert float(loss_no_len) == float(loss)
  with pytest.raises(ValueError, match="needs len_w and len_l"):
    po.ipo_loss(LW, LL, RW, RL, beta=0.5)


def test_ipo_gradient_of_a_token_scales_with_one_over_its_length():
  """Normalised, a completion twice as long moves each of its log-prob units half as much."""
  g = jax.grad(lambda w: po.ipo_loss(w, LL[:1], RW[:1], RL[:1], len_w=LEN_W[:1], len_l=LEN_L[:1], beta=0.5)[0])(LW[:1])
  g2 = jax.grad(lambda w: po.ipo_loss(w, LL[:1], RW[:1], RL[:1], len_w=2 * LEN_W[:1], len_l=LEN_L[:1],
                                      beta=0.5)[0])(LW[:1])
  delta = lambda lw: (0.5 / lw) - (-0.5 / 3.0)   # noqa: E731
  assert float(g[0]) == pytest.approx(2 * (delta(2.0) - 1.0) / 2.0, rel=1e-6)
  assert float(g2[0]) == pytest.approx(2 * (delta(4.0) - 1.0) / 4.0, rel=1e-6)
