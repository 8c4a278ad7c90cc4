"""A row file (JSONL or Parquet) that each process indexes a share of and reads rows from on demand.

With several processes (hosts) training on one file, each reads only
  - its contiguous share of the file while the index is built (where each row starts, which
    rows are bad and are skipped or stop the run), and
  - afterwards, the rows it needs: its own part of each batch (`batch_rows`).
The index (row places) is gathered to every process, so `len(rows)` and `rows[k]` are the
same everywhere and a batch stays a pure function of (seed, step) whatever the process count.
One process reads the whole file once for the index, then rows as batches need them.

    rows = RowFile("pairs.jsonl", lambda row, where: pair_from_row(row, where), skipped={})
    len(rows), rows[3], rows.read_report()

JSONL shares are byte ranges (a line belongs to the share holding its first byte), read to the
byte. Parquet shares are whole row groups, and a row is read with its row group (Parquet's
unit of reading; the last two groups read are kept): with large row groups a process reads
more than its batch rows, so write multi-host Parquet data with small row groups.
"""
from __future__ import annotations

import collections
import collections.abc
import os
from typing import Callable, Sequence

import numpy as np

from rewardlab.data.formats import RowError, jsonl_record, parquet_file, parquet_records
from rewardlab.distributed import allgather_objects, process_count, process_index


class RowFile(collections.abc.Sequence):
  """The kept rows of a JSONL / Parquet file, parsed on access: rows[k] = parse(row, where).

  parse(row, where) -> item raises RowError for a bad row; check(item, where) (optional) may
  raise RowError too (e.g. over-long). A bad row stops every process with the same error (the
  first in file order), or with a `skipped` dict is counted there by reason (all processes'
  counts, "first_skipped_at" the first in file order). Other errors stop every process too.
  """

  def __init__(self, path: str, parse: Callable[[object, str], object],
               check: Callable[[object, str], None] | None = None, skipped: dict | None = None,
               what: str = "data"):
    if not path.endswith((".jsonl", ".json", ".parquet")):
      raise ValueError(f"{path}: unknown {what} file type; expected .jsonl / .json or .parquet")
    self.path, self._parse = path, parse
    self._parquet = path.endswith(".parquet")
    self.index_bytes, self.row_bytes = 0, 0
    self._groups: collections.OrderedDict = collections.OrderedDict()
    share = self._parquet_share() if self._parquet else self._jsonl_share()
    places, local_skips, error = self._index(share, check, skipped is not None)
    gathered = allgather_objects((places, local_skips, error))
    errors = [e for _, _, e in gathered if e is not None]
    if errors:
      raise errors[0]
    # [n, 3] int64 per kept row: JSONL (byte offset, length, line) or Parquet (row group, row in
    # it, row number); 24 bytes a row, so a million-row index gathers as 24 MB
    self._places = np.concatenate([ps for ps, _, _ in gathered])
    if skipped is not None:
      for _, counts, _ in gathered:
        for reason, n in counts.items():
          if reason == "first_skipped_at":
            skipped.setdefault(reason, n)
          else:
            skipped[reason] = skipped.get(reason, 0) + n

  # --- the index: this process's share ---------------------------------------------------

  def _jsonl_share(self):
    """[(raw line, byte offset, 1-based line number)] of the lines in this process's share."""
    lines, self.index_bytes = jsonl_share(self.path, process_index(), process_count())
    before = sum(allgather_objects(len(lines))[:process_index()])   # lines in earlier shares
    return [(raw, off, before + i + 1) for i, (raw, off) in enumerate(lines)]

  def _parquet_share(self):
    """[(row, (group, row in group), 1-based row number)] of this process's row groups."""
    pf = parquet_file(self.path)
    meta, p, n = pf.metadata, process_index(), process_count()
    groups = range(meta.num_row_groups * p // n, meta.num_row_groups * (p + 1) // n)
    first_row = sum(meta.row_group(g).num_rows for g in range(groups.start))
    out = []
    for g in groups:
      rows, size = self._read_group(pf, g)
      self.index_bytes += size
      out += [(row, (g, i), first_row + len(out) + i + 1) for i, row in enumerate(rows)]
    return out

  def _where(self, number: int) -> str:
    return f"{self.path}:row {number}" if self._parquet else f"{self.path}:{number}"

  def _index(self, share, check, skip: bool):
    """This share's (kept places [n, 3], skip counts, the error that stops the run or None)."""
    places, skips = [], {}
    try:
      for raw, at, number in share:
        where = self._where(number)
        try:
          item = self._item(raw, where, number == 1)
          if item is None:
            continue   # a blank JSONL line
          if check is not None:
            check(item, where)
        except RowError as e:
          skips[e.reason] = skips.get(e.reason, 0) + 1
          skips.setdefault("first_skipped_at", where)
          if not skip:
            return np.array(places, np.int64).reshape(-1, 3), skips, e
          continue
        places.append((*at, number) if self._parquet else (at, len(raw), number))
    except Exception as e:   # noqa: BLE001 - not the row's problem: every process must stop
      error = e if process_count() == 1 else ValueError(f"{type(e).__name__}: {e}")
      return np.array(places, np.int64).reshape(-1, 3), skips, error
    return np.array(places, np.int64).reshape(-1, 3), skips, None

  # --- reading rows ----------------------------------------------------------------------

  def _item(self, raw, where: str, first_line: bool):
    row = raw if self._parquet else jsonl_record(raw, where, first_line)
    if isinstance(row, RowError):
      raise row
    return None if row is None else self._parse(row, where)

  @staticmethod
  def _read_group(pf, g: int) -> tuple[list[dict], int]:
    """Row group g's rows (null fields left out) and its size in the file (compressed bytes)."""
    rg = pf.metadata.row_group(g)
    rows = parquet_records(pf.read_row_group(g))
    return rows, sum(rg.column(c).total_compressed_size for c in range(rg.num_columns))

  def _group(self, g: int) -> list:
    if g not in self._groups:
      self._groups[g], size = self._read_group(parquet_file(self.path), g)
      self.row_bytes += size
      while len(self._groups) > 2:
        self._groups.popitem(last=False)
    return self._groups[g]

  def __len__(self) -> int:
    return len(self._places)

  def __getitem__(self, k):
    if isinstance(k, slice):
      return [self[i] for i in range(*k.indices(len(self)))]
    a, b, number = (int(x) for x in self._places[k])
    if self._parquet:
      return self._item(self._group(a)[b], self._where(number), False)
    with open(self.path, "rb") as f:
      f.seek(a)
      raw = f.read(b)
    self.row_bytes += len(raw)
    return self._item(raw, self._where(number), a == 0)

  def read_report(self) -> dict:
    """What this process read of the file: bytes for the index and for rows since."""
    return {"file": self.path, "file_bytes": os.path.getsize(self.path), "index_bytes": self.index_bytes,
            "row_bytes": self.row_bytes, "process": process_index(), "processes": process_count()}


def jsonl_share(path: str, p: int, n: int) -> tuple[list[tuple[bytes, int]], int]:
  """Share p of n of a JSONL file: ([(raw line, byte offset)] of the lines whose first byte is
  in bytes [size p / n, size (p + 1) / n), bytes read). It reads that range, the byte before
  it (is a line starting at its first byte?) and the rest of its last line."""
  size = os.path.getsize(path)
  start, end = size * p // n, size * (p + 1) // n
  lo = max(start - 1, 0)
  with open(path, "rb") as f:
    f.seek(lo)
    buf = f.read(end - lo)
    while end < size and not buf.endswith(b"\n"):   # the last line runs past the range
      more = f.read(4096)
      cut = more.find(b"\n")
      buf += more if cut < 0 else more[:cut + 1]
      if cut >= 0 or not more:
        break
  if start == 0:
    first = 0
  else:   # the first line starting at >= start (none when no newline precedes the range's end)
    first = buf.find(b"\n", 0, end - lo) + 1 or len(buf)
  lines, offset = [], first
  while offset < len(buf) and lo + offset < end:
    stop = buf.find(b"\n", offset)
    stop = len(buf) if stop < 0 else stop + 1
    lines.append((buf[offset:stop], lo + offset))
    offset = stop
  return lines, len(buf)


def batch_rows(rows: Sequence, idx: Sequence[int], local: range) -> list:
  """rows[j] for j in idx, read only at the batch positions in `local` (this process's part of
  the batch, `sharding.process_examples`); the other positions repeat the first local row as a
  placeholder: those rows are another process's, and `shard_batch` keeps only this process's."""
  mine = {k: rows[idx[k]] for k in local}
  filler = mine[local.start]
  return [mine.get(k, filler) for k in range(len(idx))]


def report_reads(rows) -> dict:
  """{"data_read": what this process read of the file} for a RowFile, printed by every
  process (each reads its own share); {} for in-memory data."""
  if not isinstance(rows, RowFile):
    return {}
  r = rows.read_report()
  print(f"data: process {r['process']} of {r['processes']} read {r['index_bytes']} bytes to index and "
        f"{r['row_bytes']} bytes of rows from {r['file']} ({r['file_bytes']} bytes)", flush=True)
  return {"data_read": r}
