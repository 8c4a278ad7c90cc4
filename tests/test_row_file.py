"""RowFile (rewardlab.data.row_file): a JSONL / Parquet file indexed a share per process and read
row by row. Shares must cover every line exactly once for any process count while reading
little more than their byte range; the rows, skips and errors must equal the whole-file loader's;
a batch reads only its local rows. The 2-process run is in test_multihost."""
import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rewardlab.data.preference import load_preferences, preference_file
from rewardlab.data.row_file import batch_rows, jsonl_share
from rewardlab.data.tokenizer import ByteTokenizer


def write_pairs(path, n=40, bad=(7,), blank=(3,), bom=True, seed=0):
  """n pairs of varied length (a long one every 9th), a malformed line after each `bad` index,
  a blank line after each `blank` index."""
  rng = np.random.default_rng(seed)
  lines = []
  for i in range(n):
    pad = "x" * int(rng.integers(0, 30)) + ("y" * 200 if i % 9 == 4 else "")
    lines.append(json.dumps({"prompt": f"{i}+1={pad}", "chosen": str(i + 1), "rejected": str(i)}))
    if i in bad:
      lines.append('{"prompt": "broken"')
    if i in blank:
      lines.append("")
  text = "\n".join(lines) + "\n"
  with open(path, "wb") as f:
    f.write(("\ufeff" if bom else "").encode() + text.encode())
  return path


@pytest.mark.parametrize("n", [1, 2, 3, 5, 8, 64])
def test_jsonl_shares_cover_each_line_once_reading_about_their_range(tmp_path, n):
  path = str(write_pairs(tmp_path / "p.jsonl"))
  data = open(path, "rb").read()
  want, offset = [], 0
  for line in data.split(b"\n")[:-1]:
    want.append((line + b"\n", offset))
    offset += len(line) + 1
  got, longest = [], max(len(line) for line, _ in want)
  for p in range(n):
    lines, read = jsonl_share(path, p, n)
    got += lines
    # its byte range, the byte before it, and the tail of its last line
    assert read <= len(data) // n + 2 + longest, (p, read)
  assert got == want


def test_jsonl_file_equals_the_whole_file_loader(tmp_path):
  path = str(write_pairs(tmp_path / "p.jsonl"))
  want_skipped, got_skipped = {}, {}
  want = load_preferences(path, want_skipped)
  rows = preference_file(path, got_skipped)
  assert list(rows) == want and len(rows) == 40 and rows[0].prompt.startswith("0+1=")
  assert got_skipped == want_skipped == {"not valid JSON": 1, "first_skipped_at": f"{path}:10"}
  assert rows[5:7] == want[5:7]
  with pytest.raises(ValueError, match=r"p\.jsonl:10: not valid JSON"):
    preference_file(path)


def test_over_long_pairs_are_bad_rows_named_by_line(tmp_path):
  path = str(write_pairs(tmp_path / "p.jsonl", bad=(), blank=()))
  skipped = {}
  rows = preference_file(path, skipped, ByteTokenizer(), seq_len=64)
  assert len(rows) == 40 - 4 and all(len(r.prompt) < 64 for r in rows)   # rows 4, 13, 22, 31 are long
  assert skipped == {"too_long": 4, "first_skipped_at": f"{path}:5"}
  with pytest.raises(ValueError, match=r"p\.jsonl:5: needs \d+ tokens, over data.seq_len=64"):
    preference_file(path, None, ByteTokenizer(), seq_len=64)


def test_parquet_rows_by_row_group(tmp_path):
  path = str(tmp_path / "p.parquet")
  rows = [{"prompt": f"{i}+1=", "chosen": str(i + 1), "rejected": str(i) if i != 6 else str(i + 1)}
          for i in range(25)]
  pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=4)   # 7 row groups
  want_skipped, got_skipped = {}, {}
  got = preference_file(path, got_skipped)
  assert list(got) == load_preferences(path, want_skipped) and len(got) == 24
  assert got_skipped == want_skipped and got_skipped["first_skipped_at"] == f"{path}:row 7"
  report = got.read_report()
  assert report["index_bytes"] > 0 and report["row_bytes"] > 0 and report["file_bytes"] > report["index_bytes"]


def test_batch_rows_reads_only_the_local_positions():
  class Counting(list):
    read = []

    def __getitem__(self, k):
      Counting.read.append(k)
      return super().__getitem__(k)

  rows = Counting(range(100, 120))
  got = batch_rows(rows, [5, 9, 1, 12, 3, 0], range(2, 4))
  assert sorted(Counting.read) == [1, 12]
  assert got[2:4] == [101, 112] and got[:2] == got[4:] == [101, 101]   # placeholders: the first local row
