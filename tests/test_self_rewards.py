"""Self-rewards: generative judge, self-certainty, majority vote / voting, LaSeR."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from rewardlab.data import ByteTokenizer, prompt_batch
from rewardlab.models import ModelConfig, Transformer
from rewardlab.rewards import self_rewards as sr
from rewardlab.rewards.judge import Judge, score_from_logits
from rewardlab.sampling import SamplingParams, make_sample_fn

CFG = ModelConfig(vocab_size=264, d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16,
                  mlp_dim=64, max_seq_len=32)


def _model():
  model = Transformer(CFG, rngs=nnx.Rngs(0))
  return nnx.split(model, nnx.Param)


def test_judge_score_is_the_hand_expectation_and_batch_invariant():
  graphdef, params = _model()
  tok = ByteTokenizer()
  judge = Judge(graphdef, tok, max_len=24, mode="expected", score_tokens=("1", "2", "3", "4", "5"),
                batch_size=4)
  qs, ans = ["12+7=", "3+4=", "50+50="], ["19", "8", "100"]
  got = judge.score(params, qs, ans)
  # by hand: full forward of the judge prompt, softmax over the five score tokens at the end
  model = nnx.merge(graphdef, params)
  for q, a, g in zip(qs, ans, got):
    ids = jnp.asarray([tok.encode(judge.prompt(q, a), bos=True)])
    logits = model(ids).logits[0, -1]
    p = jax.nn.softmax(logits[jnp.asarray([tok.encode(str(k))[0] for k in range(1, 6)])])
    assert g == pytest.approx(float(jnp.sum(p * jnp.arange(1, 6))), rel=1e-5)
  alone = judge.score(params, qs[1:2], ans[1:2])
  np.testing.assert_allclose(alone, got[1:2], rtol=1e-5)                  # batching does not matter
  assert judge.score(params, ["3+4="], ["7"])[0] != pytest.approx(alone[0], rel=1e-6)  # the answer does
  yes_no = score_from_logits(jnp.array([[0.0] * 89 + [1.0] + [0.0] * 174]), (89, 78), "p_yes")
  assert float(yes_no[0]) == pytest.approx(math.e / (math.e + 1), rel=1e-6)
  with pytest.raises(ValueError, match="not single tokens"):
    Judge(graphdef, tok, 24, score_tokens=("Yes", "No"))


def test_self_certainty_formula_and_from_sampler_outputs():
  v = 8
  uniform = jnp.zeros((1, 3, v))
  mask = jnp.ones((1, 3), bool)
  assert float(sr.self_certainty_from_logits(uniform, mask)[0]) == pytest.approx(0.0, abs=1e-6)
  # peaked at one token with logit L: KL(U || p) = log(e^L + V - 1) - L / V - log V
  L = 30.0
  peaked = jnp.zeros((1, 1, v)).at[0, 0, 0].set(L)
  want = math.log(math.exp(L) + v - 1) - L / v - math.log(v)
  assert float(sr.self_certainty_from_logits(peaked, jnp.ones((1, 1), bool))[0]) == pytest.approx(want, rel=1e-5)
  # (KL(p || U) -> log V as p -> one-hot; KL(U || p), the self-certainty, grows without bound)
  assert want > math.log(v)
  # from the sampler: equals the formula over a fresh forward pass of the same tokens
  graphdef, params = _model()
  tok = ByteTokenizer()
  pb = prompt_batch(["12+7=", "3+4="], tok, 8)
  out = make_sample_fn(graphdef, SamplingParams(5, n=2, temperature=1.0), tok.pad_id)(
      params, pb.tokens, pb.valid, jax.random.PRNGKey(0))
  sc = sr.self_certainty(out.vocab_mean_logp, out.mask, CFG.vocab_size)
  tokens = jnp.concatenate([jnp.repeat(pb.tokens, 2, 0), out.tokens], 1)
  valid = jnp.concatenate([jnp.repeat(pb.valid, 2, 0), out.mask], 1)
  logits = nnx.merge(graphdef, params)(tokens, valid=valid).logits[:, 7:-1]
  np.testing.assert_allclose(sc, sr.self_certainty_from_logits(logits, out.mask), rtol=1e-4)


def test_majority_vote_reward_hand_count_and_deterministic_ties():
  completions = ["5", "5", "6", "7",      # majority 5
                 "8", "9", "9", "8",      # tie 8 vs 9: first seen (8) wins
                 "", "", "3", "",         # empty answers never win: 3
                 "", "", "", ""]          # nothing to vote for
  r = sr.majority_vote_reward(completions, 4)
  np.testing.assert_array_equal(r, [1, 1, 0, 0, 1, 0, 0, 1, 0, 0, 1, 0, 0, 0, 0, 0])
  assert sr.majority_answers(["8", "9", "9", "8"], 4) == ["8"]
  assert sr.select_by_vote(["1", "2", "2"], 3, weights=[5.0, 1.0, 1.0]) == ["1"]
  np.testing.assert_array_equal(sr.borda_weights([0.1, 0.9, 0.5, 3.0, 1.0, 2.0], 3), [1, 3, 2, 3, 1, 2])
  assert sr.auc([0.9, 0.8, 0.1, 0.8], [1, 1, 0, 0]) == pytest.approx((1 + 0.5 + 1 + 1) / 4)


def test_laser_score_formula_one_position_and_gradient_toward_verifier():
  graphdef, params = _model()
  tok = ByteTokenizer()
  tokens = jnp.asarray([tok.encode("12+7=19", bos=True, eos=True) + [tok.pad_id] * 2])
  valid = tokens != tok.pad_id
  z, beta, c = tok.encode("#")[0], 0.5, -5.0
  model = nnx.merge(graphdef, params)
  hidden, _ = model.hidden_states(tokens, valid=valid)
  s = sr.laser_score(sr.last_token_logprob(model, hidden, valid, z), beta, c)
  last = int(valid.sum()) - 1
  full = jax.nn.log_softmax(model(tokens, valid=valid).logits[0, last])
  assert float(s[0]) == pytest.approx(beta * (float(full[z]) - c), rel=1e-5)
  # one token position of work: the score reads exactly one row of hidden states
  changed = hidden.at[0, :last].add(10.0).at[0, last + 1:].add(10.0)
  assert float(sr.last_token_logprob(model, changed, valid, z)[0]) == pytest.approx(
      float(sr.last_token_logprob(model, hidden, valid, z)[0]), rel=1e-6)

  def aux(p, target):
    m = nnx.merge(graphdef, p)
    h, _ = m.hidden_states(tokens, valid=valid)
    return sr.laser_loss(sr.laser_score(sr.last_token_logprob(m, h, valid, z), beta, c), target)

  for target in (s[0] + 1.0, s[0] - 1.0):     # one gradient step moves s toward the target
    g = jax.grad(aux)(params, jnp.array([target]))
    stepped = jax.tree.map(lambda p, d: p - 0.05 * d, params, g)
    m2 = nnx.merge(graphdef, stepped)
    h2, _ = m2.hidden_states(tokens, valid=valid)
    s2 = sr.laser_score(sr.last_token_logprob(m2, h2, valid, z), beta, c)
    assert abs(float(s2[0] - target)) < abs(float(s[0] - target))


def test_spark_pairwise_examples_pick_a_right_and_a_wrong_answer_and_alternate_sides():
  from rewardlab.data.tasks import Problem
  from rewardlab.pipelines.rl_aux import pairwise_judge_examples
  prompts = ["1+1="] * 3 + ["2+2="] * 3 + ["3+3="] * 3
  answers = ["3", "2", "5", "4", "1", "0", "7", "8", "9"]
  right = np.array([False, True, False, True, False, False, False, False, False])
  point = [Problem(f"p{i}", "x") for i in range(9)]
  out = pairwise_judge_examples(point, prompts, answers, right, 3)
  assert out[0] == Problem("1+1=A:2\nB:3\nbetter?", "A")        # group 0: correct on side A
  assert out[3] == Problem("2+2=A:1\nB:4\nbetter?", "B")        # group 1: correct on side B
  assert out[6] == point[6] and out[1:3] == point[1:3]          # no correct answer: unchanged


def test_judge_pure_parts_by_hand():
  """score_from_logits renormalises over the score tokens only; the prompt keeps the answer's
  first line; judge examples are labelled with the first (yes) / last (no) score token."""
  logits = jnp.array([[0.0, 2.0, 5.0, 1.0, 0.0], [3.0, 0.0, 0.0, 0.0, 9.0]])
  p = np.exp([[2.0, 5.0, 1.0], [0.0, 0.0, 0.0]])
  p /= p.sum(1, keepdims=True)
  np.testing.assert_allclose(score_from_logits(logits, (1, 2, 3), "expected"), p @ np.array([1.0, 2.0, 3.0]),
                             rtol=1e-6)
  np.testing.assert_allclose(score_from_logits(logits, (2, 1), "p_yes"),
                             [np.exp(5) / (np.exp(5) + np.exp(2)), 0.5], rtol=1e-6)
  with pytest.raises(ValueError, match="judge mode 'vote'; allowed: expected, p_yes"):
    score_from_logits(logits, (1, 2), "vote")
  graphdef, _ = _model()
  judge = Judge(graphdef, ByteTokenizer(), max_len=24, template="Q{question}A{answer}?")
  assert judge.prompt("1+1=", "2\nbecause") == "Q1+1=A2?"
  from rewardlab.data.tasks import Problem
  ex = judge.examples([Problem("1+1=", "2"), Problem("2+2=", "4")], ["2", "5"], [True, False])
  assert ex == [Problem("Q1+1=A2?", "Y"), Problem("Q2+2=A5?", "N")]
  with pytest.raises(ValueError, match="mode p_yes takes two score tokens"):
    Judge(graphdef, ByteTokenizer(), 24, score_tokens=("1", "2", "3"))


def test_voting_weights_borda_power_and_auc_edges():
  assert sr.majority_answers(["1", "2", "2", "3", "3", "1"], 3, weights=[3.0, 1.0, 1.0, 1.0, 1.0, 0.5]) == ["1", "3"]
  np.testing.assert_array_equal(sr.borda_weights([0.1, 0.9, 0.5], 3, power=2.0), [1.0, 9.0, 4.0])
  assert sr.select_by_vote(["7", "8", "8"], 3) == ["8"]
  with pytest.raises(ValueError, match="5 answers are not whole groups of n=2"):
    sr.majority_answers(["1"] * 5, 2)
  assert np.isnan(sr.auc([0.1, 0.2], [0, 0])) and np.isnan(sr.auc([0.1, 0.2], [1, 1]))
  assert sr.auc([0.2, 0.9], [1, 0]) == 0.0
  # self-certainty averages over the masked tokens of each row only
  logits = jnp.stack([jnp.zeros((2, 4)), jnp.array([[8.0, 0, 0, 0], [0.0, 0, 0, 0]])])
  mask = jnp.array([[True, False], [True, False]])
  peaked = math.log(math.exp(8) + 3) - 8 / 4 - math.log(4)
  np.testing.assert_allclose(sr.self_certainty_from_logits(logits, mask), [0.0, peaked], rtol=1e-5, atol=1e-6)
  np.testing.assert_array_equal(sr.self_certainty_from_logits(logits, jnp.zeros((2, 2), bool)), [0.0, 0.0])
  assert float(sr.laser_loss(jnp.array([0.5, 2.0]), jnp.array([1.0, 0.0]))) == pytest.approx((0.25 + 4.0) / 2)
