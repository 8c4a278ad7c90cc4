import numpy as np
import pytest

from rewardlab.data import ByteTokenizer, make_task, prompt_batch, sft_batch
from rewardlab.data.tasks import Problem, _is_heldout


def test_byte_tokenizer_round_trip_and_specials():
  tok = ByteTokenizer()
  ids = tok.encode("12+3=é", bos=True, eos=True)
  assert ids[0] == tok.bos_id and ids[-1] == tok.eos_id
  assert tok.decode(ids) == "12+3=é"
  assert tok.decode([ord("4"), tok.eos_id, ord("5")]) == "4"
  assert tok.decode([tok.pad_id, ord("7")]) == "7"


@pytest.mark.parametrize("name", ["addition", "multiplication", "sorting"])
def test_tasks_verify_exactly_and_split_is_disjoint(name):
  task = make_task(name)
  rng = np.random.default_rng(0)
  train = task.sample_many(rng, 300)
  heldout = task.sample_many(rng, 50, split="eval")
  assert not {p.prompt for p in train} & {p.prompt for p in heldout}
  assert all(_is_heldout(p.prompt) for p in heldout)
  p = train[0]
  assert task.verify(p.answer, p.answer)
  assert task.verify(p.answer + "\nextra", p.answer)
  assert not task.verify(p.answer + "1", p.answer)


def test_task_answers_are_correct():
  rng = np.random.default_rng(1)
  for p in make_task("addition", max_digits=4).sample_many(rng, 50):
    a, b = p.prompt[:-1].split("+")
    assert int(p.answer) == int(a) + int(b)
  for p in make_task("multiplication").sample_many(rng, 50):
    a, b = p.prompt[:-1].split("*")
    assert int(p.answer) == int(a) * int(b)
  for p in make_task("sorting").sample_many(rng, 50):
    assert p.answer == "".join(sorted(p.prompt[5:-1]))
  with pytest.raises(ValueError, match="allowed"):
    make_task("division")


def test_sft_batch_masks_only_completion_tokens():
  tok = ByteTokenizer()
  b = sft_batch([Problem("1+2=", "3"), Problem("10+5=", "15")], tok, 10)
  assert b.tokens.shape == (2, 10)
  row = list(b.tokens[0])
  assert row[:7] == [tok.bos_id] + list(b"1+2=") + [ord("3"), tok.eos_id]
  assert list(b.loss_mask[0]) == [False] * 5 + [True, True] + [False] * 3
  assert list(b.valid[1]) == [True] * 9 + [False]
  assert b.tokens[0, 7] == tok.pad_id
  with pytest.raises(ValueError, match="example 0.*over data.seq_len=4"):
    sft_batch([Problem("1+2=", "3")], tok, 4)


def test_prompt_batch_left_pads_and_rejects_bad_input():
  tok = ByteTokenizer()
  b = prompt_batch(["1+1=", "12+13="], tok, 8)
  assert list(b.valid[0]) == [False] * 3 + [True] * 5
  assert b.tokens[0, 3] == tok.bos_id and b.tokens[0, -1] == ord("=")
  with pytest.raises(ValueError, match="empty prompt list"):
    prompt_batch([], tok, 8)
  with pytest.raises(ValueError, match="prompt 1 .* over max_prompt_len=6"):
    prompt_batch(["1=", "123+456="], tok, 6)
