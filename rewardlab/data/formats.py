"""Row files and TRL's dataset formats.

Files: JSONL (.jsonl / .json, one object per line, UTF-8) or Parquet (.parquet). Every
bad row is a `RowError` naming `file:line` (JSONL) or `file:row N` (Parquet, 1-based) and
the field; loaders given a `skipped` dict count bad rows there by reason instead (plus
"first_skipped_at"), so nothing is dropped uncounted.

Formats (https://huggingface.co/docs/trl/dataset_formats), per row:
  standard        prompt / completion fields are strings;
  conversational  they are lists of {"role", "content"} messages (roles: chat.ROLES),
                  rendered to strings with the tokenizer's chat template (chat.py).
Types:
  preference      prompt, chosen, rejected  (preference.pair_from_row); with an implicit
                  prompt (no "prompt" field) the prompt is the shared prefix of chosen and
                  rejected: whole messages (conversational), or text up to the last
                  whitespace both share (standard);
  prompt-only     prompt, optional answer (a string or number) -> PromptRow;
  unpaired        prompt, completion, label (true = desirable)   -> UnpairedExample (KTO).
"""
from __future__ import annotations

import json
from typing import Callable, Iterator, NamedTuple

from rewardlab.data import chat as chat_lib
from rewardlab.data.chat import DEFAULT_FORMAT, ROLES, ChatFormat, chat_format


class RowError(ValueError):
  """A bad row: str is "where: message"; `reason` is the short key skips are counted under."""

  def __init__(self, where: str, message: str, reason: str | None = None):
    super().__init__(f"{where}: {message}")
    self.where, self.message, self.reason = where, message, reason or message

  def __reduce__(self):   # pickled between processes (data.row_file)
    return RowError, (self.where, self.message, self.reason)


class PromptRow(NamedTuple):
  prompt: str
  answer: str | None = None


class UnpairedExample(NamedTuple):
  prompt: str
  completion: str
  label: bool            # True: desirable (KTO's D), False: undesirable (U)


def jsonl_record(raw: bytes, where: str, first_line: bool = False):
  """One JSONL line -> its JSON value, None for a blank line, or a RowError (not UTF-8, not JSON)."""
  try:
    line = raw.decode("utf-8-sig" if first_line else "utf-8")
  except UnicodeDecodeError as e:
    return RowError(where, f"not valid UTF-8 (byte 0x{raw[e.start]:02x} at column {e.start + 1})",
                    "not valid UTF-8")
  if not line.strip():
    return None
  try:
    return json.loads(line)
  except json.JSONDecodeError as e:
    return RowError(where, f"not valid JSON ({e.msg}, column {e.colno})", "not valid JSON")


def _jsonl_rows(path: str) -> Iterator[tuple[object, str]]:
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      where = f"{path}:{lineno}"
      row = jsonl_record(raw, where, lineno == 1)
      if row is not None:
        yield row, where


def parquet_file(path: str):
  """pyarrow's ParquetFile (footer read, no rows yet), or a ValueError naming the file."""
  import pyarrow as pa
  import pyarrow.parquet as pq
  try:
    return pq.ParquetFile(path)
  except (pa.ArrowException, OSError) as e:
    raise ValueError(f"{path}: not a readable Parquet file ({e})") from None


def _parquet_rows(path: str) -> Iterator[tuple[object, str]]:
  import pyarrow as pa
  try:
    table = parquet_file(path).read()
  except pa.ArrowException as e:
    raise ValueError(f"{path}: not a readable Parquet file ({e})") from None
  for i, row in enumerate(parquet_records(table), 1):
    yield row, f"{path}:row {i}"


def parquet_records(table) -> list[dict]:
  """A pyarrow table's rows as dicts, null fields left out (an absent optional field)."""
  return [{k: v for k, v in row.items() if v is not None} for row in table.to_pylist()]


def read_rows(path: str, what: str = "data") -> Iterator[tuple[object, str]]:
  """(row, where) per record; a row that cannot be read is yielded as a RowError."""
  if path.endswith(".parquet"):
    return _parquet_rows(path)
  if path.endswith((".jsonl", ".json")):
    return _jsonl_rows(path)
  raise ValueError(f"{path}: unknown {what} file type; expected .jsonl / .json or .parquet")


def load_rows(path: str, parse: Callable[[object, str], object], skipped: dict | None = None,
              what: str = "data") -> list:
  """parse(row, where) over every row of a file. A bad row (RowError) raises, or with a
  `skipped` dict is counted there by reason (and the first bad row's place kept); a problem
  that is not the row's (no tokenizer, no chat template) always raises."""
  out = []
  for row, where in read_rows(path, what):
    try:
      if isinstance(row, RowError):
        raise row
      out.append(parse(row, where))
    except RowError as e:
      if skipped is None:
        raise
      skipped[e.reason] = skipped.get(e.reason, 0) + 1
      skipped.setdefault("first_skipped_at", where)
  return out


def resolve_chat(tokenizer) -> ChatFormat | None:
  """The ChatFormat loaders render conversational rows with (None: no tokenizer given)."""
  return None if tokenizer is None else chat_format(tokenizer)


def render_prompt(fmt: ChatFormat, messages: list[dict], where: str) -> str:
  try:
    return chat_lib.render_prompt(fmt, messages)
  except chat_lib.ChatTemplateError as e:
    raise RowError(where, str(e), "chat template refused the row") from None


def render_completion(fmt: ChatFormat, prompt: list[dict], completion: list[dict], where: str) -> str:
  try:
    return chat_lib.render_completion(fmt, prompt, completion)
  except chat_lib.ChatTemplateError as e:
    raise RowError(where, str(e), "chat template refused the row") from None


def require_object(row, where: str, fields) -> dict:
  if not isinstance(row, dict):
    raise RowError(where, f"expected an object with fields {list(fields)}, got {type(row).__name__}",
                   "not an object")
  return row


def string_field(row: dict, field: str, where: str) -> str:
  v = row.get(field)
  if not isinstance(v, str):
    got = "" if v is None else f" (got {type(v).__name__})"
    raise RowError(where, f"missing or non-string field {field!r}{got}", f"missing or non-string field {field!r}")
  return v


def check_messages(value, field: str, where: str) -> list[dict]:
  """A non-empty list of {"role": one of ROLES, "content": str} (other keys kept)."""
  if not isinstance(value, list) or not value:
    raise RowError(where, f"field {field!r} must be a non-empty list of messages, got {value!r:.60}",
                   f"bad message list in {field!r}")
  out = []
  for i, m in enumerate(value):
    if not isinstance(m, dict):
      raise RowError(where, f"field {field!r}[{i}]: a message must be an object, got {type(m).__name__}",
                     f"bad message list in {field!r}")
    role, content = m.get("role"), m.get("content")
    if not isinstance(role, str):
      raise RowError(where, f"field {field!r}[{i}]: missing or non-string 'role'", "message without role")
    if role not in ROLES:
      raise RowError(where, f"field {field!r}[{i}]: unknown role {role!r}; allowed: {list(ROLES)}",
                     "unknown message role")
    if not isinstance(content, str):
      raise RowError(where, f"field {field!r}[{i}]: missing or non-string 'content' (got "
                     f"{type(content).__name__})", "message without string content")
    out.append({k: v for k, v in m.items() if v is not None})
  return out


def check_completion_messages(messages: list[dict], field: str, where: str):
  if messages[0]["role"] != "assistant":
    raise RowError(where, f"field {field!r}: the completion must start with an assistant message, got "
                   f"{messages[0]['role']!r}", "completion does not start with an assistant message")
  if any(not m["content"].strip() for m in messages if m["role"] == "assistant"):
    raise RowError(where, f"empty completion (field {field!r})", "empty completion")


def check_prompt_messages(messages: list[dict], field: str, where: str):
  if messages[-1]["role"] == "assistant":
    raise RowError(where, f"field {field!r}: the prompt ends with an assistant message (prefilled "
                   "replies are not supported)", "prompt ends with an assistant message")


def check_completion_text(text: str, field: str, where: str):
  if not text.strip():
    raise RowError(where, f"empty completion (field {field!r})", "empty completion")


def is_conversational(row: dict, fields) -> bool:
  return any(isinstance(row.get(f), list) for f in fields)


def mixed_format_error(row: dict, fields, where: str):
  """A row is all strings or all message lists."""
  kinds = {f: "a message list" if isinstance(row.get(f), list) else "a string" for f in fields if f in row}
  if len(set(kinds.values())) > 1:
    desc = ", ".join(f"{f!r} is {k}" for f, k in kinds.items())
    raise RowError(where, f"mixed formats ({desc}); a row is either standard (strings) or "
                   "conversational (message lists)", "mixed standard and conversational fields")


def need_chat(chat: ChatFormat | None, where: str) -> ChatFormat:
  """The format to render a conversational row with; without one, a ValueError (not a
  skippable RowError: every such row would fail the same way)."""
  if chat is None:
    raise ValueError(f"{where}: conversational row (message lists) needs a chat template: load it with "
                     "tokenizer= (the run's tokenizer; the byte tokenizer uses the default template)")
  if chat.template is None:
    raise ValueError(f"{where}: conversational data needs a chat template, but {chat.source} has none "
                     "(tokenizer_config.json 'chat_template' or chat_template.jinja)")
  return chat


def shared_message_prefix(a: list[dict], b: list[dict]) -> int:
  n = 0
  while n < min(len(a), len(b)) and a[n] == b[n]:
    n += 1
  return n


def shared_text_prefix(a: str, b: str) -> int:
  """Where an implicit standard prompt ends: at the last whitespace inside the text both
  share, so no word is split between prompt and completion (TRL puts that whitespace in
  the completions too). 0 = no such whitespace."""
  n = 0
  while n < min(len(a), len(b)) and a[n] == b[n]:
    n += 1
  return max((i for i in range(n) if a[i].isspace()), default=0)


def answer_field(row: dict, where: str) -> str | None:
  v = row.get("answer")
  if v is None or isinstance(v, str):
    return v
  if isinstance(v, (int, float)) and not isinstance(v, bool):
    return str(v)
  raise RowError(where, f"field 'answer' must be a string or a number, got {type(v).__name__}",
                 "non-string field 'answer'")


def prompt_text(row: dict, where: str, chat: ChatFormat | None) -> str:
  """The row's "prompt" as text: a string as is, a message list rendered with the chat
  template and its generation prompt."""
  if isinstance(row.get("prompt"), list):
    msgs = check_messages(row["prompt"], "prompt", where)
    check_prompt_messages(msgs, "prompt", where)
    return render_prompt(need_chat(chat, where), msgs, where)
  return string_field(row, "prompt", where)


def prompt_from_row(row, where: str, chat: ChatFormat | None = None) -> PromptRow:
  """A prompt-only row: prompt (string or messages), optional answer."""
  row = require_object(row, where, ("prompt",))
  return PromptRow(prompt_text(row, where, chat), answer_field(row, where))


def unpaired_from_row(row, where: str, chat: ChatFormat | None = None) -> UnpairedExample:
  """An unpaired row: prompt, completion (both strings, or both message lists), label bool."""
  row = require_object(row, where, ("prompt", "completion", "label"))
  label = row.get("label")
  if not isinstance(label, bool):
    raise RowError(where, f"field 'label' must be true or false, got {label!r}", "non-boolean field 'label'")
  if is_conversational(row, ("prompt", "completion")):
    mixed_format_error(row, ("prompt", "completion"), where)
    prompt = check_messages(row.get("prompt"), "prompt", where)
    completion = check_messages(row.get("completion"), "completion", where)
    check_prompt_messages(prompt, "prompt", where)
    check_completion_messages(completion, "completion", where)
    fmt = need_chat(chat, where)
    text = render_completion(fmt, prompt, completion, where)
    check_completion_text(text, "completion", where)
    return UnpairedExample(render_prompt(fmt, prompt, where), text, label)
  prompt, completion = string_field(row, "prompt", where), string_field(row, "completion", where)
  check_completion_text(completion, "completion", where)
  return UnpairedExample(prompt, completion, label)


def load_prompts(path: str, skipped: dict | None = None, tokenizer=None) -> list[PromptRow]:
  """Prompt-only rows (RL prompts, optionally with a reference answer). `tokenizer` renders
  conversational prompts (its chat template; the byte tokenizer's default template)."""
  chat = resolve_chat(tokenizer)
  return load_rows(path, lambda row, where: prompt_from_row(row, where, chat), skipped, "prompt")


def load_unpaired(path: str, skipped: dict | None = None, tokenizer=None) -> list[UnpairedExample]:
  """Unpaired (KTO) rows: prompt, completion, label."""
  chat = resolve_chat(tokenizer)
  return load_rows(path, lambda row, where: unpaired_from_row(row, where, chat), skipped, "unpaired")


__all__ = ["DEFAULT_FORMAT", "PromptRow", "RowError", "UnpairedExample", "load_prompts", "load_rows",
           "load_unpaired", "read_rows"]
