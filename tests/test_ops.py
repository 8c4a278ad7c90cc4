import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rewardlab.ops import (aggregate, chunked_token_logprobs, kl_estimate, masked_mean,
                           masked_sum, masked_var, token_entropy_from_logits,
                           token_logprobs_from_logits)


def _naive_logprobs(logits, tokens):
  logits = np.asarray(logits, np.float64)
  logz = np.log(np.sum(np.exp(logits - logits.max(-1, keepdims=True)), -1)) + logits.max(-1)
  return np.take_along_axis(logits, np.asarray(tokens)[..., None], -1)[..., 0] - logz


def test_token_logprobs_equal_naive_log_softmax_gather():
  logits = jax.random.normal(jax.random.PRNGKey(0), (3, 5, 11)) * 4
  tokens = jax.random.randint(jax.random.PRNGKey(1), (3, 5), 0, 11)
  np.testing.assert_allclose(token_logprobs_from_logits(logits, tokens),
                             _naive_logprobs(logits, tokens), atol=1e-5)


@pytest.mark.parametrize("chunk", [1, 4, 7, 64])
def test_chunked_logprobs_and_entropy_match_full_softmax(chunk):
  h = jax.random.normal(jax.random.PRNGKey(0), (2, 6, 8))
  w = jax.random.normal(jax.random.PRNGKey(1), (8, 29)) * 2
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 6), 0, 29)
  logps, ent = chunked_token_logprobs(h, w, tokens, chunk_size=chunk, with_entropy=True)
  np.testing.assert_allclose(logps, _naive_logprobs(h @ w, tokens), atol=1e-4)
  np.testing.assert_allclose(ent, token_entropy_from_logits(h @ w), atol=1e-4)


def test_chunked_logprobs_gradients_match():
  h = jax.random.normal(jax.random.PRNGKey(0), (2, 4, 8))
  w = jax.random.normal(jax.random.PRNGKey(1), (8, 13))
  tokens = jax.random.randint(jax.random.PRNGKey(2), (2, 4), 0, 13)
  g1 = jax.grad(lambda h, w: jnp.sum(chunked_token_logprobs(h, w, tokens, 5)), (0, 1))(h, w)
  g2 = jax.grad(lambda h, w: jnp.sum(token_logprobs_from_logits(h @ w, tokens)), (0, 1))(h, w)
  for a, b in zip(g1, g2):
    np.testing.assert_allclose(a, b, atol=1e-5)


def test_entropy_closed_form():
  uniform = jnp.zeros((1, 1, 8))
  assert float(token_entropy_from_logits(uniform)[0, 0]) == pytest.approx(np.log(8), rel=1e-6)
  peaked = jnp.array([[[100.0, 0.0, 0.0]]])
  assert float(token_entropy_from_logits(peaked)[0, 0]) == pytest.approx(0.0, abs=1e-6)


def test_masked_reductions_respect_mask_and_never_divide_by_zero():
  x = jnp.array([[1.0, 2.0, 100.0], [3.0, 5.0, -7.0]])
  m = jnp.array([[True, True, False], [False, False, False]])
  assert float(masked_sum(x, m)) == 3.0
  assert float(masked_mean(x, m)) == 1.5
  np.testing.assert_allclose(masked_mean(x, m, axis=-1), [1.5, 0.0])  # empty row -> 0
  assert float(masked_var(x, m)) == pytest.approx(0.25)
  nan_x = jnp.where(m, x, jnp.nan)  # masked NaNs must not leak
  assert float(masked_mean(nan_x, m)) == 1.5
  assert np.isfinite(float(masked_mean(x, jnp.zeros_like(m))))


def test_aggregations_weight_long_and_short_sequences():
  # one short sequence (1 token, loss 1) and one long (3 tokens, loss 0 each)
  loss = jnp.array([[1.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0]])
  mask = jnp.array([[True, False, False, False], [True, True, True, False]])
  assert float(aggregate(loss, mask, "seq_mean")) == pytest.approx(0.5)      # (1 + 0) / 2
  assert float(aggregate(loss, mask, "token_mean")) == pytest.approx(0.25)   # 1 / 4 tokens
  assert float(aggregate(loss, mask, "constant_sum")) == pytest.approx(1 / 8)  # 1 / (2 * 4)
  assert float(aggregate(loss, mask, "constant_sum", max_len=10)) == pytest.approx(1 / 20)
  with pytest.raises(ValueError, match="allowed"):
    aggregate(loss, mask, "median")


def test_kl_estimators_closed_form():
  logp, ref = jnp.array([-1.0]), jnp.array([-2.0])
  assert float(kl_estimate(logp, ref, "k1")[0]) == pytest.approx(1.0)
  assert float(kl_estimate(logp, ref, "k2")[0]) == pytest.approx(0.5)
  assert float(kl_estimate(logp, ref, "k3")[0]) == pytest.approx(np.exp(-1) + 1 - 1)
  assert float(kl_estimate(ref, ref, "k3")[0]) == 0.0
  with pytest.raises(ValueError, match="k4"):
    kl_estimate(logp, ref, "k4")


def test_masked_var_per_row_and_seq_mean_with_an_empty_row():
  x = jnp.array([[1.0, 3.0, 100.0], [2.0, 2.0, 8.0], [5.0, 0.0, 0.0]])
  m = jnp.array([[True, True, False], [True, True, True], [False, False, False]])
  np.testing.assert_allclose(masked_var(x, m, axis=-1), [1.0, 8.0, 0.0], rtol=1e-6)
  np.testing.assert_allclose(masked_var(x.T, m.T, axis=0), [1.0, 8.0, 0.0], rtol=1e-6)
  assert float(masked_var(x, m)) == pytest.approx(np.var([1.0, 3.0, 2.0, 2.0, 8.0]), rel=1e-6)
  # an empty sequence counts as 0 in seq_mean, and the batch size stays the divisor
  assert float(aggregate(x, m, "seq_mean")) == pytest.approx((2.0 + 4.0 + 0.0) / 3, rel=1e-6)


def test_chunked_logprobs_stay_finite_and_exact_at_large_logits():
  """The running max keeps exp() in range: logits in the hundreds (f32 exp overflows past
  ~88) give the same log-probs and entropies as the naive float64 computation."""
  h = jax.random.normal(jax.random.PRNGKey(3), (2, 3, 4))
  w = jax.random.normal(jax.random.PRNGKey(4), (4, 10)) * 60.0
  tokens = jax.random.randint(jax.random.PRNGKey(5), (2, 3), 0, 10)
  assert float(jnp.max(jnp.abs(h @ w))) > 100.0
  logps, ent = chunked_token_logprobs(h, w, tokens, chunk_size=3, with_entropy=True)
  np.testing.assert_allclose(logps, _naive_logprobs(h @ w, tokens), rtol=1e-4, atol=1e-3)
  np.testing.assert_allclose(ent, token_entropy_from_logits(h @ w), atol=1e-3)
