"""Closed-form values, invariances and gradient directions of the DPO family."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rewardlab.objectives import preference as po

LW, LL, RW, RL = (jnp.array([-3.0, -5.0]), jnp.array([-4.0, -4.0]),
                  jnp.array([-3.5, -4.5]), jnp.array([-3.5, -4.5]))
LEN_W, LEN_L = jnp.array([2.0, 4.0]), jnp.array([3.0, 1.0])


def _sig(x):
  return 1 / (1 + np.exp(-x))


def _gap():
  return np.array([(-3 + 3.5) - (-4 + 3.5), (-5 + 4.5) - (-4 + 4.5)])   # [1.0, -1.0]


def test_dpo_family_closed_form():
  beta, h = 0.5, 0.5 * _gap()
  assert float(po.dpo_loss(LW, LL, RW, RL, beta=beta)[0]) == pytest.approx(np.mean(-np.log(_sig(h))), rel=1e-5)
  eps = 0.2
  want = np.mean(-(1 - eps) * np.log(_sig(h)) - eps * np.log(_sig(-h)))
  assert float(po.cdpo_loss(LW, LL, RW, RL, beta=beta, label_smoothing=eps)[0]) == pytest.approx(want, rel=1e-5)
  want = np.mean((-(1 - eps) * np.log(_sig(h)) + eps * np.log(_sig(-h))) / (1 - 2 * eps))
  assert float(po.robust_dpo_loss(LW, LL, RW, RL, beta=beta, label_smoothing=eps)[0]) == pytest.approx(want, rel=1e-5)
  # IPO, length-normalised (default, as TRL): log-ratios [.5, -.5] / |w| = [2, 4], [-.5, .5] / |l| = [3, 1]
  ipo_gap = np.array([0.5 / 2 + 0.5 / 3, -0.5 / 4 - 0.5 / 1])
  assert float(po.ipo_loss(LW, LL, RW, RL, len_w=LEN_W, len_l=LEN_L, beta=beta)[0]) == pytest.approx(
      np.mean((ipo_gap - 1.0) ** 2), rel=1e-5)
  assert float(po.ipo_loss(LW, LL, RW, RL, beta=beta, length_normalize=False)[0]) == pytest.approx(
      np.mean((_gap() - 1.0) ** 2), rel=1e-5)                        # summed log-probs (before issue 21)
  assert float(po.hinge_loss(LW, LL, RW, RL, beta=beta)[0]) == pytest.approx(np.mean(np.maximum(0, 1 - h)), rel=1e-5)
  rw, rl = 2.0 * np.array([-1.5, -1.25]), 2.0 * np.array([-4 / 3, -4.0])
  want = np.mean(-np.log(_sig(rw - rl - 0.5)))
  assert float(po.simpo_loss(LW, LL, None, None, len_w=LEN_W, len_l=LEN_L, beta=2.0, gamma=0.5)[0]) == pytest.approx(want, rel=1e-5)
  nll = np.mean(-np.array([-3.0, -5.0]) / np.array([2.0, 4.0]))
  dpo = float(po.dpo_loss(LW, LL, RW, RL, beta=beta)[0])
  assert float(po.rpo_loss(LW, LL, RW, RL, len_w=LEN_W, beta=beta, alpha=0.3)[0]) == pytest.approx(dpo + 0.3 * nll, rel=1e-5)


def test_orpo_closed_form():
  lw, ll = jnp.array([-1.0]), jnp.array([-2.0])
  pw, pl = np.exp(-0.5), np.exp(-2.0)       # mean token prob (len 2 and 1)
  ratio = np.log(pw / (1 - pw)) - np.log(pl / (1 - pl))
  want = 0.5 - 0.1 * np.log(_sig(ratio))
  got, m = po.orpo_loss(lw, ll, None, None, len_w=jnp.array([2.0]), len_l=jnp.array([1.0]), lam=0.1)
  assert float(got) == pytest.approx(want, rel=1e-5)
  assert float(m["log_odds_ratio"]) == pytest.approx(ratio, rel=1e-5)


def test_kto_closed_form_with_batch_reference_point():
  logp, ref = jnp.array([-1.0, -2.0]), jnp.array([-1.5, -1.0])
  desirable = jnp.array([True, False])
  z = max(0.0, np.mean([0.5, -1.0]))   # 0: clipped
  want = np.mean([1 - _sig(0.1 * (0.5 - z)), 1 - _sig(0.1 * (z - (-1.0)))])
  loss, m = po.kto_loss(logp, ref, desirable, beta=0.1)
  assert float(loss) == pytest.approx(want, rel=1e-5)
  loss2, m2 = po.kto_loss(logp, ref, desirable, beta=0.1, kl_logp=jnp.array([-1.0]), kl_ref=jnp.array([-3.0]))
  assert float(m2["kl_reference_point"]) == pytest.approx(2.0)


def test_sppo_and_tgdpo():
  loss, _ = po.sppo_loss(jnp.array([-1.0, -2.0]), jnp.array([-1.5, -1.5]), jnp.array([0.9, 0.1]), eta=2.0)
  want = np.mean([(0.5 - 0.8) ** 2, (-0.5 + 0.8) ** 2])
  assert float(loss) == pytest.approx(want, rel=1e-5)
  # unit token weights = sequence DPO
  tw, tl = jnp.array([[-1.0, -2.0]]), jnp.array([[-1.5, -2.5]])
  rw, rl = jnp.array([[-1.2, -2.0]]), jnp.array([[-1.0, -2.5]])
  m1 = jnp.ones((1, 2))
  tg, _ = po.tgdpo_loss(tw, tl, rw, rl, m1, m1, m1, m1, beta=0.5)
  dpo, _ = po.dpo_loss(tw.sum(-1), tl.sum(-1), rw.sum(-1), rl.sum(-1), beta=0.5)
  assert float(tg) == pytest.approx(float(dpo), rel=1e-6)
  # zero weight on a token removes it from the margin
  w0 = jnp.array([[1.0, 0.0]])
  tg0, _ = po.tgdpo_loss(tw, tl, rw, rl, m1, m1, w0, w0, beta=0.5)
  h = 0.5 * ((-1.0 + 1.2) - (-1.5 + 1.0))
  assert float(tg0) == pytest.approx(-np.log(_sig(h)), rel=1e-5)


@pytest.mark.parametrize("name", ["dpo", "cdpo", "robust_dpo", "ipo", "hinge", "rpo"])
def test_invariant_to_constant_added_to_policy_and_reference(name):
  kw = dict(len_w=LEN_W, len_l=LEN_L, beta=0.5)
  fn = po.PAIRED[name]
  base = float(fn(LW, LL, RW, RL, **kw)[0])
  c = 7.0
  if name == "rpo":  # the NLL term is not reference-relative; shift only the reference
    shifted = float(fn(LW, LL, RW + c, RL + c, **kw)[0])
  else:
    shifted = float(fn(LW + c, LL + c, RW + c, RL + c, **kw)[0])
  assert shifted == pytest.approx(base, rel=1e-5)


def test_simpo_and_orpo_ignore_the_reference():
  kw = dict(len_w=LEN_W, len_l=LEN_L)
  for name in po.REFERENCE_FREE:
    a = float(po.PAIRED[name](LW, LL, RW, RL, **kw)[0])
    b = float(po.PAIRED[name](LW, LL, RW - 100, RL + 50, **kw)[0])
    assert a == b


def test_cdpo_with_zero_smoothing_equals_dpo():
  a = float(po.cdpo_loss(LW, LL, RW, RL, beta=0.3, label_smoothing=0.0)[0])
  b = float(po.dpo_loss(LW, LL, RW, RL, beta=0.3)[0])
  assert a == pytest.approx(b, rel=1e-7)


def test_robust_dpo_is_unbiased_under_flipped_labels():
  """E_flip[robust loss] with flip prob eps equals the clean DPO loss."""
  eps, beta = 0.2, 0.5
  clean = po.dpo_loss(LW, LL, RW, RL, beta=beta)[0]
  kept = po.robust_dpo_loss(LW, LL, RW, RL, beta=beta, label_smoothing=eps)[0]
  flipped = po.robust_dpo_loss(LL, LW, RL, RW, beta=beta, label_smoothing=eps)[0]
  assert float((1 - eps) * kept + eps * flipped) == pytest.approx(float(clean), rel=1e-5)
  with pytest.raises(ValueError, match="label_smoothing=0.5"):
    po.robust_dpo_loss(LW, LL, RW, RL, label_smoothing=0.5)


@pytest.mark.parametrize("name", sorted(po.PAIRED))
def test_update_raises_chosen_and_lowers_rejected(name):
  fn = po.PAIRED[name]
  kw = dict(len_w=LEN_W, len_l=LEN_L)
  gw, gl = jax.grad(lambda w, l: fn(w, l, RW, RL, **kw)[0], argnums=(0, 1))(LW, LL)
  assert np.all(np.asarray(gw) <= 0) and np.any(np.asarray(gw) < 0)   # descent raises logp_w
  assert np.all(np.asarray(gl) >= 0) and np.any(np.asarray(gl) > 0)    # and lowers logp_l
  m = fn(LW, LL, RW, RL, **kw)[1]
  for key in ("reward_chosen", "reward_rejected", "reward_margin", "reward_accuracy"):
    assert key in m


def test_kto_reference_point_carries_no_gradient():
  """z = max(0, mean(logp - ref)) > 0 here; the gradient treats it as a constant:
  d/d delta_i of lam_D (1 - sigma(beta (delta_i - z))) = -lam_D beta s (1 - s) for desirable
  i, +lam_U beta s (1 - s) with s = sigma(beta (z - delta_i)) for undesirable i; / B."""
  logp, ref = jnp.array([-1.0, -2.0, -0.5]), jnp.array([-3.0, -2.5, -1.0])
  desirable = jnp.array([True, False, True])
  beta, lam_d, lam_u = 0.5, 1.0, 2.0
  delta = np.array([2.0, 0.5, 0.5])
  z = delta.mean()
  kw = dict(beta=beta, lambda_d=lam_d, lambda_u=lam_u)
  loss, m = po.kto_loss(logp, ref, desirable, **kw)
  assert float(m["kl_reference_point"]) == pytest.approx(z, rel=1e-6)
  want = np.mean([lam_d * (1 - _sig(beta * (2.0 - z))), lam_u * (1 - _sig(beta * (z - 0.5))),
                  lam_d * (1 - _sig(beta * (0.5 - z)))])
  assert float(loss) == pytest.approx(want, rel=1e-6)
  g = jax.grad(lambda x: po.kto_loss(x, ref, desirable, **kw)[0])(logp)
  s = _sig(beta * (delta - z)) * np.array([1, 0, 1]) + _sig(beta * (z - delta)) * np.array([0, 1, 0])
  sign_lam = np.array([-lam_d, lam_u, -lam_d])
  np.testing.assert_allclose(g, sign_lam * beta * s * (1 - s) / 3, rtol=1e-5)
  # the mismatched-pair estimate of z carries no gradient either
  g_kl = jax.grad(lambda k: po.kto_loss(logp, ref, desirable, kl_logp=k, kl_ref=jnp.array([-3.0]), **kw)[0])(
      jnp.array([-1.0]))
  assert float(g_kl[0]) == 0.0
  assert float(m["reward_chosen"]) == pytest.approx(beta * (2.0 + 0.5) / 2, rel=1e-6)
  assert float(m["reward_rejected"]) == pytest.approx(beta * 0.5, rel=1e-6)
  assert float(m["reward_margin"]) == pytest.approx(beta * 0.75, rel=1e-6)


# Asymmetric pairs (gaps 1.5, -0.5, 0: a symmetric batch hides sign slips in the eps terms),
# distinct chosen/rejected references, one tie in implicit reward, one empty completion.
A_LW, A_LL = jnp.array([-3.0, -5.0, -2.0]), jnp.array([-4.0, -5.0, -2.5])
A_RW, A_RL = jnp.array([-3.5, -4.0, -2.5]), jnp.array([-3.0, -4.5, -3.0])
A_LEN_W, A_LEN_L = jnp.array([2.0, 4.0, 0.0]), jnp.array([3.0, 1.0, 2.0])


def _np(*xs):
  return [np.asarray(x, np.float64) for x in xs]


def _logsig(x):
  return -np.log1p(np.exp(-x))


def _log_odds(m):
  return m - np.log(-np.expm1(m))


def _reference_losses():
  """Each paired loss at its default hyperparameters, written out from the papers' formulas."""
  lw, ll, rw, rl, nw, nl = _np(A_LW, A_LL, A_RW, A_RL, A_LEN_W, A_LEN_L)
  nw, nl = np.maximum(nw, 1), np.maximum(nl, 1)
  dw, dl = lw - rw, ll - rl
  h = 0.1 * (dw - dl)
  eps = 0.1
  return {
      "dpo": np.mean(-_logsig(h)),
      "cdpo": np.mean(-(1 - eps) * _logsig(h) - eps * _logsig(-h)),
      "robust_dpo": np.mean((-(1 - eps) * _logsig(h) + eps * _logsig(-h)) / (1 - 2 * eps)),
      "ipo": np.mean((dw / nw - dl / nl - 1 / (2 * 0.1)) ** 2),
      "hinge": np.mean(np.maximum(0, 1 - h)),
      "simpo": np.mean(-_logsig(2.0 * lw / nw - 2.0 * ll / nl - 1.0)),
      "orpo": np.mean(-lw / nw - 0.1 * _logsig(_log_odds(lw / nw) - _log_odds(ll / nl))),
      "rpo": np.mean(-_logsig(h)) + 1.0 * np.mean(-lw / nw),
  }


@pytest.mark.parametrize("name", sorted(po.PAIRED))
def test_paired_losses_at_their_defaults_on_asymmetric_pairs(name):
  got, _ = po.PAIRED[name](A_LW, A_LL, A_RW, A_RL, len_w=A_LEN_W, len_l=A_LEN_L)
  assert float(got) == pytest.approx(_reference_losses()[name], rel=1e-5)


@pytest.mark.parametrize("name", ["dpo", "cdpo", "robust_dpo", "ipo", "hinge", "rpo"])
def test_reference_based_metrics_are_the_implicit_rewards(name):
  beta = 0.5
  _, m = po.PAIRED[name](A_LW, A_LL, A_RW, A_RL, len_w=A_LEN_W, len_l=A_LEN_L, beta=beta)
  lw, ll, rw, rl = _np(A_LW, A_LL, A_RW, A_RL)
  cw, cl = beta * (lw - rw), beta * (ll - rl)          # [0.25, -0.5, 0.25], [-0.5, -0.25, 0.25]
  want = {"reward_chosen": cw.mean(), "reward_rejected": cl.mean(), "reward_margin": (cw - cl).mean(),
          "reward_accuracy": 1 / 3,                     # the tie (last pair) is not a win
          "logp_chosen": lw.mean(), "logp_rejected": ll.mean()}
  for key, value in want.items():
    assert float(m[key]) == pytest.approx(value, rel=1e-6, abs=1e-7), key
  if name == "rpo":
    assert float(m["nll_chosen"]) == pytest.approx(np.mean(-lw / np.maximum(A_LEN_W, 1)), rel=1e-6)


def test_reference_free_metrics_simpo_and_orpo():
  lw, ll, nw, nl = _np(A_LW, A_LL, np.maximum(A_LEN_W, 1), np.maximum(A_LEN_L, 1))
  _, m = po.simpo_loss(A_LW, A_LL, None, None, len_w=A_LEN_W, len_l=A_LEN_L, beta=2.0)
  cw, cl = 2.0 * lw / nw, 2.0 * ll / nl                # [-3, -2.5, -4], [-8/3, -10, -2.5]
  assert float(m["reward_chosen"]) == pytest.approx(cw.mean(), rel=1e-6)
  assert float(m["reward_rejected"]) == pytest.approx(cl.mean(), rel=1e-6)
  assert float(m["reward_margin"]) == pytest.approx((cw - cl).mean(), rel=1e-6)
  assert float(m["reward_accuracy"]) == pytest.approx(1 / 3)
  assert float(m["logp_chosen"]) == pytest.approx(lw.mean(), rel=1e-6)
  _, m = po.orpo_loss(A_LW, A_LL, None, None, len_w=A_LEN_W, len_l=A_LEN_L)
  ratio = _log_odds(lw / nw) - _log_odds(ll / nl)
  assert float(m["log_odds_ratio"]) == pytest.approx(ratio.mean(), rel=1e-5)
  assert float(m["nll_chosen"]) == pytest.approx(-np.mean(lw / nw), rel=1e-6)
  assert float(m["reward_accuracy"]) == pytest.approx(np.mean(ratio > 0))
  assert float(m["reward_chosen"]) == pytest.approx(lw.mean(), rel=1e-6)     # beta 1, no reference
  assert float(m["logp_rejected"]) == pytest.approx(ll.mean(), rel=1e-6)
  # a completion whose mean token log-prob is 0 (p = 1) still has finite log-odds
  edge, _ = po.orpo_loss(jnp.array([0.0]), jnp.array([-1.0]), None, None, len_w=jnp.array([2.0]),
                         len_l=jnp.array([1.0]))
  assert np.isfinite(float(edge))


def test_robust_dpo_with_zero_smoothing_is_dpo():
  a = float(po.robust_dpo_loss(A_LW, A_LL, A_RW, A_RL, beta=0.3, label_smoothing=0.0)[0])
  assert a == pytest.approx(float(po.dpo_loss(A_LW, A_LL, A_RW, A_RL, beta=0.3)[0]), rel=1e-7)


def test_kto_metrics_defaults_and_one_sided_batches():
  logp, ref = jnp.array([-1.0, -2.0, -0.5, -3.0]), jnp.array([-1.5, -1.0, -1.0, -2.0])
  desirable = jnp.array([True, False, True, False])
  delta = np.array([0.5, -1.0, 0.5, -1.0])
  loss, m = po.kto_loss(logp, ref, desirable)                        # beta 0.1, lambdas 1, z = 0
  want = np.mean([1 - _sig(0.1 * 0.5), 1 - _sig(0.1 * 1.0), 1 - _sig(0.1 * 0.5), 1 - _sig(0.1 * 1.0)])
  assert float(loss) == pytest.approx(want, rel=1e-6)
  assert float(m["reward_chosen"]) == pytest.approx(0.05, rel=1e-6)
  assert float(m["reward_rejected"]) == pytest.approx(-0.1, rel=1e-6)
  assert float(m["reward_margin"]) == pytest.approx(0.15, rel=1e-6)
  # all desirable: no undesirable example, its mean reward is 0 (not NaN)
  _, m = po.kto_loss(logp, ref, jnp.ones(4, bool), beta=1.0)
  assert float(m["reward_chosen"]) == pytest.approx(delta.mean(), abs=1e-7)
  assert float(m["reward_rejected"]) == 0.0
  _, m = po.kto_loss(logp, ref, jnp.zeros(4, bool), beta=1.0)
  assert float(m["reward_chosen"]) == 0.0 and float(m["reward_rejected"]) == pytest.approx(delta.mean(), abs=1e-7)
  # z from several mismatched pairs is their mean log-ratio
  _, m = po.kto_loss(logp, ref, desirable, kl_logp=jnp.array([-1.0, -2.0]), kl_ref=jnp.array([-3.0, -3.0]))
  assert float(m["kl_reference_point"]) == pytest.approx(1.5)


def test_tgdpo_weights_and_masks_each_side_separately():
  tw, tl = jnp.array([[-1.0, -2.0, -9.0]]), jnp.array([[-1.5, -2.5, -0.5]])
  rw, rl = jnp.array([[-1.2, -2.0, -1.0]]), jnp.array([[-1.0, -2.0, -4.0]])
  mw, ml = jnp.array([[1.0, 1.0, 0.0]]), jnp.array([[1.0, 1.0, 1.0]])
  ww, wl = jnp.array([[2.0, 0.5, 7.0]]), jnp.array([[1.0, 3.0, 0.5]])
  loss, m = po.tgdpo_loss(tw, tl, rw, rl, mw, ml, ww, wl, beta=0.5)
  dw = 2.0 * 0.2 + 0.5 * 0.0                          # the masked third token is out
  dl = 1.0 * (-0.5) + 3.0 * (-0.5) + 0.5 * 3.5
  assert float(loss) == pytest.approx(-_logsig(0.5 * (dw - dl)), rel=1e-6)
  assert float(m["logp_chosen"]) == pytest.approx(-3.0)
  assert float(m["logp_rejected"]) == pytest.approx(-4.5)
  assert float(m["reward_chosen"]) == pytest.approx(0.5 * (-3.0 + 3.2), rel=1e-5)
  assert float(m["reward_rejected"]) == pytest.approx(0.5 * (-4.5 + 7.0), rel=1e-6)
  batch, _ = po.tgdpo_loss(jnp.concatenate([tw, tw]), jnp.concatenate([tl, tl]), jnp.concatenate([rw, rw]),
                           jnp.concatenate([rl, rl]), jnp.concatenate([mw, mw]), jnp.concatenate([ml, ml]),
                           jnp.concatenate([ww, ww]), jnp.concatenate([wl, wl]), beta=0.5)
  assert float(batch) == pytest.approx(float(loss), rel=1e-6)   # a mean over pairs, not a sum


def test_sppo_metrics_and_default_eta():
  loss, m = po.sppo_loss(jnp.array([-1.0, -2.0]), jnp.array([-1.5, -1.0]), jnp.array([0.9, 0.3]))
  assert float(loss) == pytest.approx(np.mean([(0.5 - 0.4) ** 2, (-1.0 + 0.2) ** 2]), rel=1e-6)
  assert float(m["delta_mean"]) == pytest.approx(-0.25, rel=1e-6)
  assert float(m["target_mean"]) == pytest.approx(0.1, rel=1e-6)
