import jax
import numpy as np
from flax import nnx

from helpers import micro_sft_config
from rewardlab.models import Transformer
from rewardlab.pipelines import sft
from rewardlab.train.policy import PolicySpec, resolve_model_config
from rewardlab.train.checkpoint import Checkpointer
from rewardlab.train.optim import make_optimizer
from rewardlab.sharding import make_mesh
from rewardlab.train.state import create_train_state, init_params


def test_checkpoint_round_trip_is_exact(tmp_path):
  config = micro_sft_config()
  mesh = make_mesh({"data": -1})
  model_cfg = resolve_model_config(PolicySpec.from_config(config))
  _, params = init_params(lambda: Transformer(model_cfg, rngs=nnx.Rngs(3)), mesh)
  optimizer, _ = make_optimizer(config.optim, 10)
  state = create_train_state(params, optimizer, mesh, seed=5)
  # make the optimizer state non-trivial
  state = state.replace(opt_state=jax.tree.map(lambda x: x + 1 if x.dtype == np.float32 else x,
                                               state.opt_state), step=state.step + 7)
  ckpt = Checkpointer(str(tmp_path / "ck"), every=1)
  assert ckpt.maybe_save(7, state)
  ckpt.close()
  fresh = create_train_state(init_params(lambda: Transformer(model_cfg, rngs=nnx.Rngs(9)), mesh)[1],
                             optimizer, mesh, seed=0)
  restored = Checkpointer(str(tmp_path / "ck"), every=1).restore(fresh)
  assert int(restored.step) == 7
  for a, b in zip(jax.tree.leaves(state), jax.tree.leaves(restored)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    assert a.sharding == b.sharding


def _by_step(records):
  return {(r["step"], r["split"]): {k: v for k, v in r.items() if k != "tokens_per_s"}
          for r in records}


def test_interrupted_then_resumed_run_matches_uninterrupted(tmp_path):
  config = micro_sft_config(steps=6)
  full = sft.run(config, str(tmp_path / "full"))
  first = sft.run(config, str(tmp_path / "resumed"), stop_at_step=4)  # dies after step 4
  assert int(first["state"].step) == 4
  resumed = sft.run(config, str(tmp_path / "resumed"))                 # restores step 3
  want, got = _by_step(full["records"]), _by_step(resumed["records"])
  assert set(want) == set(got)  # step-4 record of the dead run was replaced, not duplicated
  assert [r["step"] for r in resumed["records"] if r["split"] == "train"] == [1, 2, 3, 4, 5, 6]
  for key in want:
    assert want[key] == got[key], key
  for a, b in zip(jax.tree.leaves(full["state"].params), jax.tree.leaves(resumed["state"].params)):
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
