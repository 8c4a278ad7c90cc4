"""Math RL on real formats: GSM8K / MATH loaders, the math-verify checker (equivalence,
unparsable answers, timeouts, a stuck checker process), the math rewards, the math_jsonl
task, and GRPO end to end from a tiny HF model folder + JSONL."""
import json
import os
import sys
import time

import numpy as np
import pytest

from helpers import load_config
from hf_fixtures import make_chat_tokenizer, make_tiny_qwen2
from rewardlab.data import Problem, make_task
from rewardlab.data.math_tasks import (MathChecker, MathProblem, default_checker, gsm8k_final_answer, last_boxed,
                                       load_math, prediction_text)
from rewardlab.rewards import REWARDS, combine, exact_answer


def _jsonl(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return str(path)


def gsm8k_rows(n):
  """GSM8K-shaped rows: worked answer, then `#### <final>` (with a thousands comma at times)."""
  rows = []
  for i in range(n):
    a, b = 37 * i + 5, 100 * i + 900
    rows.append({"question": f"Tom has {a} apples and buys {b} more. How many apples does he have?",
                 "answer": f"He has {a} + {b} = <<{a}+{b}={a + b}>>{a + b} apples.\n#### {a + b:,}"})
  return rows


def test_final_answer_extraction():
  assert last_boxed(r"so $\boxed{\frac{1}{2}}$ or \boxed{\{1, 2\}} end") == r"\{1, 2\}"
  assert last_boxed(r"\boxed{\sqrt{\frac{a}{b}}}") == r"\sqrt{\frac{a}{b}}"
  assert last_boxed(r"\fbox{3} then \boxed 7$") == "7"
  assert last_boxed("no box") is None and last_boxed(r"\boxed") is None
  with pytest.raises(ValueError, match="unbalanced braces"):
    last_boxed(r"\boxed{\frac{1}{2}")
  assert gsm8k_final_answer("work\n#### 1,000") == "1,000" and gsm8k_final_answer("no marker") is None
  assert prediction_text("so\n#### 72") == r"\boxed{72}"
  assert prediction_text(r"#### 3 but \boxed{4}") == r"#### 3 but \boxed{4}"   # its own box wins


def test_gsm8k_and_math_loaders_and_their_errors(tmp_path):
  path = _jsonl(tmp_path / "mixed.jsonl", [
      gsm8k_rows(1)[0],
      {"problem": "Half of one?", "solution": r"It is $\boxed{\frac{1}{2}}$."},
      {"problem": "Pick", "solution": "long", "answer": "(1,2)"},
      {"prompt": "2+2=", "answer": 4}])
  rows = load_math(path)
  assert [(r.answer, r.is_prompt) for r in rows] == [("905", False), (r"\frac{1}{2}", False), ("(1,2)", False),
                                                     ("4", True)]
  assert rows[0].question.startswith("Tom has 5 apples") and rows[0].where == f"{path}:1"
  cases = [({"question": "q", "answer": "no marker"}, r"field 'answer' has no '#### <final answer>' line"),
           ({"problem": "p", "solution": "no box"}, r"field 'solution' has no \\boxed\{...\} final answer"),
           ({"problem": "p", "solution": r"\boxed{\frac{1}{2}"}, r"field 'solution': unbalanced braces"),
           ({"question": 3, "answer": "#### 3"}, r"missing or non-string field 'question' \(got int\)"),
           ({"prompt": "p"}, r"missing field 'answer'"),
           ({"text": "p"}, r"cannot tell the row's format: no 'question' \(GSM8K\), 'problem' \(MATH\) or 'prompt'"),
           ({"question": "q", "answer": "####  "}, r"field 'answer' has no '#### <final answer>' line"),
           ('{"question": "q", ', r"not valid JSON")]
  for row, message in cases:
    bad = _jsonl(tmp_path / "bad.jsonl", [gsm8k_rows(1)[0], row])
    with pytest.raises(ValueError, match="bad.jsonl:2: " + message):
      load_math(bad)
  skipped = {}
  assert len(load_math(bad, skipped=skipped)) == 1 and skipped["not valid JSON"] == 1
  with pytest.raises(ValueError, match="format='csv' is unknown"):
    load_math(path, format="csv")


# (completion, reference answer, correct?)
HAND_WRITTEN = [(r"The answer is \boxed{1/2}.", "0.5", True),
                (r"so \boxed{\frac{2}{4}}", r"\frac{1}{2}", True),
                ("Adding up.\n#### 1,000", "1000", True),
                ("#### 1000", "1,000", True),
                ("The final answer is 42", "42", True),
                (r"\boxed{(1,2)}", "(1,2)", True),
                (r"\boxed{0.5}", "0.6", False),
                ("#### 999", "1000", False),
                (r"\boxed{x^2}", "4", False),
                ("I think it's 1000 but I am not sure", "1000", False)]   # no anchored final answer


def test_math_answer_reward_on_hand_written_completions():
  comps, golds, want = zip(*HAND_WRITTEN)
  problems = [Problem("q", g) for g in golds]
  got = REWARDS["math_answer"](list(comps), problems, np.zeros(len(comps)))
  assert got.dtype == np.float32
  np.testing.assert_array_equal(got, np.array(want, np.float32))
  unparsable = REWARDS["math_unparsable"](list(comps), problems, None)
  np.testing.assert_array_equal(unparsable, [0] * 9 + [1])
  # the pipeline's accuracy hook: exact_answer asks each problem's own check
  assert exact_answer(["#### 1,000"], [MathProblem("q", "1000")])[0] == 1.0
  assert exact_answer(["#### 1,000"], [Problem("q", "1000")])[0] == 0.0
  fn = combine({"math_answer": 1.0, "math_unparsable": 0.0, "math_timeout": 0.0})
  total = fn(list(comps), problems, None)
  np.testing.assert_array_equal(total, np.array(want, np.float32))
  assert set(fn.components) == {"math_answer", "math_unparsable", "math_timeout"}


def test_unparsable_and_pathological_answers_are_zero_counted_and_bounded():
  checker = MathChecker(timeout_s=0.5, grace_s=2.0)
  try:
    for text in ["no answer at all", r"\boxed{}", r"\boxed{@@@}", "####"]:
      assert checker.check(text, "3") == (False, "unparsable")
    assert checker.check(r"\boxed{3}", r"\frac{") == (False, "bad_gold")
    t0 = time.perf_counter()
    v = checker.check(r"\boxed{9^{9^{9^{9}}}}", "3")       # sympy would work on this for hours
    took = time.perf_counter() - t0
    assert v == (False, "timeout") and took < 0.5 + 2.0, took
    assert checker.check(r"\boxed{3}", "3") == (True, "ok")   # the same child goes on
    assert checker.counts["unparsable"] == 4 and checker.counts["timeout"] == 1
    n = checker.counts["checked"]
    checker.check(r"\boxed{3}", "3")                           # cached: not checked again
    assert checker.counts["checked"] == n
  finally:
    checker.close()


def test_a_stuck_checker_process_is_killed_and_restarted(tmp_path):
  """Where even the child's timer cannot interrupt (a C call), the parent kills the child
  after timeout + grace, counts a timeout, and the next check starts a new child."""
  fake = tmp_path / "worker.py"
  fake.write_text("import json, sys, time\nprint(json.dumps({'ready': True}), flush=True)\n"
                  "for line in sys.stdin:\n"
                  "  if json.loads(line)['pred'] == 'hang':\n    time.sleep(3600)\n"
                  "  print(json.dumps({'correct': True, 'status': 'ok'}), flush=True)\n")
  checker = MathChecker(timeout_s=0.2, grace_s=0.3, command=[sys.executable, str(fake)])
  try:
    assert checker.check("fine", "1") == (True, "ok")
    first = checker._children[0].proc.pid
    t0 = time.perf_counter()
    assert checker.check("hang", "1") == (False, "timeout")
    assert time.perf_counter() - t0 < 2.0
    assert checker._children[0].proc is None
    assert checker.check("fine again", "1") == (True, "ok") and checker._children[0].proc.pid != first
  finally:
    checker.close()
  # with two children, the others' checks go on while one is stuck
  pool = MathChecker(timeout_s=0.2, grace_s=0.3, workers=2, command=[sys.executable, str(fake)])
  try:
    t0 = time.perf_counter()
    got = pool.check_many(["a", "hang", "b", "c", "d", "hang"], ["1"] * 6)
    assert [v.status for v in got] == ["ok", "timeout", "ok", "ok", "ok", "timeout"]
    assert pool.counts == {"checked": 5, "ok": 4, "timeout": 1}     # the repeated "hang" is one check
    assert time.perf_counter() - t0 < 3.0
  finally:
    pool.close()
  broken = MathChecker(command=[sys.executable, "-c", "import sys; sys.exit('no math here')"])
  with pytest.raises(RuntimeError, match="(?s)did not start:.*no math here"):
    broken.check("x", "1")


def test_math_jsonl_task_splits_samples_and_renders_chat_prompts(tmp_path):
  transformers = pytest.importorskip("transformers")
  folder = make_chat_tokenizer(str(tmp_path / "tok"))
  train = _jsonl(tmp_path / "train.jsonl", gsm8k_rows(20))
  held = _jsonl(tmp_path / "test.jsonl", gsm8k_rows(23)[20:])
  task = make_task("math_jsonl", path=train, eval_path=held, chat=True, tokenizer_path=folder, system="Be exact.")
  assert len(task.train) == 20 and len(task.eval) == 3
  batch = task.sample_many(np.random.default_rng(0), 30)
  assert len(batch) == 30 and len(set(batch)) == 20                   # every row before any repeats
  assert all(isinstance(p, MathProblem) for p in batch)
  assert sorted(task.sample_many(np.random.default_rng(1), 8, split="eval")) == sorted(task.eval)
  ref = transformers.AutoTokenizer.from_pretrained(folder)
  question = gsm8k_rows(1)[0]["question"]
  want = ref.apply_chat_template([{"role": "system", "content": "Be exact."}, {"role": "user", "content": (
      question + "\nPlease reason step by step, and put your final answer within \\boxed{}.")}],
      tokenize=False, add_generation_prompt=True)
  assert want in [p.prompt for p in task.train]
  assert task.verify("#### 905", "905") and not task.verify("#### 906", "905")
  # without eval rows, the crc32 rule holds rows out (disjoint from training)
  plain = make_task("math_jsonl", path=train)
  assert not {p.prompt for p in plain.train} & {p.prompt for p in plain.eval}
  assert len(plain.train) + len(plain.eval) == 20
  assert plain.train[0].prompt.startswith("Tom has") and "<|im_start|>" not in plain.train[0].prompt
  # over-long prompts: an error naming the row, or counted skips
  with pytest.raises(ValueError, match=r"train.jsonl:1: prompt has \d+ tokens, over max_prompt_tokens=20"):
    make_task("math_jsonl", path=train, max_prompt_tokens=20)
  # rows 0..2 have 4-6 digits in their question, the others 7: a limit of row 0's length + 2 keeps 3
  from rewardlab.data import ByteTokenizer
  limit = len(ByteTokenizer().encode(make_task("math_jsonl", path=train, eval_path=held).train[0].prompt, bos=True)) + 2
  skipping = make_task("math_jsonl", path=train, eval_path=held, max_prompt_tokens=limit, skip_bad_rows=True)
  assert len(skipping.train) == 3 and skipping.skipped == {"prompt too long": 17 + 3}
  with pytest.raises(ValueError, match="chat=True but .* has no chat_template"):
    make_task("math_jsonl", path=train, chat=True,
              tokenizer_path=make_chat_tokenizer(str(tmp_path / "plain"), chat_template=None))
  with pytest.raises(ValueError, match="template must contain"):
    make_task("math_jsonl", path=train, template="Q: {problem}")
  with pytest.raises(ValueError, match=r"is not a format string with only \{question\}.*doubled"):
    make_task("math_jsonl", path=train, template="{question} in \\boxed{}")


@pytest.mark.slow
def test_grpo_gsm8k_end_to_end_from_a_tiny_hf_folder(tmp_path, capsys):
  """configs/grpo_gsm8k.py:tiny through the pipeline registry: a random 2-layer Qwen2 with a
  chat template, a 20-row GSM8K-style file (plus one row without its `#### answer`, counted and
  reported under skip_bad_rows); 3 GRPO iterations with held-out evals."""
  pytest.importorskip("transformers")
  from rewardlab.objectives import OBJECTIVES
  from rewardlab.pipelines import PIPELINES
  from rewardlab.train import validate
  folder = make_tiny_qwen2(str(tmp_path / "model"))
  config = load_config("grpo_gsm8k", "tiny")
  config.model.hf_path = folder
  config.data.task_kwargs.path = _jsonl(tmp_path / "train.jsonl",
                                        gsm8k_rows(20) + [{"question": "1+1?", "answer": "two"}])
  config.data.task_kwargs.skip_bad_rows = True
  config.data.task_kwargs.eval_path = _jsonl(tmp_path / "test.jsonl", gsm8k_rows(24)[20:])
  config.train.update(progress=False, tensorboard=False)
  assert config.data.task_kwargs.tokenizer_path == folder        # follows model.hf_path
  validate(config, OBJECTIVES, PIPELINES, n_devices=1)
  summary = PIPELINES[config.pipeline](config, str(tmp_path / "run"))
  assert "task data: skipped {" in capsys.readouterr().out       # the bad row is not lost silently
  train = [r for r in summary["records"] if r["split"] == "train"]
  assert len(train) == 3
  for r in train:
    for key in ("reward", "reward/math_answer", "reward/math_unparsable", "reward/math_timeout", "accuracy"):
      assert 0.0 <= r[key] <= 1.0, (key, r)
    assert r["reward"] == r["reward/math_answer"] and np.isfinite(r["kl_ref"])
  evals = [r for r in summary["records"] if r["split"] == "eval"]
  assert [e["step"] for e in evals] == [0, 3]
  assert all(0.0 <= e["accuracy"] <= 1.0 and 0.0 <= e["pass@1"] <= 1.0 for e in evals)
  assert os.path.exists(os.path.join(str(tmp_path / "run"), "metrics.jsonl"))
  assert default_checker().counts["checked"] > 0
