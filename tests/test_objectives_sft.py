import jax
import jax.numpy as jnp
import numpy as np
import pytest

from rewardlab.objectives import OBJECTIVES


def test_sft_loss_closed_form():
  logps = jnp.log(jnp.array([[0.5, 0.25, 0.9], [0.1, 1.0, 1.0]]))
  mask = jnp.array([[True, True, False], [True, False, False]])
  loss, m = OBJECTIVES["sft"](logps, mask)
  want = -(np.log(0.5) + np.log(0.25) + np.log(0.1)) / 3
  assert float(loss) == pytest.approx(want, rel=1e-6)
  assert float(m["loss_tokens"]) == 3
  assert float(m["ppl"]) == pytest.approx(np.exp(want), rel=1e-6)
  seq_loss, _ = OBJECTIVES["sft"](logps, mask, aggregation="seq_mean")
  want_seq = (-(np.log(0.5) + np.log(0.25)) / 2 - np.log(0.1)) / 2
  assert float(seq_loss) == pytest.approx(want_seq, rel=1e-6)


def test_sft_gradient_raises_target_logprob_and_ignores_masked():
  logps = jnp.array([[-1.0, -2.0, -3.0]])
  mask = jnp.array([[True, True, False]])
  g = jax.grad(lambda x: OBJECTIVES["sft"](x, mask)[0])(logps)
  assert np.all(np.asarray(g[0, :2]) < 0)  # descending the loss raises log-probs
  assert float(g[0, 2]) == 0.0


def test_sft_metrics_with_one_and_zero_loss_tokens():
  logps = jnp.log(jnp.array([[0.5, 0.9], [0.2, 0.3]]))
  one = jnp.array([[False, False], [True, False]])
  loss, m = OBJECTIVES["sft"](logps, one)
  assert float(loss) == pytest.approx(-np.log(0.2), rel=1e-6)
  assert float(m["nll_per_token"]) == pytest.approx(-np.log(0.2), rel=1e-6)
  assert float(m["loss_tokens"]) == 1.0
  loss, m = OBJECTIVES["sft"](logps, jnp.zeros((2, 2), bool))
  assert float(loss) == 0.0 and float(m["nll_per_token"]) == 0.0 and float(m["ppl"]) == 1.0
