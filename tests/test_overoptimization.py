"""Pure pieces of the reward-hacking study: best-of-n KL and curves, ensemble aggregation,
reward transforms, STARC distance, and the fits of Gao et al.'s functional forms."""
import itertools
import json

import jax.numpy as jnp
import numpy as np
import pytest

from rewardlab.eval import best_of_n as bon
from rewardlab.eval import overoptimization as oo
from rewardlab.eval import starc
from rewardlab.models import heads as H
from rewardlab.rewards import transforms as T


# --- best-of-n -------------------------------------------------------------------------

def _monte_carlo_bon_kl(probs, proxy, n, draws, rng):
  """Plug-in KL(best-of-n || base) from the empirical distribution of simulated picks."""
  samples = rng.choice(len(probs), size=(draws, n), p=probs)
  picks = samples[np.arange(draws), np.argmax(proxy[samples], axis=1)]
  freq = np.bincount(picks, minlength=len(probs)) / draws
  keep = freq > 0
  return float(np.sum(freq[keep] * np.log(freq[keep] / probs[keep])))


@pytest.mark.parametrize("n", [2, 4, 16])
def test_best_of_n_kl_matches_monte_carlo(n):
  """200 items of small mass (max 0.014) and a tie-free proxy: simulated best-of-n has the
  analytic KL log n - (n-1)/n (to the plug-in estimate's noise), and the exact discrete
  KL agrees with the simulation and sits at or below the analytic value."""
  rng = np.random.default_rng(0)
  probs = rng.dirichlet(np.full(200, 5.0))
  proxy = rng.normal(size=200)
  mc = _monte_carlo_bon_kl(probs, proxy, n, 100_000, rng)
  exact = bon.best_of_n_kl_exact(probs, proxy, n)
  assert mc == pytest.approx(bon.best_of_n_kl(n), abs=0.01)
  assert exact == pytest.approx(mc, abs=0.01)
  assert exact <= bon.best_of_n_kl(n) + 1e-12


def test_best_of_n_exact_distribution_closed_form_and_bound():
  # three items, proxy order b < c < a: F = (0.2, 0.5, 1.0) in that order
  probs, proxy = np.array([0.5, 0.2, 0.3]), np.array([3.0, 1.0, 2.0])
  got = bon.best_of_n_probs(probs, proxy, 2)
  np.testing.assert_allclose(got, [1 - 0.5 ** 2, 0.2 ** 2, 0.5 ** 2 - 0.2 ** 2])
  np.testing.assert_allclose(bon.best_of_n_probs(probs, proxy, 1), probs)
  # a heavy item makes ties likely: the exact KL is strictly below the analytic one
  assert bon.best_of_n_kl_exact(probs, proxy, 16) < bon.best_of_n_kl(16) - 0.5
  assert bon.best_of_n_kl(1) == 0.0
  with pytest.raises(ValueError, match="ties"):
    bon.best_of_n_probs(probs, np.array([1.0, 1.0, 2.0]), 2)


def test_best_of_n_curve_equals_the_average_over_all_subsets():
  rng = np.random.default_rng(1)
  proxy, gold = rng.normal(size=(3, 7)), rng.normal(size=(3, 7))
  curve = bon.best_of_n_curve(proxy, gold, range(1, 8))
  for n in range(1, 8):
    picks = [[g[list(s)][np.argmax(p[list(s)])] for s in itertools.combinations(range(7), n)]
             for p, g in zip(proxy, gold)]
    assert curve["gold"][n - 1] == pytest.approx(np.mean([np.mean(x) for x in picks]), rel=1e-10)
  assert curve["gold"][0] == pytest.approx(gold.mean())                       # n = 1: a random pick
  assert curve["gold"][-1] == pytest.approx(gold[np.arange(3), proxy.argmax(1)].mean())
  assert np.all(np.diff(curve["proxy"]) > 0)                                  # proxy rises with n
  np.testing.assert_allclose(curve["kl_bon"], [bon.best_of_n_kl(n) for n in range(1, 8)])


def test_monotone_per_prompt_transforms_leave_best_of_n_unchanged():
  """log-sigmoid centring and PAR are increasing in r for a fixed prompt: same picks."""
  rng = np.random.default_rng(2)
  proxy, gold = rng.normal(size=(5, 16)), rng.normal(size=(5, 16))
  ref = rng.normal(size=(5, 1))
  base = bon.best_of_n_curve(proxy, gold, [1, 4, 16])["gold"]
  for fn in (T.log_sigmoid_centred, T.preference_as_reward):
    out = fn(proxy.reshape(-1), np.repeat(ref, 16, 1).reshape(-1)).reshape(5, 16)
    np.testing.assert_allclose(bon.best_of_n_curve(out, gold, [1, 4, 16])["gold"], base)


# --- ensembles ---------------------------------------------------------------------------

def test_ensemble_aggregations_closed_form_and_order():
  scores = jnp.array([[1.0, 2.0, 6.0], [-1.0, -1.0, 2.0]])
  np.testing.assert_allclose(H.ensemble_mean(scores), [3.0, 0.0])
  np.testing.assert_allclose(H.ensemble_min(scores), [1.0, -1.0])
  # population variance: (4 + 1 + 9) / 3 and (1 + 1 + 4) / 3
  np.testing.assert_allclose(H.ensemble_uwo(scores, 0.5), [3.0 - 0.5 * 14 / 3, -0.5 * 2.0], rtol=1e-6)
  np.testing.assert_allclose(H.ensemble_uwo(scores, 0.0), H.ensemble_mean(scores))
  rand = jnp.asarray(np.random.default_rng(3).normal(size=(500, 4)))
  wco, mean, mx = H.ensemble_min(rand), H.ensemble_mean(rand), jnp.max(rand, -1)
  assert bool(jnp.all(wco <= mean)) and bool(jnp.all(mean <= mx))
  # UWO falls with lam and never exceeds the mean
  u1, u2 = H.ensemble_uwo(rand, 0.1), H.ensemble_uwo(rand, 1.0)
  assert bool(jnp.all(u2 <= u1)) and bool(jnp.all(u1 <= mean))


# --- reward transforms -------------------------------------------------------------------

def test_log_sigmoid_and_par_closed_forms():
  r, ref = np.array([0.0, 2.0, -30.0, 40.0]), np.array([0.0, 1.0, 0.0, 0.0])
  np.testing.assert_allclose(T.log_sigmoid_centred(r, ref),
                             [np.log(0.5), -np.log1p(np.exp(-1.0)), -30.0 - np.log1p(np.exp(-30.0)),
                              -np.log1p(np.exp(-40.0))], rtol=1e-12)
  assert np.all(T.log_sigmoid_centred(r, ref) < 0)
  np.testing.assert_allclose(T.preference_as_reward(r, ref),
                             [0.5, 1 / (1 + np.exp(-1.0)), 1 / (1 + np.exp(30.0)), 1 / (1 + np.exp(-40.0))])
  # several references: the mean of the win probabilities
  multi = T.preference_as_reward(np.array([1.0]), np.array([[0.0, 2.0]]))
  assert multi[0] == pytest.approx(0.5 * (1 / (1 + np.exp(-1.0)) + 1 / (1 + np.exp(1.0))))
  # centred: a constant added to r and r_ref changes nothing
  np.testing.assert_allclose(T.log_sigmoid_centred(r + 5, ref + 5), T.log_sigmoid_centred(r, ref))
  with pytest.raises(ValueError, match="same shape"):
    T.log_sigmoid_centred(r, ref[:2])


def test_length_controlled_removes_the_length_slope_within_groups():
  lengths = np.array([1.0, 2.0, 3.0, 4.0, 2.0, 4.0, 6.0, 8.0])
  quality = np.array([0.5, -0.5, 0.5, -0.5, 1.0, 0.0, 0.0, -1.0])
  rewards = quality + 0.7 * lengths + np.repeat([10.0, -3.0], 4)
  out = T.length_controlled(rewards, lengths, group_size=4)
  g, lg = out.reshape(2, 4), lengths.reshape(2, 4)
  np.testing.assert_allclose(np.sum((g - g.mean(1, keepdims=True)) * (lg - lg.mean(1, keepdims=True))), 0.0,
                             atol=1e-12)
  np.testing.assert_allclose(g.mean(1), rewards.reshape(2, 4).mean(1))       # group means kept
  # by hand: pooled slope = sum(dr dl) / sum(dl^2)
  dl = lg - lg.mean(1, keepdims=True)
  dr = rewards.reshape(2, 4) - rewards.reshape(2, 4).mean(1, keepdims=True)
  slope = np.sum(dr * dl) / np.sum(dl * dl)
  np.testing.assert_allclose(out, rewards - slope * dl.reshape(-1))
  # rewards exactly linear in length (same slope in every group) become constant per group
  flat = T.length_controlled(2.0 * lengths + np.repeat([1.0, 5.0], 4), lengths, 4)
  np.testing.assert_allclose(flat, np.repeat([1.0 + 5.0, 5.0 + 10.0], 4))
  # no length variation: unchanged
  np.testing.assert_allclose(T.length_controlled(rewards, np.ones(8), 4), rewards)
  with pytest.raises(ValueError, match="whole groups"):
    T.length_controlled(rewards, lengths, 3)


def test_transformed_reward_adapter():
  base = lambda completions, problems, lengths: np.array([1.0, 3.0, 2.0, 4.0], np.float32)  # noqa: E731
  par = T.transformed_reward(base, "par", reference=lambda problems: np.full(4, 2.0))
  np.testing.assert_allclose(par(["a"] * 4, [None] * 4, np.ones(4)),
                             1 / (1 + np.exp(-(np.array([1.0, 3.0, 2.0, 4.0]) - 2.0))), rtol=1e-6)
  lc = T.transformed_reward(base, "length_controlled", group_size=2)
  out = lc(["a"] * 4, [None] * 4, np.array([1, 2, 1, 2]))
  np.testing.assert_allclose(out, [2.0, 2.0, 3.0, 3.0], rtol=1e-6)   # +2 per token in both groups
  with pytest.raises(ValueError, match="needs reference"):
    T.transformed_reward(base, "log_sigmoid")
  with pytest.raises(ValueError, match="unknown transform"):
    T.transformed_reward(base, "clip")


# --- STARC ---------------------------------------------------------------------------------

def _space(seed=4, p=5, y=6):
  rng = np.random.default_rng(seed)
  mask = np.ones((p, y), bool)
  mask[1, 4:] = mask[3, 5:] = False                    # ragged candidate sets
  probs = np.where(mask, rng.random((p, y)) + 0.1, 0.0)
  probs /= probs.sum(1, keepdims=True)
  return rng, probs, mask


def test_starc_zero_for_shaping_and_positive_scaling():
  rng, probs, mask = _space()
  r = rng.normal(size=probs.shape)
  shaped = r + rng.normal(size=(probs.shape[0], 1))    # potential shaping: + f(prompt)
  for other in (shaped, 3.5 * r, 0.2 * shaped + 7.0):
    assert starc.starc_distance(r, other, probs, mask) == pytest.approx(0.0, abs=1e-7)
  # canonical rewards have zero reference mean per prompt, and shaping does not reach them
  c = starc.canonicalise(r, probs, mask)
  np.testing.assert_allclose(np.sum(probs * c, 1), 0.0, atol=1e-12)
  np.testing.assert_allclose(c, starc.canonicalise(shaped, probs, mask), atol=1e-12)


def test_starc_bounds_symmetry_and_triangle():
  rng, probs, mask = _space()
  r1, r2, r3 = (rng.normal(size=probs.shape) for _ in range(3))
  d12 = starc.starc_distance(r1, r2, probs, mask)
  assert 0.0 < d12 < 1.0
  assert d12 == pytest.approx(starc.starc_distance(r2, r1, probs, mask))
  assert starc.starc_distance(r1, -r1, probs, mask) == pytest.approx(1.0)      # the maximum
  assert starc.starc_distance(r1, -2.0 * r1 + 4.0, probs, mask) == pytest.approx(1.0)
  d13, d23 = starc.starc_distance(r1, r3, probs, mask), starc.starc_distance(r2, r3, probs, mask)
  assert d13 <= d12 + d23 + 1e-12
  # a reward that is pure shaping is the zero vector after standardising: distance 1/2
  trivial = np.repeat(rng.normal(size=(probs.shape[0], 1)), probs.shape[1], 1)
  assert starc.starc_distance(r1, trivial, probs, mask) == pytest.approx(0.5)
  # entries outside the mask do not count
  assert starc.starc_distance(r1, np.where(mask, r1, 99.0), probs, mask) == pytest.approx(0.0, abs=1e-7)


def test_starc_with_reference_weights_is_the_correlation_distance():
  """With w(x, y) = pi(y|x) / P the distance is sqrt((1 - rho) / 2), rho the pi-weighted
  correlation of the per-prompt-centred rewards."""
  rng, probs, mask = _space(seed=5)
  r1, r2 = rng.normal(size=probs.shape), rng.normal(size=probs.shape)
  w = probs / probs.shape[0]
  c1, c2 = starc.canonicalise(r1, probs, mask), starc.canonicalise(r2, probs, mask)
  rho = np.sum(w * c1 * c2) / np.sqrt(np.sum(w * c1 ** 2) * np.sum(w * c2 ** 2))
  assert starc.starc_distance(r1, r2, probs, mask, weights=w) == pytest.approx(np.sqrt((1 - rho) / 2))


def test_starc_empirical_space_and_errors():
  cands, probs, mask, first = starc.empirical_space([["13", "12", "12", "13", "x\x00"], ["7"]])
  assert cands == [["12", "13", "x\x00"], ["7"]]            # trailing NUL kept (bytes can decode to it)
  np.testing.assert_array_equal(first, [1, 0, 4, 5])
  cands, probs, mask, _ = starc.empirical_space([["12", "12", "13"], ["7"]])
  np.testing.assert_allclose(probs, [[2 / 3, 1 / 3], [1.0, 0.0]])
  np.testing.assert_array_equal(mask, [[True, True], [True, False]])
  np.testing.assert_allclose(starc.to_grid([1.0, 2.0, 3.0], cands), [[1.0, 2.0], [3.0, 0.0]])
  with pytest.raises(ValueError, match="row 0 sums to"):
    starc.canonicalise(np.zeros((2, 2)), np.array([[0.5, 0.4], [1.0, 0.0]]))
  with pytest.raises(ValueError, match="must match rewards"):
    starc.starc_distance(np.zeros((2, 2)), np.zeros((2, 2)), np.ones((2, 3)) / 3)
  with pytest.raises(ValueError, match="prompt 1 has no samples"):
    starc.empirical_space([["1"], []])


# --- functional-form fits ----------------------------------------------------------------

@pytest.mark.parametrize("form,alpha,beta", [("bon", 1.2, 0.8), ("rl", 0.6, 0.5)])
def test_fits_recover_known_coefficients_with_intervals(form, alpha, beta):
  d = np.linspace(0.0, 2.5, 30)
  truth = oo.functional_form(d, alpha, beta, form)
  assert oo.fit_form(d, truth, form) == pytest.approx((alpha, beta), rel=1e-9)
  rng = np.random.default_rng(6)
  curves = [(d, truth + rng.normal(scale=0.03, size=d.shape)) for _ in range(5)]
  fit = oo.fit_over_seeds(curves, form)
  for name, value in (("alpha", alpha), ("beta", beta)):
    mean, lo, hi = fit[name]
    assert lo < value < hi and mean == pytest.approx(value, abs=0.05)
  true_peak = oo.peak(alpha, beta, form)
  assert fit["peak_d"][1] < true_peak < fit["peak_d"][2]
  # the peak is where the closed form is largest
  grid = np.linspace(1e-3, 6.0, 20001)
  assert true_peak == pytest.approx(grid[np.argmax(oo.functional_form(grid, alpha, beta, form))], abs=1e-3)


def test_t_interval_and_no_peak():
  mean, lo, hi = oo.t_interval([1.0, 2.0, 3.0])
  # t_{0.975, 2} = 4.3027, sd = 1
  assert (mean, lo, hi) == pytest.approx((2.0, 2.0 - 4.302653 / np.sqrt(3), 2.0 + 4.302653 / np.sqrt(3)), rel=1e-6)
  assert oo.peak(1.0, -0.1, "bon") == float("inf")
  d = np.linspace(0, 2, 10)
  fit = oo.fit_over_seeds([(d, 0.5 * d), (d, 0.4 * d + 0.01 * d * d)], "bon")
  assert fit["no_peak"] == 2 and np.isnan(fit["peak_d"][0])
  with pytest.raises(ValueError, match="unknown"):
    oo.fit_form(d, d, "linear")


def test_binned_and_empirical_peak():
  x, y = np.array([0.1, 0.2, 0.6, 0.9, 1.5]), np.array([1.0, 3.0, 5.0, np.nan, 2.0])
  np.testing.assert_allclose(oo.binned(x, y, [0.0, 0.5, 1.0, 2.0, 3.0]), [2.0, 5.0, 2.0, np.nan])
  assert oo.empirical_peak(x, y) == 0.6


def test_gold_reward_entry_is_logged_at_weight_zero():
  from rewardlab.data import Problem
  from rewardlab.rewards import REWARDS, combine
  problems = [Problem("12+9=", "21")] * 3
  completions = ["21", "11", "221\n.."]       # exact; one right-aligned digit; one extra digit
  np.testing.assert_allclose(REWARDS["gold"](completions, problems), [1.0, 0.25, 0.5 - 0.1], rtol=1e-6)
  fn = combine({"exact_answer": 1.0, "gold": 0.0})
  total = fn(completions, problems, np.ones(3))
  np.testing.assert_allclose(total, [1.0, 0.0, 0.0])
  np.testing.assert_allclose(fn.components["gold"], [1.0, 0.25, 0.4], rtol=1e-6)


# --- the experiment script's glue --------------------------------------------------------

def _study():
  import importlib.util
  import os
  from helpers import ROOT
  spec = importlib.util.spec_from_file_location("overoptimization_study",
                                                os.path.join(ROOT, "experiments", "overoptimization.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  from helpers import load_config
  return module, load_config("overoptimization")


def test_study_conditions_and_member_combination():
  study, cfg = _study()
  names = [c["name"] for c in study.conditions(cfg)]
  assert names[:4] == ["gold (oracle)", "proxy N=1024", "proxy N=4096", "proxy N=16384"]
  assert {"ensemble_wco N=4096", "par N=4096", "kl beta=0.2 N=4096", "length-controlled N=4096"} <= set(names)
  by_name = {c["name"]: c for c in study.conditions(cfg)}
  assert not by_name["kl beta=0.2 N=4096"]["bon"] and by_name["kl beta=0.2 N=4096"]["baseline"] == "proxy N=4096"
  members = np.array([[1.0, 3.0], [0.0, -2.0], [2.0, 2.0], [5.0, 1.0]])
  lengths = np.array([1, 2, 1, 3])
  ref = np.array([1.0, 1.0, 0.0, 0.0])
  np.testing.assert_allclose(study.combine_members(by_name["proxy N=4096"], members, None, lengths, 2, 1.0),
                             [1.0, 0.0, 2.0, 5.0])
  np.testing.assert_allclose(study.combine_members(by_name["ensemble_wco N=4096"], members, None, lengths, 2, 1.0),
                             [1.0, -2.0, 2.0, 1.0])
  np.testing.assert_allclose(study.combine_members(by_name["ensemble_uwo N=4096"], members, None, lengths, 2, 0.5),
                             [2.0 - 0.5, -1.0 - 0.5, 2.0, 3.0 - 2.0])
  np.testing.assert_allclose(study.combine_members(by_name["par N=4096"], members, ref, lengths, 2, 1.0),
                             1 / (1 + np.exp(-(members[:, 0] - ref))))
  # groups of 2: slope pooled over (dl, dr) = (-0.5, 0.5), (0.5, -0.5), (-1, -1.5), (1, 1.5) -> 1.0
  np.testing.assert_allclose(study.combine_members(by_name["length-controlled N=4096"], members, None, lengths, 2, 1.0),
                             [1.0 + 0.5, 0.0 - 0.5, 2.0 + 1.0, 5.0 - 1.0])
  cfg.mitigation_num_pairs = 333
  with pytest.raises(ValueError, match="mitigation_num_pairs=333"):
    study.conditions(cfg)


def test_registered_rewards_are_rollout_rewards_for_the_run_only():
  from rewardlab.data import Problem
  from rewardlab.rollout import REWARD_BUILDERS, Completions, RewardContext, build_rewards
  study, _ = _study()
  fn = lambda texts, problems, lengths: np.asarray(lengths, np.float32) * 2  # noqa: E731
  with study.registered_rewards({"proxy_test": fn}):
    built = build_rewards(["proxy_test", "gold"], RewardContext(group_size=2, vocab_size=264))
    c = Completions(["21", "3"], [Problem("12+9=", "21")] * 2, np.array([1, 4]), None, None)
    np.testing.assert_allclose(built["proxy_test"](c), [2.0, 8.0])
    np.testing.assert_allclose(built["gold"](c), [1.0, 0.0 - 0.1])
  assert "proxy_test" not in REWARD_BUILDERS
  with pytest.raises(ValueError, match="already name rollout rewards"):
    with study.registered_rewards({"gold": fn}):
      pass
  assert "gold" in REWARD_BUILDERS


def test_rl_records_turn_token_kl_into_sequence_kl(tmp_path):
  study, _ = _study()
  rows = [{"step": 0, "split": "eval", "accuracy": 0.1},
          {"step": 1, "split": "train", "kl_ref": 0.5, "response_length": 2.0, "reward/gold": 0.3,
           "reward/proxy": 1.0, "reward/exact_answer": 0.25},
          {"step": 2, "split": "train", "kl_ref": -1e-4, "response_length": 3.0, "reward/gold": 0.2,
           "reward/proxy": 2.0, "reward/exact_answer": 0.0},
          {"step": 3, "split": "train", "kl_ref": None, "response_length": 3.0, "reward/gold": 0.2,
           "reward/proxy": 2.0, "reward/exact_answer": 0.0, "nonfinite": ["kl_ref"]}]
  with open(tmp_path / "metrics.jsonl", "w") as f:
    f.write("\n".join(json.dumps(r) for r in rows) + "\n")
  rec = study.rl_records(str(tmp_path), "proxy")
  # sqrt(0.5 * 2); a negative estimate clips to 0; a non-finite (null) iteration is left out
  np.testing.assert_allclose(rec["d"], [1.0, 0.0])
  assert rec["gold"] == [0.3, 0.2] and rec["proxy"] == [1.0, 2.0] and rec["length"] == [2.0, 3.0]


def test_policy_pairs_label_by_gold_and_skip_ties():
  """Samples (0, 1) and (2, 3) of each prompt pair up when their gold differs; the higher
  gold is chosen; empty samples and equal-gold pairs are skipped; the length correlate
  appends a suffix to the chosen only."""
  from rewardlab.data import make_task
  study, _ = _study()

  class FakePolicy:
    def sample(self, prompts, n, max_new_tokens, temperature, seed):
      texts = []
      for p in prompts:
        answer = str(sum(int(x) for x in p[:-1].split("+")))
        texts += [answer + "9", answer, "", answer]
      return texts, np.ones(len(texts), np.int32)

  task = make_task("addition", max_digits=2)
  pairs = study.policy_pairs(FakePolicy(), task, 5, np.random.default_rng(0), "train", 4)
  assert len(pairs) == 5
  for p in pairs:
    answer = str(sum(int(x) for x in p.prompt[:-1].split("+")))
    assert (p.chosen, p.rejected) == (answer, answer + "9")        # (2, 3) has an empty sample
    assert p.chosen_ratings == (1.0,) and p.rejected_ratings[0] < 1.0
    assert p.margin == pytest.approx(1.0 - p.rejected_ratings[0])
  flipped = study.policy_pairs(FakePolicy(), task, 50, np.random.default_rng(0), "train", 4, label_noise=1.0)
  assert all(p.chosen_ratings[0] < p.rejected_ratings[0] for p in flipped)
  verbose = study.policy_pairs(FakePolicy(), task, 50, np.random.default_rng(0), "train", 4, length_bias=1.0)
  assert all(p.chosen.split("\n")[1].strip(".") == "" and "\n" in p.chosen and "\n" not in p.rejected for p in verbose)


def test_study_config_variants_build_their_conditions():
  """configs/overoptimization.py is a study config (tests/test_config_cli.py skips it): both
  variants must name known mitigations and a mitigation N from the sweep."""
  from helpers import load_config
  study, _ = _study()
  for variant in ("", "tiny"):
    cfg = load_config("overoptimization", variant)
    names = [c["name"] for c in study.conditions(cfg)]
    assert names[0] == "gold (oracle)" and len(names) == len(set(names))
    assert cfg.proxy.data in ("policy", "synthetic") and len(cfg.seeds) >= (3 if variant == "" else 1)
