"""Small shared test configs."""
import importlib.util
import os

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_config(name: str, variant: str = ""):
  """Loads configs/<name>.py the way the CLI does and returns get_config(variant)."""
  spec = importlib.util.spec_from_file_location(name, os.path.join(ROOT, "configs", f"{name}.py"))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def micro_sft_config(steps=6):
  """A very small SFT run for loop/checkpoint tests (seconds, not minutes)."""
  c = load_config("sft_arithmetic", "tiny")
  c.model.update(d_model=32, n_layers=1, n_heads=2, n_kv_heads=1, head_dim=16, mlp_dim=64)
  c.data.batch_size = 8
  c.train.update(steps=steps, log_every=1, eval_every=3, checkpoint_every=3, progress=False,
                 tensorboard=False)
  c.eval.update(num_problems=8, batch_size=8, max_new_tokens=3)
  return c
