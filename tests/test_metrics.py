"""Metric files and the progress display: strict JSON with nulls for non-finite values, and a
plain line at most every `every_s` seconds when the output is not a terminal."""
import io
import json

from rewardlab.train.metrics import MetricWriter, Progress, read_metrics


def test_metrics_file_is_strict_json_with_nonfinite_values_flagged(tmp_path):
  writer = MetricWriter(str(tmp_path), tensorboard=False)
  record = writer.write(3, {"loss": float("nan"), "grad_norm": float("inf"), "lr": 0.5})
  writer.close()
  line = (tmp_path / "metrics.jsonl").read_text()
  assert "NaN" not in line and "Infinity" not in line
  parsed = json.loads(line, parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
  assert parsed == record == {"step": 3, "split": "train", "loss": None, "grad_norm": None, "lr": 0.5,
                              "nonfinite": ["grad_norm", "loss"]}
  assert read_metrics(str(tmp_path)) == [record]


class _Pipe(io.StringIO):
  def isatty(self):
    return False


def test_progress_off_a_terminal_prints_plain_lines_by_time_not_per_step(monkeypatch):
  clock = iter([0.0, 1.0, 2.0, 31.0, 32.0, 33.0, 70.0, 71.0])
  monkeypatch.setattr("rewardlab.train.metrics.time.perf_counter", lambda: next(clock))
  out = _Pipe()
  bar = Progress(10, enabled=True, desc="rl", every_s=30.0, stream=out)   # t = 0
  for _ in range(5):                                                      # t = 1, 2, 31, 32, 33
    bar.update(1, 100, reward=0.5)
  bar.write("step 5 eval accuracy=0.6")
  bar.update(5, 100, reward=0.75)                                         # t = 70: the last step
  bar.close()
  lines = out.getvalue().splitlines()
  assert lines[0].startswith("rl 3/10 reward=0.5 tok/s=") and lines[1] == "step 5 eval accuracy=0.6"
  assert lines[2].startswith("rl 10/10 reward=0.75") and len(lines) == 3   # not one line per update
  assert "\r" not in out.getvalue()
