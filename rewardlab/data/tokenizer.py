"""Byte-level tokenizer: the embedded default (no vocabulary file, nothing to download).

Ids 0..255 are UTF-8 bytes; then PAD, BOS, EOS. `vocab_size` is 259; models round their
embedding table up (264) so shapes divide evenly over mesh axes.
"""
from __future__ import annotations

from typing import Iterable, Sequence


class ByteTokenizer:
  pad_id = 256
  bos_id = 257
  eos_id = 258
  vocab_size = 259

  def encode(self, text: str, bos: bool = False, eos: bool = False) -> list[int]:
    ids = list(text.encode("utf-8"))
    return ([self.bos_id] if bos else []) + ids + ([self.eos_id] if eos else [])

  def decode(self, ids: Iterable[int], stop_at_eos: bool = True) -> str:
    out = bytearray()
    for i in ids:
      i = int(i)
      if i == self.eos_id and stop_at_eos:
        break
      if 0 <= i < 256:
        out.append(i)
    return out.decode("utf-8", errors="replace")

  def decode_batch(self, batch: Sequence[Iterable[int]]) -> list[str]:
    return [self.decode(row) for row in batch]
