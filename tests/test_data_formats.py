"""TRL's dataset formats: standard / conversational preference rows with explicit or
implicit prompts, prompt-only and unpaired rows, from JSONL / Parquet / TFDS, chat
rendering (parity with transformers), and every bad input named by file:line and field."""
import json

import numpy as np
import pytest

from hf_fixtures import make_chat_tokenizer
from rewardlab.data import ByteTokenizer, HFTokenizer
from rewardlab.data.chat import DEFAULT_FORMAT, render_completion, render_prompt
from rewardlab.data.formats import PromptRow, UnpairedExample, load_prompts, load_unpaired
from rewardlab.data.preference import PreferencePair, load_preferences, pair_batch

U = lambda text: {"role": "user", "content": text}          # noqa: E731
A = lambda text: {"role": "assistant", "content": text}     # noqa: E731
S = lambda text: {"role": "system", "content": text}        # noqa: E731


def _jsonl(path, rows):
  path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
  return str(path)


def test_standard_preference_explicit_and_implicit_prompt(tmp_path):
  path = _jsonl(tmp_path / "p.jsonl", [
      {"prompt": "The sky is", "chosen": " blue.", "rejected": " green."},
      {"chosen": "The sky is blue.", "rejected": "The sky is green."},
      {"chosen": "Q: 1+1=2", "rejected": "Q: 1+1=3"}])      # split at the last shared whitespace
  pairs = load_preferences(path)
  assert [(p.prompt, p.chosen, p.rejected) for p in pairs] == [
      ("The sky is", " blue.", " green."), ("The sky is", " blue.", " green."), ("Q:", " 1+1=2", " 1+1=3")]


def test_conversational_preference_default_template_explicit_and_implicit(tmp_path):
  """The byte tokenizer's default template: `role: content` lines, `assistant: ` prompt."""
  conv = [S("be brief"), U("2+2?")]
  path = _jsonl(tmp_path / "c.jsonl", [
      {"prompt": conv, "chosen": [A("4")], "rejected": [A("5")]},
      {"chosen": conv + [A("4")], "rejected": conv + [A("5")]},
      # multi-turn: the shared prefix includes the earlier assistant turn
      {"chosen": [U("hi"), A("hello"), U("2+2?"), A("4")], "rejected": [U("hi"), A("hello"), U("2+2?"), A("five")]}])
  pairs = load_preferences(path, tokenizer=ByteTokenizer())
  want = PreferencePair("system: be brief\nuser: 2+2?\nassistant: ", "4", "5")
  assert pairs[0] == want and pairs[1] == want
  assert pairs[2] == PreferencePair("user: hi\nassistant: hello\nuser: 2+2?\nassistant: ", "4", "five")
  # what the model is trained on: BOS prompt completion EOS, loss on the completion + EOS
  b = pair_batch(pairs[:1], ByteTokenizer(), 48)
  tok = ByteTokenizer()
  row = [t for t, v in zip(b.tokens[0], b.valid[0]) if v]
  assert row == [tok.bos_id] + list(b"system: be brief\nuser: 2+2?\nassistant: 4") + [tok.eos_id]
  assert b.loss_mask[0].sum() == 2


def test_conversational_rendering_matches_transformers_chat_template(tmp_path):
  """With a HF tokenizer, prompt + completion tokens + EOS are exactly the tokens
  transformers' apply_chat_template gives the whole conversation (less the template's
  trailing newline after <|im_end|>)."""
  transformers = pytest.importorskip("transformers")
  folder = make_chat_tokenizer(str(tmp_path / "tok"))
  ours, ref = HFTokenizer(folder), transformers.AutoTokenizer.from_pretrained(folder)
  prompt, chosen, rejected = [U("What is 2 plus 3?")], [A("The answer is \\boxed{5}.")], [A("#### 6")]
  path = _jsonl(tmp_path / "c.jsonl", [{"prompt": prompt, "chosen": chosen, "rejected": rejected},
                                       {"chosen": prompt + chosen, "rejected": prompt + rejected}])
  pairs = load_preferences(path, tokenizer=ours)
  assert pairs[0] == pairs[1]
  p = pairs[0]
  assert p.prompt == ref.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
  for completion, text in ((chosen, p.chosen), (rejected, p.rejected)):
    want = ref.apply_chat_template(prompt + completion, tokenize=True, return_dict=True)["input_ids"]
    assert ref.decode(want[-1:]) == "\n"
    assert ours.encode(p.prompt, bos=True) + ours.encode(text, eos=True) == want[:-1]


def test_bos_from_the_template_is_not_doubled(tmp_path):
  """A template that writes bos_token itself (Llama-style): the prompt drops it because the
  batchers add BOS, so the token row starts with exactly one BOS."""
  folder = make_chat_tokenizer(str(tmp_path / "tok"), bos_token="<s>",
                               chat_template="{{ bos_token }}{% for m in messages %}[{{ m['role'] }}] "
                                             "{{ m['content'] }}{{ eos_token }}{% endfor %}"
                                             "{% if add_generation_prompt %}[assistant] {% endif %}")
  tok = HFTokenizer(folder)
  path = _jsonl(tmp_path / "c.jsonl", [{"prompt": [U("hi")], "chosen": [A("yo")], "rejected": [A("no")]}])
  [p] = load_preferences(path, tokenizer=tok)
  assert (p.prompt, p.chosen, p.rejected) == ("[user] hi<|im_end|>[assistant] ", "yo", "no")
  ids = tok.encode(p.prompt, bos=True)
  assert ids.count(tok.bos_id) == 1 and ids[0] == tok.bos_id


def test_prompt_only_and_unpaired_rows(tmp_path):
  prompts = _jsonl(tmp_path / "prompts.jsonl", [
      {"prompt": "2+2="}, {"prompt": "3+3=", "answer": 6}, {"prompt": [U("4+4?")], "answer": "8"}])
  assert load_prompts(prompts, tokenizer=ByteTokenizer()) == [
      PromptRow("2+2=", None), PromptRow("3+3=", "6"), PromptRow("user: 4+4?\nassistant: ", "8")]
  unpaired = _jsonl(tmp_path / "kto.jsonl", [
      {"prompt": "The sky is", "completion": " blue.", "label": True},
      {"prompt": [U("Sky colour?")], "completion": [A("Green.")], "label": False}])
  assert load_unpaired(unpaired, tokenizer=ByteTokenizer()) == [
      UnpairedExample("The sky is", " blue.", True), UnpairedExample("user: Sky colour?\nassistant: ", "Green.", False)]


def test_parquet_conversational_rows_match_jsonl(tmp_path):
  import pyarrow as pa
  import pyarrow.parquet as pq
  rows = [{"prompt": [U("2+2?")], "chosen": [A("4")], "rejected": [A("5")], "margin": 1.0},
          {"prompt": [S("terse"), U("3+3?")], "chosen": [A("6")], "rejected": [A("7")], "margin": 0.5}]
  pq.write_table(pa.Table.from_pylist(rows), tmp_path / "c.parquet")
  jsonl = _jsonl(tmp_path / "c.jsonl", rows)
  tok = ByteTokenizer()
  assert load_preferences(str(tmp_path / "c.parquet"), tokenizer=tok) == load_preferences(jsonl, tokenizer=tok)
  bad = rows + [{"prompt": [U("x")], "chosen": [{"role": "bot", "content": "1"}], "rejected": [A("2")]}]
  pq.write_table(pa.Table.from_pylist(bad), tmp_path / "bad.parquet")
  with pytest.raises(ValueError, match=r"bad.parquet:row 3: field 'chosen'\[0\]: unknown role 'bot'"):
    load_preferences(str(tmp_path / "bad.parquet"), tokenizer=tok)
  (tmp_path / "junk.parquet").write_bytes(b"not parquet at all")
  with pytest.raises(ValueError, match=r"junk.parquet: not a readable Parquet file"):
    load_preferences(str(tmp_path / "junk.parquet"))


GOOD = {"prompt": [U("2+2?")], "chosen": [A("4")], "rejected": [A("5")]}
BAD_ROWS = [   # (row as JSON text or object, message after "bad.jsonl:2: ", skip reason)
    ('{"prompt": "2+2=", "chosen": "4", ', r"not valid JSON \(Expecting", "not valid JSON"),
    ({"prompt": [U("2+2?")], "chosen": [{"role": "bot", "content": "4"}], "rejected": [A("5")]},
     r"field 'chosen'\[0\]: unknown role 'bot'; allowed: \['system', 'user', 'assistant', 'tool'\]",
     "unknown message role"),
    ({"prompt": [U("2+2?")], "chosen": [A("4")], "rejected": [A("  ")]},
     r"empty completion \(field 'rejected'\)", "empty completion"),
    ({"prompt": "2+2=", "chosen": "", "rejected": "5"}, r"empty completion \(field 'chosen'\)", "empty completion"),
    ({"prompt": "2+2=", "chosen": 4, "rejected": "5"}, r"missing or non-string field 'chosen' \(got int\)",
     "missing or non-string field 'chosen'"),
    ({"prompt": [U("2+2?")], "chosen": [A(["4"])], "rejected": [A("5")]},
     r"field 'chosen'\[0\]: missing or non-string 'content' \(got list\)", "message without string content"),
    ({"prompt": [U("2+2?")], "chosen": [{"content": "4"}], "rejected": [A("5")]},
     r"field 'chosen'\[0\]: missing or non-string 'role'", "message without role"),
    ({"prompt": "2+2=", "chosen": [A("4")], "rejected": [A("5")]},
     r"mixed formats \('prompt' is a string, 'chosen' is a message list", "mixed standard and conversational fields"),
    ({"prompt": [U("2+2?")], "chosen": [U("4")], "rejected": [A("5")]},
     r"field 'chosen': the completion must start with an assistant message, got 'user'",
     "completion does not start with an assistant message"),
    ({"prompt": [U("2+2?"), A("It is")], "chosen": [A("4")], "rejected": [A("5")]},
     r"field 'prompt': the prompt ends with an assistant message", "prompt ends with an assistant message"),
    ({"chosen": [U("a"), A("4")], "rejected": [U("b"), A("5")]},
     r"no 'prompt' field, and chosen / rejected share 0 leading messages", "implicit prompt not found"),
    ({"chosen": "12", "rejected": "13"}, r"no 'prompt' field, and chosen / rejected share no text",
     "implicit prompt not found"),
    ({"prompt": [U("2+2?")], "chosen": "4", "rejected": "5"}, r"mixed formats", "mixed standard and conversational fields"),
    ({"prompt": "2+2=", "chosen": "4", "rejected": "5", "tie": "no"}, r"field 'tie' must be true or false",
     "non-boolean field 'tie'"),
    ([1, 2], r"expected an object with fields \['prompt', 'chosen', 'rejected'\], got list", "not an object"),
]


@pytest.mark.parametrize("row,message,reason", BAD_ROWS, ids=[r[2] for r in BAD_ROWS])
def test_bad_preference_rows_name_file_line_and_field(tmp_path, row, message, reason):
  path = _jsonl(tmp_path / "bad.jsonl", [GOOD, row])
  with pytest.raises(ValueError, match="bad.jsonl:2: " + message):
    load_preferences(path, tokenizer=ByteTokenizer())
  skipped = {}
  assert len(load_preferences(path, skipped, tokenizer=ByteTokenizer())) == 1
  assert skipped == {reason: 1, "first_skipped_at": f"{path}:2"}


def test_non_utf8_bytes_and_bom(tmp_path):
  path = tmp_path / "bad.jsonl"
  good = json.dumps({"prompt": "a", "chosen": "b", "rejected": "c"}).encode()
  path.write_bytes(b"\xef\xbb\xbf" + good + b"\n" + b'{"prompt": "caf\xe9", "chosen": "b", "rejected": "c"}\n')
  with pytest.raises(ValueError, match=r"bad.jsonl:2: not valid UTF-8 \(byte 0xe9 at column 16\)"):
    load_preferences(str(path))
  skipped = {}
  assert [p.prompt for p in load_preferences(str(path), skipped)] == ["a"]   # the BOM is not an error
  assert skipped["not valid UTF-8"] == 1


def test_conversational_rows_need_a_chat_template(tmp_path):
  path = _jsonl(tmp_path / "c.jsonl", [GOOD])
  for skipped in (None, {}):    # not the row's fault: never counted as a skip
    with pytest.raises(ValueError, match=r"c.jsonl:1: conversational row \(message lists\) needs a chat template: "
                                         "load it with tokenizer="):
      load_preferences(path, skipped)
  folder = make_chat_tokenizer(str(tmp_path / "tok"), chat_template=None)
  with pytest.raises(ValueError, match=rf"c.jsonl:1: conversational data needs a chat template, but {tmp_path}/tok "
                                       "has none"):
    load_preferences(path, tokenizer=HFTokenizer(folder))
  # a template that refuses a role says so, naming the row
  folder = make_chat_tokenizer(str(tmp_path / "tok2"), chat_template=(
      "{% for m in messages %}{% if m['role'] == 'system' %}{{ raise_exception('no system role') }}{% endif %}"
      "{{ m['content'] }}{% endfor %}"))
  path = _jsonl(tmp_path / "s.jsonl", [{"prompt": [S("x"), U("y")], "chosen": [A("1")], "rejected": [A("2")]}])
  with pytest.raises(ValueError, match="s.jsonl:1: the chat template of .* refused the messages: no system role"):
    load_preferences(path, tokenizer=HFTokenizer(folder))
  # a template whose prompt is not a prefix of prompt + completion cannot be split: the row is named
  folder = make_chat_tokenizer(str(tmp_path / "tok3"), chat_template=(
      "{% for m in messages %}{{ m['content'] }}{% if not loop.last %}|{% endif %}{% endfor %}"
      "{% if add_generation_prompt %}>{% endif %}"))
  path = _jsonl(tmp_path / "p.jsonl", [GOOD, GOOD])
  with pytest.raises(ValueError, match="p.jsonl:1: the chat template of .* does not render the prompt"):
    load_preferences(path, tokenizer=HFTokenizer(folder))
  skipped = {}
  assert load_preferences(path, skipped, tokenizer=HFTokenizer(folder)) == []
  assert skipped == {"chat template refused the row": 2, "first_skipped_at": f"{path}:1"}


def test_bad_prompt_and_unpaired_rows(tmp_path):
  cases = [(load_unpaired, {"prompt": "a", "completion": "b", "label": 1}, r"field 'label' must be true or false, got 1"),
           (load_unpaired, {"prompt": "a", "completion": " ", "label": True}, r"empty completion \(field 'completion'\)"),
           (load_unpaired, {"prompt": [U("a")], "completion": [A("")], "label": True},
            r"empty completion \(field 'completion'\)"),
           (load_unpaired, {"prompt": "a", "label": True}, r"missing or non-string field 'completion'"),
           (load_prompts, {"prompt": "a", "answer": True}, r"field 'answer' must be a string or a number, got bool"),
           (load_prompts, {"prompt": [{"role": "narrator", "content": "a"}]}, r"field 'prompt'\[0\]: unknown role"),
           (load_prompts, {"question": "a"}, r"missing or non-string field 'prompt'")]
  for load, row, message in cases:
    path = _jsonl(tmp_path / "bad.jsonl", [row])
    with pytest.raises(ValueError, match="bad.jsonl:1: " + message):
      load(path, tokenizer=ByteTokenizer())


def test_missing_or_broken_tokenizer_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="nowhere: tokenizer folder not found"):
    HFTokenizer(str(tmp_path / "nowhere"))
  (tmp_path / "empty").mkdir()
  with pytest.raises(FileNotFoundError, match="empty: no tokenizer.json"):
    HFTokenizer(str(tmp_path / "empty"))
  folder = make_chat_tokenizer(str(tmp_path / "tok"))
  (tmp_path / "tok" / "tokenizer_config.json").write_text('{"eos_token": ')
  with pytest.raises(ValueError, match=r"tok/tokenizer_config.json: not valid JSON"):
    HFTokenizer(folder)
  (tmp_path / "tok" / "tokenizer_config.json").write_text("{}")
  with pytest.raises(ValueError, match="tokenizer has no eos_token"):
    HFTokenizer(folder)
  (tmp_path / "tok" / "tokenizer.json").write_text("{}")
  with pytest.raises(ValueError, match=r"tok/tokenizer.json: not a readable tokenizer.json"):
    HFTokenizer(folder)


def test_default_template_render_helpers():
  msgs = [U("hi")]
  assert render_prompt(DEFAULT_FORMAT, msgs) == "user: hi\nassistant: "
  assert render_completion(DEFAULT_FORMAT, msgs, [A("yo  ")]) == "yo"   # the turn's newline / spaces go


def test_tfds_round_trips_prompt_unpaired_and_conversational_rows(tmp_path):
  from rewardlab.data.tfds_preference import load_tfds_rows, tfds_to_rows
  folder = make_chat_tokenizer(str(tmp_path / "tok"))
  tok = HFTokenizer(folder)
  files = {
      "preference": _jsonl(tmp_path / "pref.jsonl", [GOOD, {"chosen": "The sky is blue.", "rejected": "The sky is red."}]),
      "prompt": _jsonl(tmp_path / "prompts.jsonl", [{"prompt": [U("2+2?")], "answer": "4"}, {"prompt": "3+3="}]),
      "unpaired": _jsonl(tmp_path / "kto.jsonl", [{"prompt": [U("a")], "completion": [A("b")], "label": True},
                                                  {"prompt": "c", "completion": "d", "label": False}])}
  direct = {"preference": load_preferences(files["preference"], tokenizer=tok),
            "prompt": load_prompts(files["prompt"], tokenizer=tok),
            "unpaired": load_unpaired(files["unpaired"], tokenizer=tok)}
  for kind, path in files.items():
    source = load_tfds_rows({"train": path}, str(tmp_path / "tfds"), kind, tokenizer_path=folder)["train"]
    back = sorted(tfds_to_rows(source, kind))
    assert back == sorted(direct[kind]), kind
  assert direct["prompt"][0].prompt.endswith("<|im_start|>assistant\n")
  assert np.all([isinstance(r, PromptRow) for r in direct["prompt"]])


def test_unpaired_batch_for_kto_pairs_each_prompt_with_the_previous_completion():
  from rewardlab.data.preference import unpaired_batch
  tok = ByteTokenizer()
  rows = [UnpairedExample("1+1=", "2", True), UnpairedExample("2+2=", "5", False), UnpairedExample("3+3=", "66", True)]
  b = unpaired_batch(rows, tok, 12)
  text = lambda toks, valid: bytes(t for t, v in zip(toks, valid) if v and t < 256).decode()  # noqa: E731
  assert [text(t, v) for t, v in zip(b.tokens, b.valid)] == ["1+1=2", "2+2=5", "3+3=66"]
  assert [text(t, v) for t, v in zip(b.kl_tokens, b.kl_valid)] == ["1+1=66", "2+2=2", "3+3=5"]
  assert b.desirable.tolist() == [True, False, True]
  assert b.loss_mask.sum(1).tolist() == [2, 2, 3] and b.kl_loss_mask.sum(1).tolist() == [3, 2, 2]
  assert b.tokens[0, 6] == tok.eos_id and b.loss_mask[0].tolist()[4:8] == [False, True, True, False]
  with pytest.raises(ValueError, match="at least 2 examples"):
    unpaired_batch(rows[:1], tok, 12)
