"""Tokenizers from a local Hugging Face folder (`tokenizer.json` via the `tokenizers`
library) with special tokens from the folder's config and its chat template (jinja2).

Same interface as `ByteTokenizer` (encode/decode/pad_id/bos_id/eos_id/vocab_size), so every
pipeline takes either.
"""
from __future__ import annotations

import json
import os
from typing import Iterable, Sequence


def _read_json(path: str) -> dict:
  """A JSON object file's contents; {} when the (optional) file is absent."""
  if not os.path.exists(path):
    return {}
  try:
    with open(path, encoding="utf-8") as f:
      out = json.load(f)
  except (json.JSONDecodeError, UnicodeDecodeError) as e:
    raise ValueError(f"{path}: not valid JSON ({e})") from None
  if not isinstance(out, dict):
    raise ValueError(f"{path}: expected a JSON object, got {type(out).__name__}")
  return out


def _token_text(tok):
  return tok.get("content") if isinstance(tok, dict) else tok


class HFTokenizer:

  def __init__(self, folder: str):
    from tokenizers import Tokenizer
    path = os.path.join(folder, "tokenizer.json")
    if not os.path.isdir(folder):
      raise FileNotFoundError(f"{folder}: tokenizer folder not found")
    if not os.path.exists(path):
      raise FileNotFoundError(f"{folder}: no tokenizer.json (only the `tokenizers` fast format is read; "
                              "save it with transformers' save_pretrained)")
    self.folder = folder
    try:
      self.tok = Tokenizer.from_file(path)
    except Exception as e:  # the Rust side raises a bare Exception
      raise ValueError(f"{path}: not a readable tokenizer.json ({e})") from None
    self.config = _read_json(os.path.join(folder, "tokenizer_config.json"))
    special = _read_json(os.path.join(folder, "special_tokens_map.json"))
    lookup = lambda name: _token_text(self.config.get(name) or special.get(name))
    self.bos_token, self.eos_token, self.pad_token = lookup("bos_token"), lookup("eos_token"), lookup("pad_token")
    self.bos_id = self._id(self.bos_token)
    self.eos_id = self._id(self.eos_token)
    pad = self._id(self.pad_token)
    self.pad_id = pad if pad is not None else self.eos_id
    if self.eos_id is None:
      raise ValueError(f"{folder}: tokenizer has no eos_token in tokenizer_config.json")
    self.vocab_size = self.tok.get_vocab_size(with_added_tokens=True)
    self.chat_template = self.config.get("chat_template")
    if isinstance(self.chat_template, list):   # named templates: [{"name", "template"}, ...]
      named = {t.get("name"): t.get("template") for t in self.chat_template if isinstance(t, dict)}
      self.chat_template = named.get("default")
    jinja_path = os.path.join(folder, "chat_template.jinja")
    if self.chat_template is None and os.path.exists(jinja_path):
      with open(jinja_path, encoding="utf-8") as f:
        self.chat_template = f.read()

  def _id(self, token):
    return None if token is None else self.tok.token_to_id(token)

  def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
    ids = self.tok.encode(text, add_special_tokens=False).ids
    if bos and self.bos_id is not None:
      ids = [self.bos_id] + ids
    return ids + ([self.eos_id] if eos else [])

  def decode(self, ids: Iterable[int], stop_at_eos: bool = True) -> str:
    out = []
    for i in ids:
      i = int(i)
      if i == self.eos_id and stop_at_eos:
        break
      if i not in (self.pad_id, self.bos_id):
        out.append(i)
    return self.tok.decode(out, skip_special_tokens=True)

  def decode_batch(self, batch: Sequence[Iterable[int]]) -> list[str]:
    return [self.decode(row) for row in batch]

  def apply_chat_template(self, messages: list[dict], add_generation_prompt: bool = True,
                          **kwargs) -> str:
    """Renders messages with the folder's jinja template, as transformers does."""
    if not self.chat_template:
      raise ValueError(f"{self.folder}: tokenizer has no chat_template")
    from rewardlab.data.chat import render_template
    return render_template(self.chat_template, messages, add_generation_prompt,
                           bos_token=self.bos_token or "", eos_token=self.eos_token or "",
                           pad_token=self.pad_token or "", **kwargs)


def load_tokenizer(path: str | None):
  """`None` -> the byte tokenizer (embedded default); a folder -> HFTokenizer."""
  if not path:
    from rewardlab.data.tokenizer import ByteTokenizer
    return ByteTokenizer()
  return HFTokenizer(path)
