"""Multi-process runs on localhost (rewardlab.distributed): N CPU processes with 8/N simulated
devices each, joined with gloo, must train exactly what one process with 8 devices trains on
the same mesh; only process 0 writes run files; a killed process stops the others with an
error naming it; resume reproduces the uninterrupted run (same or another process count).
"""
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "multihost_worker.py")
# constant learning rate: a run stopped at step k and continued with train.steps=n follows
# the same updates as one n-step run
SFT = ["--config", "configs/sft_arithmetic.py:tiny", "--config.data.batch_size=16",
       "--config.optim.schedule=constant", "--config.optim.warmup_steps=0", "--config.train.log_every=1",
       "--config.train.checkpoint_every=3", "--config.eval.num_problems=16", "--config.eval.batch_size=16",
       "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2", "--config.train.progress=False"]
DPO = ["--config", "configs/dpo_synthetic.py:tiny", "--config.sft_warmup.steps=2", "--config.data.num_pairs=64",
       "--config.data.batch_size=16", "--config.train.steps=4", "--config.train.log_every=1",
       "--config.train.eval_every=4", "--config.train.checkpoint_every=2", "--config.eval.num_problems=16",
       "--config.eval.batch_size=16", "--config.mesh.data=4", "--config.mesh.fsdp=2", "--config.mesh.tensor=1",
       "--config.train.progress=False"]
# beta=0: with a KL penalty and no reward signal yet, the first update is Adam's normalised
# step along a gradient of float noise (~1e-7) whose direction any change of summation order
# flips, in one process as on several machines
RM = ["--config", "configs/rm_synthetic.py:tiny", "--config.sft_warmup.steps=2", "--config.data.eval_pairs=32",
      "--config.data.batch_size=16", "--config.train.steps=4", "--config.train.log_every=1",
      "--config.train.eval_every=4", "--config.train.checkpoint_every=2", "--config.eval.batch_size=16",
      "--config.mesh.data=4", "--config.mesh.fsdp=2", "--config.mesh.tensor=1", "--config.train.progress=False"]
GRPO = ["--config", "configs/grpo_arithmetic.py:tiny", "--config.objective.beta=0.0", "--config.sft_warmup.steps=2",
        "--config.rl.num_prompts=8",
        "--config.rl.group_size=4", "--config.rl.minibatch_size=16", "--config.train.steps=3",
        "--config.train.log_every=1", "--config.train.eval_every=3", "--config.train.checkpoint_every=3",
        "--config.eval.num_problems=8", "--config.eval.batch_size=8", "--config.mesh.data=4", "--config.mesh.fsdp=2",
        "--config.mesh.tensor=1", "--config.train.progress=False"]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def launch(workdir, args, n: int, devices: int = 8, heartbeat: int = 10):
  """Starts `rewardlab train <args>` as n processes (devices/n CPU devices each) on localhost.
  Returns the Popen objects; process i's output goes to <workdir>.p<i>.log and its file
  writes to <workdir>.p<i>.audit (tests/multihost_worker.py)."""
  workdir = str(workdir)
  port = _free_port()
  procs = []
  for i in range(n):
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=ROOT,
               XLA_FLAGS=f"--xla_force_host_platform_device_count={devices // n}")
    dist = ([f"--coordinator_address=localhost:{port}", f"--num_processes={n}", f"--process_id={i}",
             f"--heartbeat_timeout_seconds={heartbeat}"] if n > 1 else [])
    log = open(f"{workdir}.p{i}.log", "w")
    procs.append(subprocess.Popen([sys.executable, WORKER, f"{workdir}.p{i}.audit", "train", *args,
                                   f"--workdir={workdir}", *dist], cwd=ROOT, env=env, stdout=log,
                                  stderr=subprocess.STDOUT))
  return procs


def finish(procs, workdir, timeout: float = 600):
  for i, p in enumerate(procs):
    code = p.wait(timeout=timeout)
    assert code == 0, f"process {i} exited {code}:\n{_tail(f'{workdir}.p{i}.log')}"


def run(workdir, args, n: int, **kw):
  finish(launch(workdir, args, n, **kw), workdir)
  return metrics(workdir)


def _tail(path, lines: int = 40) -> str:
  with open(path) as f:
    return "".join(ln for ln in f.readlines() if "spmd_partitioner" not in ln and "[Gloo]" not in ln)[-6000:]


def metrics(workdir) -> dict:
  """{(step, split): record} of a run's metrics.jsonl, without the wall-clock rate."""
  out = {}
  with open(os.path.join(str(workdir), "metrics.jsonl")) as f:
    for line in f:
      r = json.loads(line)
      r.pop("tokens_per_s", None)
      assert (r["step"], r["split"]) not in out, f"{workdir}: step {r['step']} {r['split']} written twice"
      out[(r["step"], r["split"])] = r
  return out


def assert_same_metrics(want: dict, got: dict, keys=None, rtol=1e-4, atol=1e-5):
  keys = sorted(want) if keys is None else keys
  assert set(keys) <= set(got), sorted(set(keys) - set(got))
  for k in keys:
    assert set(want[k]) == set(got[k]), k
    for name, v in want[k].items():
      if isinstance(v, float):
        np.testing.assert_allclose(got[k][name], v, rtol=rtol, atol=atol, err_msg=f"{k} {name}")
      else:
        assert got[k][name] == v, (k, name)


def writes(workdir, i: int) -> set:
  """Paths under workdir that process i created, wrote, renamed or removed (relative)."""
  root = os.path.abspath(str(workdir))
  with open(f"{workdir}.p{i}.audit") as f:
    paths = [line.rstrip("\n").split("\t", 1)[1] for line in f]
  return {os.path.relpath(p, root) for p in paths if p == root or p.startswith(root + os.sep)}


# --- one process: the runtime stays out of the way -------------------------------------------

def test_one_process_initializes_nothing(monkeypatch):
  from rewardlab import distributed
  for var in ("SLURM_JOB_ID", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES", "REWARDLAB_DISTRIBUTED"):
    monkeypatch.delenv(var, raising=False)
  assert distributed.cluster_env() is None
  assert distributed.initialize() is False
  assert distributed.initialize("localhost:1234", 1, 0) is False   # one process named explicitly
  import jax
  assert jax.process_count() == 1 and distributed.is_main()


def test_cluster_env_reads_slurm_and_tpu_pod(monkeypatch):
  from rewardlab.distributed import cluster_env
  for var in ("SLURM_JOB_ID", "SLURM_NTASKS", "SLURM_STEP_NUM_TASKS", "TPU_WORKER_HOSTNAMES",
              "TPU_PROCESS_ADDRESSES", "REWARDLAB_DISTRIBUTED"):
    monkeypatch.delenv(var, raising=False)
  monkeypatch.setenv("SLURM_JOB_ID", "7")
  monkeypatch.setenv("SLURM_NTASKS", "1")
  assert cluster_env() is None                     # a one-task job is one process
  monkeypatch.setenv("SLURM_STEP_NUM_TASKS", "4")
  assert cluster_env() == "slurm"
  monkeypatch.delenv("SLURM_JOB_ID")
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1k-w-0")
  assert cluster_env() is None                     # a single-host TPU VM
  monkeypatch.setenv("TPU_WORKER_HOSTNAMES", "t1k-w-0,t1k-w-1")
  assert cluster_env() == "tpu"


@pytest.mark.parametrize("kwargs, message", [
    (dict(coordinator_address="localhost:1", num_processes=2), "without --process_id"),
    (dict(num_processes=2, process_id=0), "without --coordinator_address"),
    (dict(coordinator_address="localhost:1", num_processes=2, process_id=2), "--process_id=2 is not in"),
    (dict(coordinator_address="localhost", num_processes=2, process_id=0), "expected HOST:PORT"),
])
def test_inconsistent_launch_flags_are_named(kwargs, message):
  from rewardlab.distributed import DistributedError, initialize
  with pytest.raises(DistributedError, match=message):
    initialize(**kwargs)


def test_one_process_batch_placement_and_host_copies_are_unchanged():
  import jax
  from rewardlab import distributed
  from rewardlab.sharding import batch_sharding, make_mesh, process_rows, shard_batch
  mesh = make_mesh({"data": -1})
  x = np.arange(12, dtype=np.float32).reshape(4, 3)
  placed = shard_batch(x, mesh)
  assert placed.sharding == batch_sharding(mesh)
  np.testing.assert_array_equal(distributed.to_host(placed), x)
  assert process_rows(x.shape, batch_sharding(mesh)) == slice(0, 4)
  assert distributed.all_processes_ok(True) and not distributed.all_processes_ok(False)
  assert distributed.broadcast_from_main({"a": 3}) == {"a": 3}
  assert jax.process_count() == 1


# --- several processes ------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sft_runs(tmp_path_factory):
  """The same 8-step SFT run with one process (8 devices) and with two (4 devices each)."""
  base = tmp_path_factory.mktemp("sft")
  args = SFT + ["--config.train.steps=8", "--config.train.eval_every=4"]
  one, two = base / "one", base / "two"
  procs = launch(one, args, 1) + launch(two, args, 2)   # all three at once
  finish(procs[:1], one)
  finish(procs[1:], two)
  return {"one": one, "two": two, "args": args}


@pytest.mark.slow
def test_sft_two_processes_train_what_one_process_trains(sft_runs):
  want, got = metrics(sft_runs["one"]), metrics(sft_runs["two"])
  assert set(want) == set(got)
  assert [s for s, split in sorted(want) if split == "train"] == list(range(1, 9))
  assert {"loss", "grad_norm"} <= set(want[(1, "train")]) and "accuracy" in want[(8, "eval")]
  assert_same_metrics(want, got)
  assert want[(8, "train")]["loss"] < want[(1, "train")]["loss"]   # it trained


@pytest.mark.slow
def test_only_process_zero_writes_run_files(sft_runs):
  two = sft_runs["two"]
  main, other = writes(two, 0), writes(two, 1)
  for name in ("metrics.jsonl", "config.json", "curves.png"):
    assert name in main
  assert any(p.startswith("tb" + os.sep) for p in main)
  # process 1 touches nothing but the checkpoints, whose shards every process writes
  assert not [p for p in other if p != "checkpoints" and not p.startswith("checkpoints" + os.sep)], other
  assert sorted(os.listdir(two / "checkpoints")) == ["6", "8"]


@pytest.mark.slow
def test_killed_process_stops_the_others_and_resume_reproduces_the_run(sft_runs, tmp_path):
  """Process 1 is killed mid-run: process 0 stops with an error naming process 1; rerunning
  the same command resumes from the last checkpoint and writes the uninterrupted run's
  metrics."""
  workdir = tmp_path / "killed"
  args = sft_runs["args"][:-2] + ["--config.train.steps=40", "--config.train.eval_every=0"]
  procs = launch(workdir, args, 2, heartbeat=5)
  path = workdir / "metrics.jsonl"
  deadline = time.time() + 300
  while time.time() < deadline and not (path.exists() and len(path.read_text().splitlines()) >= 5):
    assert procs[0].poll() is None, _tail(f"{workdir}.p0.log")
    time.sleep(0.02)
  procs[1].send_signal(signal.SIGKILL)
  code = procs[0].wait(timeout=120)
  procs[1].wait()
  log = _tail(f"{workdir}.p0.log")
  assert code != 0 and len(metrics(workdir)) < 40, log
  # rewardlab's line (a collective with the dead peer failed first) or the coordination
  # service's (process 0 was waiting when the heartbeats stopped)
  assert re.search(r"process\(es\) 1 stopped responding|stopped sending heartbeats\):\s*1\b", log), log
  ckpts = os.listdir(workdir / "checkpoints")
  resumed = run(workdir, args, 2)
  full = run(tmp_path / "full", args, 1)
  assert [s for s, _ in sorted(resumed)] == list(range(1, 41)), ckpts
  assert_same_metrics(full, resumed)


@pytest.mark.slow
def test_sft_resumes_on_another_process_count(sft_runs, tmp_path):
  """4 processes (2 devices each) train 5 steps; 2 processes (4 devices each) continue to 8:
  the same metrics as the uninterrupted one-process run."""
  workdir = tmp_path / "four_then_two"
  first = SFT + ["--config.train.steps=5", "--config.train.eval_every=0"]
  run(workdir, first, 4)
  assert sorted(os.listdir(workdir / "checkpoints")) == ["3", "5"]
  got = run(workdir, SFT + ["--config.train.steps=8", "--config.train.eval_every=0"], 2)
  want = metrics(sft_runs["one"])
  assert_same_metrics(want, got, keys=[(s, "train") for s in range(1, 9)])


def one_and_two_processes(tmp_path, args) -> tuple[dict, dict]:
  """The same run on one process and on two, side by side -> (its metrics on one, on two)."""
  procs = launch(tmp_path / "one", args, 1) + launch(tmp_path / "two", args, 2)
  finish(procs[:1], tmp_path / "one")
  finish(procs[1:], tmp_path / "two")
  return metrics(tmp_path / "one"), metrics(tmp_path / "two")


def read_reports(workdir, n: int) -> list[dict]:
  """Each process's "data: process i of n read X bytes to index and Y bytes of rows from F (Z
  bytes)" line (data.row_file.report_reads)."""
  pattern = r"data: process (\d+) of (\d+) read (\d+) bytes to index and (\d+) bytes of rows from \S+ \((\d+) bytes\)"
  out = []
  for i in range(n):
    found = re.findall(pattern, open(f"{workdir}.p{i}.log").read())
    assert len(found) == 1, _tail(f"{workdir}.p{i}.log")
    p, count, index, rows, size = map(int, found[0])
    assert (p, count) == (i, n)
    out.append({"index": index, "rows": rows, "size": size})
  return out


def pairs_file(path, n: int = 64, bad_at: int | None = 20) -> list[str]:
  """n synthetic addition pairs as TRL preference rows in a JSONL file, with one malformed line
  inserted at `bad_at` (None: none); returns the lines."""
  from rewardlab.data import make_task
  from rewardlab.data.preference import synthetic_pairs
  lines = [json.dumps({"prompt": p.prompt, "chosen": p.chosen, "rejected": p.rejected})
           for p in synthetic_pairs(make_task("addition", max_digits=2), np.random.default_rng(0), n)]
  if bad_at is not None:
    lines.insert(bad_at, '{"prompt": "1+1=", "chosen": 2')
  path.write_text("\n".join(lines) + "\n")
  return lines


def assert_read_halves(tmp_path, lines):
  """Two processes read disjoint halves of the pair file: half of it each to index it (plus
  the line at the boundary) and together exactly the row bytes one process reads."""
  (one,), two = read_reports(tmp_path / "one", 1), read_reports(tmp_path / "two", 2)
  size, longest = one["size"], max(len(line) + 1 for line in lines)
  assert one["index"] == size
  assert all(r["index"] <= size // 2 + 1 + longest for r in two)
  assert sum(r["index"] for r in two) <= size + 1 + longest
  assert sum(r["rows"] for r in two) == one["rows"]
  assert all(0.35 * one["rows"] < r["rows"] < 0.65 * one["rows"] for r in two)


@pytest.mark.slow
def test_dpo_two_processes_train_what_one_process_trains_reading_half_the_file_each(tmp_path):
  """DPO on a JSONL pair file (64 pairs and one bad line, skipped): two processes train what one
  trains, and each reads only its share: half the file to index it (plus a line at the
  boundary) and the pairs of its half of each batch (the reference pass and 4 steps: together
  exactly the bytes one process reads)."""
  path = tmp_path / "pairs.jsonl"
  lines = pairs_file(path)
  args = DPO + [f"--config.data.pref_path={path}", "--config.data.on_bad_pair=skip"]
  want, got = one_and_two_processes(tmp_path, args)
  assert set(want) == set(got)
  assert {"loss", "grad_norm", "reward_accuracy"} <= set(want[(1, "train")])
  assert "gold_reward" in want[(4, "eval")]
  # at step 1 the policy is the reference: every implicit reward margin is float noise (~1e-7,
  # its sign set by summation order) and reward_accuracy counts those signs
  del want[(1, "train")]["reward_accuracy"], got[(1, "train")]["reward_accuracy"]
  assert_same_metrics(want, got)
  assert_same_metrics(metrics(tmp_path / "one" / "sft_warmup"), metrics(tmp_path / "two" / "sft_warmup"))
  assert_read_halves(tmp_path, lines)


@pytest.mark.slow
def test_reward_model_two_processes_train_what_one_process_trains_reading_half_the_file_each(tmp_path):
  """The reward model on the same kind of file (a bad row is an error for the RM pipeline, so
  none here): the same metrics and held-out report on two processes, each reading half."""
  path = tmp_path / "pairs.jsonl"
  lines = pairs_file(path, bad_at=None)
  want, got = one_and_two_processes(tmp_path, RM + [f"--config.data.pref_path={path}"])
  assert set(want) == set(got)
  assert {"loss", "accuracy"} <= set(want[(1, "train")]) and "best_of_4" in want[(4, "eval")]
  assert_same_metrics(want, got)
  assert_read_halves(tmp_path, lines)


@pytest.mark.slow
def test_grpo_two_processes_train_what_one_process_trains(tmp_path):
  want, got = one_and_two_processes(tmp_path, GRPO)
  assert set(want) == set(got)
  assert {"loss", "grad_norm", "reward", "accuracy", "adv_std"} <= set(want[(1, "train")])
  assert max(want[(s, "train")]["adv_std"] for s in (1, 2, 3)) > 0   # some group had a learning signal
  assert_same_metrics(want, got)
