"""GRPO on GSM8K-style math from a local HF model folder (weights + tokenizer.json + chat
template) and JSONL files, rewarded by math-verify answer equivalence.

Run:
  python -m rewardlab train --config configs/grpo_gsm8k.py \
      --config.model.hf_path=/models/Qwen2.5-0.5B-Instruct \
      --config.data.task_kwargs.path=/data/gsm8k/train.jsonl \
      --config.data.task_kwargs.eval_path=/data/gsm8k/test.jsonl
Rows: GSM8K {"question", "answer": "... #### 72"}, MATH {"problem", "solution": "... \\boxed{..}"}
(or with an "answer"), or TRL prompt-only {"prompt", "answer"}; the format is told per row
by its fields (data.task_kwargs.format pins one). Questions go into `template` as the user
turn of the model's chat template (`chat=False` for base models: the templated text as is).
Tiny (tests, laptops): --config configs/grpo_gsm8k.py:tiny with the same overrides.
LoRA: --config.lora.rank=16. Logged per iteration: reward/math_answer (= accuracy), and the
fractions of completions without a readable final answer (reward/math_unparsable) or whose
check timed out (reward/math_timeout).
"""
import ml_collections
from ml_collections.config_dict import placeholder

from rewardlab.data.math_tasks import DEFAULT_TEMPLATE
from rewardlab.train.config import base_config


def get_config(variant: str = ""):
  c = base_config()
  c.pipeline = "rl"
  c.workdir = "runs/grpo_gsm8k"
  # one value, two fields: the policy's folder is also where the task finds the chat template
  hf_path = ml_collections.FieldReference("", field_type=str)
  prompt_len = ml_collections.FieldReference(256, field_type=int)
  c.model.hf_path = hf_path
  c.model.max_seq_len = 1024     # used only without hf_path (then the embedded byte model runs)
  c.data.task = "math_jsonl"
  c.data.task_kwargs = ml_collections.ConfigDict(dict(
      path="", eval_path="", format="auto", template=DEFAULT_TEMPLATE, system="", chat=True,
      tokenizer_path=hf_path, max_prompt_tokens=prompt_len, skip_bad_rows=False, timeout_s=2.0,
      verifier_workers=4))
  c.objective = ml_collections.ConfigDict(dict(
      name="grpo", clip_low=placeholder(float), clip_high=placeholder(float),
      beta=placeholder(float), kl=placeholder(str), aggregation=placeholder(str),
      ratio_level=placeholder(str)))
  c.rl = ml_collections.ConfigDict(dict(
      num_prompts=32, group_size=8, max_new_tokens=512, temperature=1.0, top_p=1.0, epochs=1,
      minibatch_size=64, max_refill_rounds=2, reward_model_path="",
      # weight 0: logged as counters, not rewarded
      rewards=ml_collections.ConfigDict({"math_answer": 1.0, "math_unparsable": 0.0, "math_timeout": 0.0})))
  c.optim.update(lr=1e-6, schedule="constant", warmup_steps=0, weight_decay=0.0)
  c.train.update(steps=200, log_every=1, eval_every=50, checkpoint_every=50)
  c.eval.update(max_prompt_len=prompt_len, max_new_tokens=512, num_problems=256, batch_size=32,
                passk_problems=32, pass_n=4, pass_k=(1, 4))
  if variant == "tiny":
    c.workdir = "runs/grpo_gsm8k_tiny"
    prompt_len.set(128)
    c.model.max_seq_len = 160
    c.rl.update(num_prompts=4, group_size=4, max_new_tokens=16, minibatch_size=16)
    c.data.task_kwargs.verifier_workers = 1
    c.optim.lr = 1e-4
    c.train.update(steps=3, eval_every=3, checkpoint_every=0)
    c.eval.update(max_new_tokens=16, num_problems=4, batch_size=4, passk_problems=4, pass_n=2, pass_k=(1, 2))
  elif variant:
    raise ValueError(f"grpo_gsm8k: unknown variant {variant!r}; allowed: '', 'tiny'")
  return c
