"""Regenerates benchmarks/plan_table.md: `rewardlab plan` for 0.6B-8B post-training configs
on TPU slices (compiled on this machine through libtpu; nothing runs on a TPU).

    python benchmarks/plan_table.py                 # every row at full depth (slow: minutes per compile)
    python benchmarks/plan_table.py --layers 2      # quick look with 2-layer models -> runs/plan_table/
    python benchmarks/plan_table.py --rows 0,2 --fresh
    python benchmarks/plan_table.py --jobs 2         # two rows at a time

Each (row, topology, function) is planned in its own `rewardlab plan --json` process and
cached in runs/plan_table/cache/, so an interrupted run resumes where it stopped. A row
that does not fit is re-planned (its failing functions only) on the next larger slices of
the same TPU generation until it fits, and the table names the smallest that does.
"""
from __future__ import annotations

import argparse
import concurrent.futures
import dataclasses
import datetime
import hashlib
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CACHE = os.path.join(ROOT, "runs", "plan_table", "cache")
GiB = 1024 ** 3


@dataclasses.dataclass(frozen=True)
class Row:
  label: str
  config: str                     # configs/<file>.py[:variant]
  topology: str
  larger: tuple = ()              # slices to try, smallest first, when this one does not fit
  overrides: tuple = ()


ROWS = [
    Row("Qwen3-0.6B SFT, 16 x 2048 tokens", "configs/plan_sft_qwen3_0p6b.py", "v5e:2x2", ("v5e:2x4", "v5e:4x4")),
    Row("Qwen3-1.7B GRPO, 64 prompts x 8, 512 + 1536 tokens", "configs/plan_grpo_qwen3.py:1.7b", "v5e:4x4",
        ("v5e:4x8", "v5e:8x8")),
    Row("Qwen3-8B GRPO, 64 prompts x 8, 512 + 1536 tokens", "configs/plan_grpo_qwen3.py:8b", "v5p:2x2x2",
        ("v5p:2x2x4", "v5p:2x4x4", "v5p:4x4x4")),
    Row("Qwen3-8B GRPO, 64 prompts x 8, 512 + 1536 tokens", "configs/plan_grpo_qwen3.py:8b", "v5p:4x4x4"),
    Row("Llama-3.1-8B DPO, 64 pairs x 2048 tokens", "configs/plan_dpo_llama3_8b.py", "v5e:4x4",
        ("v5e:4x8", "v5e:8x8")),
    Row("Llama-3.1-8B DPO, 64 pairs x 2048 tokens", "configs/plan_dpo_llama3_8b.py", "v6e:4x4",
        ("v6e:4x8", "v6e:8x8")),
    Row("Llama-3.1-8B Bradley-Terry RM, 64 pairs x 2048 tokens", "configs/plan_rm_8b.py", "v5p:2x2x2",
        ("v5p:2x2x4", "v5p:2x4x4")),
]

FUNCTIONS = {"sft": ["sft_update"], "dpo": ["dpo_update", "reference_logprobs"], "rm": ["rm_update"],
             "rl": ["rl_update", "reference_logprobs", "sampler_prefill", "sampler_decode_step"]}


def git_commit() -> str:
  out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True)
  dirty = subprocess.run(["git", "status", "--porcelain", "rewardlab"], cwd=ROOT, capture_output=True, text=True)
  return out.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


def load_row_config(config: str):
  sys.path.insert(0, ROOT)
  import importlib.util
  path, _, variant = config.partition(":")
  spec = importlib.util.spec_from_file_location("plan_row_config", os.path.join(ROOT, path))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant) if variant else module.get_config()


def pipeline_of(config: str) -> str:
  return load_row_config(config).pipeline


def on_slice(row: Row, topology: str) -> Row:
  """The row for a larger slice: its micro-batches lowered to the most that still split the
  update's rows evenly over the slice's chips (more chips, fewer rows each); unchanged when
  the configured number already does."""
  c = load_row_config(row.config)
  rows = c.rl.minibatch_size if c.pipeline == "rl" else c.data.batch_size
  chips = 1
  for d in topology.split(":")[1].split("x"):
    chips *= int(d)
  micro = int(c.train.micro_batches)
  fitting = [k for k in range(micro, 0, -1) if rows % (k * chips) == 0]
  if not fitting or fitting[0] == micro:
    return row
  return dataclasses.replace(row, overrides=row.overrides + (f"--config.train.micro_batches={fitting[0]}",))


def plan_one(row: Row, topology: str, function: str, layers: int | None, fresh: bool, timeout: int) -> dict:
  """One function of one row on one slice, from the cache or a `rewardlab plan --json` run."""
  overrides = list(row.overrides) + ([f"--config.model.n_layers={layers}"] if layers else [])
  key = hashlib.sha1(json.dumps([row.config, topology, function, overrides]).encode()).hexdigest()[:16]
  path = os.path.join(CACHE, f"{key}.json")
  if os.path.exists(path) and not fresh:
    with open(path) as f:
      return json.load(f)
  cmd = [sys.executable, "-m", "rewardlab", "plan", f"--config={row.config}",
         f"--topology={topology}", f"--functions={function}", "--json", *overrides]
  print(f"[{time.strftime('%H:%M:%S')}] {row.label} | {topology} | {function} ...", flush=True)
  env = dict(os.environ, PYTHONPATH=ROOT, JAX_PLATFORMS="cpu")
  t = time.perf_counter()
  out = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, env=env, timeout=timeout)
  if out.returncode not in (0, 1):
    raise RuntimeError(f"plan failed for {row.label} on {topology} ({function}):\n{out.stderr[-3000:]}")
  result = json.loads(out.stdout)
  result["wall_s"] = time.perf_counter() - t
  result["commit"] = git_commit()
  os.makedirs(CACHE, exist_ok=True)
  with open(path, "w") as f:
    json.dump(result, f)
  print(f"    {'fits' if result['fits'] else 'does not fit'} ({result['wall_s']:.0f} s)", flush=True)
  return result


def gib(x: float) -> str:
  return f"{x / GiB:.2f}"


def coll_cell(coll: dict) -> str:
  short = {"all-gather": "AG", "all-reduce": "AR", "reduce-scatter": "RS", "all-to-all": "A2A",
           "collective-permute": "CP"}
  parts = [f"{short.get(k, k)} {v['bytes'] / GiB:.2f}" for k, v in sorted(coll.items()) if v["bytes"] >= 0.005 * GiB]
  return ", ".join(parts) or "-"


def table_lines(results: list[tuple[Row, str, dict]]) -> list[str]:
  lines = ["| config | slice | mesh | function | args | temp | other | total / chip | HBM | fits "
           "| TFLOP / chip | GB accessed | bound ms | MFU <= | collectives GiB / chip | compile s |",
           "|---|---|---|---|---:|---:|---:|---:|---:|---|---:|---:|---:|---:|---|---:|"]
  for row, topology, plan in results:
    mesh = "x".join(str(plan["mesh"][a]) for a in ("data", "fsdp", "tensor"))
    topology = topology + "".join(f" ({o.removeprefix('--config.')})" for o in row.overrides)
    for f in plan["functions"]:
      if f["error"]:
        lines.append(f"| {row.label} | {topology} | {mesh} | {f['name']} | | | | | | **no**: {f['error'][:80]} "
                     "| | | | | | |")
        continue
      other = f["resident"] + f["extra"] + f["code"] - f["alias"]
      bound = f["bound_s"] * 1e3
      lines.append(
          f"| {row.label} | {topology} | {mesh} | {f['name']} | {gib(f['argument'])} | {gib(f['temp'])} | {gib(other)} "
          f"| {gib(f['total'])} | {f['total'] / f['hbm']:.0%} | {'yes' if f['fits'] else '**no**'} "
          f"| {f['flops'] / 1e12:.3g} | {f['bytes_accessed'] / 1e9:.4g} | {bound:.4g} | {f['mfu_bound']:.0%} "
          f"| {coll_cell(f['collectives'])} | {f['compile_s']:.0f} |")
  return lines


def merge(plans: list[dict]) -> dict:
  """One plan of a row from its per-function plans."""
  out = dict(plans[0])
  out["functions"] = [f for p in plans for f in p["functions"]]
  out["fits"] = all(p["fits"] for p in plans)
  out["notes"] = sorted({n for p in plans for n in p.get("notes", [])})
  return out


def plan_row(row: Row, args) -> tuple[list, str]:
  """(the row's plans: its slice, then larger ones while functions do not fit; a note)."""
  functions = FUNCTIONS[pipeline_of(row.config)]
  plan = merge([plan_one(row, row.topology, fn, args.layers, args.fresh, args.timeout) for fn in functions])
  results = [(row, row.topology, plan)]
  failing = [f["name"] for f in plan["functions"] if not f["fits"]]
  for bigger in row.larger if failing else ():
    sized = on_slice(row, bigger)
    bigger_plan = merge([plan_one(sized, bigger, fn, args.layers, args.fresh, args.timeout) for fn in failing])
    results.append((sized, bigger, bigger_plan))
    failing = [f["name"] for f in bigger_plan["functions"] if not f["fits"]]
    if not failing:
      return results, (f"{row.label}: does not fit {row.topology}; the smallest slice tried where its failing "
                       f"functions fit is **{bigger}**.")
  if failing and row.larger:
    return results, f"{row.label} on {row.topology}: {', '.join(failing)} still over budget on {row.larger[-1]}."
  return results, ""


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--layers", type=int, default=None, help="plan n-layer variants (a quick look, not the table)")
  ap.add_argument("--rows", default="", help="comma-separated row indices (default: all)")
  ap.add_argument("--jobs", type=int, default=1, help="rows planned at the same time")
  ap.add_argument("--fresh", action="store_true", help="ignore cached plans")
  ap.add_argument("--timeout", type=int, default=7200, help="seconds per function")
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  rows = [ROWS[int(i)] for i in args.rows.split(",")] if args.rows else ROWS
  out_path = args.out or (os.path.join(ROOT, "benchmarks", "plan_table.md") if args.layers is None else
                          os.path.join(ROOT, "runs", "plan_table", f"plan_table_{args.layers}layers.md"))
  with concurrent.futures.ThreadPoolExecutor(args.jobs) as pool:
    planned = list(pool.map(lambda row: plan_row(row, args), rows))
  results = [r for rs, _ in planned for r in rs]
  larger_notes = [n for _, n in planned if n]
  chips = {p["chip"]["name"]: p["chip"] for _, _, p in results}
  notes = sorted({f"{f['name']}: {n}" for _, _, p in results for f in p["functions"] for n in f["notes"]})
  write_table(out_path, results, larger_notes, notes, chips, args.layers)
  print(f"wrote {out_path}")


def write_table(path, results, larger_notes, notes, chips, layers):
  import jax
  try:
    from importlib.metadata import version
    libtpu = version("libtpu")
  except Exception:  # noqa: BLE001
    libtpu = "?"
  from rewardlab.models.config import ModelConfig
  scanned = "scan_layers" in {f.name for f in dataclasses.fields(ModelConfig)}
  commits = sorted({p.get("commit", "?") for _, _, p in results})
  lines = ["# Will it fit? `rewardlab plan` for 0.6B-8B post-training on TPU slices", "",
           f"Generated by `python benchmarks/plan_table.py` on {datetime.date.today()} (rewardlab {', '.join(commits)}, "
           f"jax {jax.__version__}, libtpu {libtpu}), on a 2-core CPU machine: every step below was AOT-compiled "
           "for the slice through libtpu's compile-only devices; nothing ran on a TPU.", ""]
  if layers:
    lines += [f"**Quick look: models cut to {layers} layers** (memory, FLOPs and compile time are not the "
              "full models').", ""]
  lines += ["Per chip: `args` = parameters, optimizer state, frozen reference and the batch as the step receives "
            "them; `temp` = the compiler's temporaries (activations kept for the backward pass, logits chunks); "
            "`other` = generated code, buffers alive meanwhile (e.g. the train state while sampling), an emulated "
            "gradient accumulator, minus donated inputs reused as outputs. `fits` = total <= 90% of the chip's HBM. "
            "FLOPs and bytes accessed are XLA's cost analysis with every loop iteration counted (XLA counts a "
            "loop body once). `bound` = max(FLOPs / peak FLOP/s, bytes / HBM bandwidth): a roofline floor "
            "with no communication; `MFU <=` = model FLOPs (6 x params x tokens + attention) / (bound x peak). "
            "Collectives: bytes each chip receives per call (AG all-gather, AR all-reduce, RS reduce-scatter, "
            "A2A all-to-all, CP collective-permute).", "",
            f"Layers: {'scanned' if scanned else 'unrolled (a Python loop: scanned layers had not landed)'}. "
            "Decode rows are one step at the largest cache; prefill and the reference pass are forward-only.", "",
            "Chips (published per-chip peaks):", ""]
  lines += [f"- {name}: {c['hbm_bytes'] / GiB:.1f} GiB HBM, {c['peak_flops'] / 1e12:.0f} TFLOP/s bf16, "
            f"{c['hbm_bw'] / 1e9:.0f} GB/s ({c['source']})" for name, c in chips.items()]
  lines += ["", "For scale, MaxText's measured MFU of tuned pre-training: Llama-3.1-8B on v6e-256 45.5%, "
            "Llama-2-70B on v5p-512 65.4%.", ""]
  lines += table_lines(results)
  if larger_notes:
    lines += ["", "## Rows that did not fit their first slice", ""] + [f"- {n}" for n in larger_notes]
  if notes:
    lines += ["", "## Notes", ""] + [f"- {n}" for n in notes]
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, "w") as f:
    f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
  main()
