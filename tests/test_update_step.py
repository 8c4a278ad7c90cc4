"""The generic update step against updates computed by hand: one SGD step, two Adam steps,
and a frozen/trainable split (LoRA-style merge). A step that applied half the gradient, lost
the optimizer state between steps or trained the frozen part would fail here."""
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from rewardlab.sharding import batch_sharding, make_mesh
from rewardlab.train.state import create_train_state, shardings_of
from rewardlab.train.step import make_update_step

X = np.array([[1.0, 2.0, -1.0], [0.5, -1.0, 2.0], [-2.0, 0.0, 1.0], [1.0, 1.0, 1.0]], np.float32)
Y = np.array([1.0, -2.0, 0.5, 3.0], np.float32)
W0, B0 = np.array([0.3, -0.2, 0.1], np.float32), np.float32(0.4)


class Affine(nnx.Module):
  def __init__(self):
    self.w = nnx.Param(jnp.asarray(W0))
    self.b = nnx.Param(jnp.asarray(B0))


def loss_fn(model, batch, rng):
  del rng
  x, y = batch
  err = x @ model.w[...] + model.b[...] - y
  return jnp.mean(jnp.square(err)), {"mean_err": jnp.mean(err)}


def _grad(w, b):
  """d/dw, d/db of mean((x w + b - y)^2), by hand."""
  err = X.astype(np.float64) @ w + b - Y
  return 2 * X.T @ err / len(Y), 2 * err.mean(), np.mean(err ** 2)


def _setup(optimizer, schedule=None, merge=None, frozen=None, params=None):
  mesh = make_mesh({"data": -1})
  graphdef, state = nnx.split(Affine(), nnx.Param)
  params = nnx.to_pure_dict(state) if params is None else params
  state = create_train_state(params, optimizer, mesh, seed=0, frozen=frozen)
  step = make_update_step(graphdef, loss_fn, optimizer, schedule, shardings_of(state),
                          batch_sharding(mesh), donate=False, merge=merge)
  return state, step, (jnp.asarray(X), jnp.asarray(Y))


def test_one_sgd_step_is_params_minus_lr_times_the_gradient():
  lr = 0.1
  schedule = optax.linear_schedule(0.3, 0.1, 2)     # what the lr metric reports: schedule(step)
  state, step, batch = _setup(optax.sgd(lr), schedule=schedule)
  new, metrics = step(state, batch)
  gw, gb, loss = _grad(W0.astype(np.float64), float(B0))
  np.testing.assert_allclose(new.params["w"], W0 - lr * gw, rtol=1e-6)
  assert float(new.params["b"]) == pytest.approx(B0 - lr * gb, rel=1e-6)
  # metrics describe the step taken: loss before the update, the gradient's global norm
  assert float(metrics["loss"]) == pytest.approx(loss, rel=1e-6)
  assert float(metrics["grad_norm"]) == pytest.approx(np.sqrt(np.sum(gw ** 2) + gb ** 2), rel=1e-6)
  assert float(metrics["lr"]) == pytest.approx(0.3)   # the rate of the step just taken
  assert "mean_err" in metrics
  assert int(new.step) == 1 and int(state.step) == 0
  # the key advances: the next step's rng is the first half of a split, never reused
  np.testing.assert_array_equal(new.rng, jax.random.split(state.rng)[0])
  newer, metrics = step(new, batch)
  assert float(metrics["lr"]) == pytest.approx(0.2) and int(newer.step) == 2
  gw2, _, _ = _grad(np.asarray(new.params["w"], np.float64), float(new.params["b"]))
  np.testing.assert_allclose(newer.params["w"], np.asarray(new.params["w"]) - lr * gw2, rtol=1e-5)


def test_two_adam_steps_match_the_hand_written_update():
  lr, b1, b2, eps = 0.05, 0.9, 0.999, 1e-8
  state, step, batch = _setup(optax.adam(lr, b1=b1, b2=b2, eps=eps))
  w, b = W0.astype(np.float64), float(B0)
  m = v = np.zeros(4)
  for t in (1, 2):
    state, metrics = step(state, batch)
    gw, gb, _ = _grad(w, b)
    g = np.append(gw, gb)
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g ** 2
    update = lr * (m / (1 - b1 ** t)) / (np.sqrt(v / (1 - b2 ** t)) + eps)
    w, b = w - update[:3], b - update[3]
    np.testing.assert_allclose(state.params["w"], w, rtol=1e-5, atol=1e-6)   # f32 params
    assert float(state.params["b"]) == pytest.approx(b, rel=1e-5)
  assert metrics.get("lr") is None and "lr" not in metrics   # no schedule, no lr metric


def test_frozen_part_is_merged_into_the_model_but_never_trained():
  """merge(params, frozen): the model sees w_frozen + w_delta; only the delta is trained,
  its gradient being the full model's gradient at the merged weights."""
  lr = 0.5
  frozen = {"w": jnp.asarray(W0), "b": jnp.asarray(B0)}
  delta = {"w": jnp.full(3, 0.1, jnp.float32), "b": jnp.asarray(-0.2, jnp.float32)}
  merge = lambda p, f: jax.tree.map(jnp.add, p, f)   # noqa: E731
  state, step, batch = _setup(optax.sgd(lr), merge=merge, frozen=frozen, params=delta)
  new, metrics = step(state, batch)
  gw, gb, loss = _grad(W0 + 0.1, float(B0) - 0.2)
  np.testing.assert_allclose(new.params["w"], 0.1 - lr * gw, rtol=1e-5)
  assert float(new.params["b"]) == pytest.approx(-0.2 - lr * gb, rel=1e-5)
  np.testing.assert_array_equal(new.frozen["w"], W0)
  assert float(metrics["loss"]) == pytest.approx(loss, rel=1e-6)
