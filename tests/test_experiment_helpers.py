"""Helpers the experiment scripts share (rewardlab.eval.tables)."""
import json
import os

from rewardlab.eval.tables import markdown_table, run_sharing_sft_warmup, write_results


def test_runs_share_the_first_runs_sft_warmup(tmp_path):
  """The first run trains and saves its warm-up; later runs find it copied into their
  workdir before they start (so they restore instead of retraining) and do not overwrite it."""
  shared = str(tmp_path / "_shared_sft_warmup")
  seen = []

  def fake_run(config, workdir):
    warmup = os.path.join(workdir, "sft_warmup")
    seen.append(os.path.exists(os.path.join(warmup, "weights")))
    if not seen[-1]:                       # "train" the warm-up
      os.makedirs(warmup, exist_ok=True)
      with open(os.path.join(warmup, "weights"), "w") as f:
        f.write(config)
    return {"workdir": workdir}

  for name in ("a", "b", "c"):
    out = run_sharing_sft_warmup(fake_run, f"warmup of {name}", str(tmp_path / name), shared)
    assert out == {"workdir": str(tmp_path / name)}
  assert seen == [False, True, True]
  for name in ("a", "b", "c"):
    with open(tmp_path / name / "sft_warmup" / "weights") as f:
      assert f.read() == "warmup of a"


def test_result_table_and_json(tmp_path):
  rows = [{"run": "x", "acc": 0.12345}, {"run": "y", "kl": None, "acc": 1.0}]
  assert markdown_table(rows) == "| run | acc | kl |\n|---|---|---|\n| x | 0.123 |  |\n| y | 1.000 |  |\n"
  write_results(rows, str(tmp_path))
  with open(tmp_path / "results.json") as f:
    assert json.load(f) == rows
  assert (tmp_path / "table.md").read_text().startswith("| run | acc | kl |")
