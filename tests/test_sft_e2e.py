import pytest

from helpers import load_config
from rewardlab.pipelines import sft


@pytest.mark.slow
def test_sft_tiny_raises_heldout_exact_match(tmp_path):
  """Tiny config (d=64, 2 layers, 2-digit addition, 400 steps of 128 examples).

  Measured on the 2-core CPU: held-out greedy exact match 0.00 at step 0 -> ~0.6 at step
  400. The bar (>= 0.35 and +0.3 over the start) leaves room for platform noise.
  """
  config = load_config("sft_arithmetic", "tiny")
  config.train.progress = False
  summary = sft.run(config, str(tmp_path))
  start, end = summary["evals"][0]["accuracy"], summary["evals"][-1]["accuracy"]
  assert start <= 0.05
  assert end >= 0.35 and end - start >= 0.3, (start, end)
  losses = [r["loss"] for r in summary["records"] if r["split"] == "train"]
  assert losses[-1] < 0.5 * losses[0]


def test_warmup_config_takes_its_own_schedule_else_inherits_the_optimizer():
  """The RL stage's constant lr must not leak into a warm-up that asks for cosine decay, and a
  warm-up that sets nothing keeps config.optim's settings (the tiny configs rely on it)."""
  c = load_config("grpo_arithmetic", "tiny")
  wc = sft.warmup_config(c)
  assert (wc.optim.schedule, wc.optim.warmup_steps, wc.optim.lr) == ("constant", 0, c.sft_warmup.lr)
  assert wc.train.steps == c.sft_warmup.steps and wc.pipeline == "sft"
  c.sft_warmup.update(schedule="cosine", warmup_steps=30, min_lr_ratio=0.05)
  wc = sft.warmup_config(c)
  assert (wc.optim.schedule, wc.optim.warmup_steps, wc.optim.min_lr_ratio) == ("cosine", 30, 0.05)
  assert wc.optim.weight_decay == c.optim.weight_decay   # unset: inherited
  assert (c.optim.schedule, c.optim.warmup_steps) == ("constant", 0)   # the RL stage's own, untouched
