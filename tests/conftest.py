import os
import sys

# Tests run on the CPU; multi-device tests start their own subprocess with 8 simulated devices.
os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import pytest  # noqa: E402


@pytest.fixture
def tiny_model_cfg():
  from rewardlab.models import ModelConfig
  return ModelConfig(vocab_size=64, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2,
                     head_dim=8, mlp_dim=64, max_seq_len=32)
