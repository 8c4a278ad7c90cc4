"""Reward-model training (pipeline "rm") on the shared update step and offline loop.

Data: synthetic gold-labelled pairs (`synthetic_rm_pairs`) or local JSONL/Parquet files
(`data.pref_path`, `data.eval_path`). Every head type trains with its objective from
`objectives/reward_model.py`; evaluation writes the RewardBench-style report
(`rm_eval.md` / `rm_eval.json`) and the final model is exported to `<workdir>/reward_model`
(params + `rm.json`), which `rewardlab.rewards.reward_model.RewardModelScorer` loads as an
online reward for RL and best-of-n.
"""
from __future__ import annotations

import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx

from rewardlab.data import Task, make_task
from rewardlab.data.batching import epoch_batch_indices
from rewardlab.data.preference import (ATTRIBUTES, STEP_SEPARATOR, RMBatch, load_preferences, preference_file,
                                       rm_batch, synthetic_rm_pairs)
from rewardlab.data.row_file import batch_rows, report_reads
from rewardlab.distributed import is_main, to_host
from rewardlab.eval.reward_model import rm_report, write_report
from rewardlab.models.lora import apply_lora
from rewardlab.models.reward_model import HeadConfig, RewardModel, pair_logit, split_pairs
from rewardlab.objectives import reward_model as rmo
from rewardlab.pipelines import sft
from rewardlab.sharding import process_examples, shard_batch
from rewardlab.pipelines.common import Built, runner
from rewardlab.train.loop import LoopSettings, Pipeline, begin_run, offline_source
from rewardlab.train.optim import make_optimizer
from rewardlab.train.policy import LoraSpec, PolicySpec, init_adapters, load_trunk, resolve_model_config
from rewardlab.train.state import create_train_state, init_params
from rewardlab.train.step import model_params


def head_config(rm_cfg, tokenizer) -> HeadConfig:
  """config.rm.head -> HeadConfig; the process head's separator id comes from the tokenizer
  (config.rm.step_separator, one token)."""
  fields = dict(rm_cfg.head)
  if fields.get("type") == "process":
    ids = tokenizer.encode(rm_cfg.step_separator)
    if len(ids) != 1:
      raise ValueError(f"config.rm.step_separator={rm_cfg.step_separator!r} is {len(ids)} tokens; "
                       "the process head needs a single-token separator")
    fields["sep_id"] = ids[0]
  return HeadConfig.from_mapping(fields)


def build_reward_model(spec: PolicySpec, hc: HeadConfig, mesh, trunk_params=None):
  """-> (graphdef, params, ModelConfig). The trunk(s) come from `trunk_params` (e.g. an SFT
  warm-up), the spec's HF folder, or a fresh init."""
  model_cfg = resolve_model_config(spec)
  graphdef, params = init_params(lambda: RewardModel(model_cfg, hc, rngs=nnx.Rngs(spec.seed)), mesh)
  if trunk_params is None and spec.hf_path:
    trunk_params = load_trunk(spec, mesh)[3]
  if trunk_params is not None:
    for i in params["trunks"]:
      params["trunks"][i] = jax.tree.map(jnp.copy, trunk_params)
  return graphdef, params, model_cfg


def rm_lora(lora: LoraSpec, params, mesh, seed: int, adapters=None):
  """-> (trainable, frozen, merge). With `lora.rank > 0` the trunk(s) stay frozen and
  train through LoRA adapters while the head(s) train in full: trainable is
  {"heads": ..., "lora": adapters}, frozen the trunks, and merge(trainable, frozen) the full
  RewardModel params. Without LoRA: (params, None, None). `adapters`: ready-made ones (e.g.
  abstract shapes for `rewardlab plan`) instead of a fresh `init_adapters`."""
  if lora.rank <= 0:
    return params, None, None
  trunks = params["trunks"]
  adapters = init_adapters(lora, trunks, mesh, seed) if adapters is None else adapters

  def merge(trainable, frozen):
    full = {k: v for k, v in trainable.items() if k != "lora"}
    full["trunks"] = apply_lora(frozen, trainable["lora"], lora.scale)
    return full
  return dict({k: v for k, v in params.items() if k != "trunks"}, lora=adapters), trunks, merge


def ordinal_levels(ratings, levels: int, low: float, high: float):
  """First attribute rating in [low, high] -> level index in [0, levels)."""
  x = (ratings[:, 0] - low) / (high - low) * (levels - 1)
  return jnp.clip(jnp.round(x), 0, levels - 1).astype(jnp.int32)


def rm_loss(hc: HeadConfig, rc, outputs: dict, batch: RMBatch):
  """The head's objective on the outputs of pair-major (chosen, rejected) rows -> (loss, metrics)."""
  smooth = dict(tie=batch.tie, label_smoothing=rc.label_smoothing)
  margin = batch.margin * rc.margin_scale if rc.use_margin else None
  c, r = split_pairs(outputs)
  if hc.type == "scalar":
    return rmo.bradley_terry(c["reward"], r["reward"], margin=margin, center_coef=rc.center_coef, **smooth)
  if hc.type == "ensemble":
    losses = [rmo.bradley_terry(c["members"][:, k], r["members"][:, k], margin=margin,
                                center_coef=rc.center_coef, **smooth)[0] for k in range(hc.num_members)]
    _, metrics = rmo.bradley_terry(c["reward"], r["reward"], **smooth)
    spread = jnp.mean(jnp.std(outputs["members"], -1))
    return jnp.mean(jnp.stack(losses)), dict(metrics, member_std=spread)
  if hc.type == "gated":
    bt, metrics = rmo.bradley_terry(c["reward"], r["reward"], margin=margin, center_coef=rc.center_coef, **smooth)
    mse, m2 = rmo.attribute_mse(outputs["attributes"], batch.ratings, batch.ratings_mask)
    return bt + rc.mse_weight * mse, dict(metrics, **m2, gate_entropy=-jnp.mean(
        jnp.sum(outputs["gate"] * jnp.log(outputs["gate"] + 1e-9), -1)))
  if hc.type == "ordinal":
    loss, metrics = rmo.ordinal_preference(c["level_logits"], r["level_logits"], **smooth)
    if rc.ordinal_ce_weight > 0:
      lo, hi = rc.rating_range
      ce, m2 = rmo.ordinal_ce(outputs["level_logits"], ordinal_levels(batch.ratings, hc.levels, lo, hi),
                              batch.ratings_mask[:, 0])
      loss, metrics = loss + rc.ordinal_ce_weight * ce, dict(metrics, **m2)
    return loss, metrics
  if hc.type == "general":
    return rmo.general_preference(pair_logit(hc, outputs), **smooth)
  loss, metrics = rmo.process_bce(outputs["step_logits"], batch.steps, outputs["step_mask"] & batch.steps_mask)
  logit = pair_logit(hc, outputs)
  return loss, dict(metrics, accuracy=jnp.mean((logit > 0).astype(jnp.float32)))


def make_rm_loss_fn(hc: HeadConfig, rm_cfg):
  """loss_fn(model, RMBatch, rng): the RewardModel's outputs on pair-major (chosen, rejected) rows -> rm_loss."""
  def loss_fn(model, batch: RMBatch, rng):
    del rng
    return rm_loss(hc, rm_cfg, model(batch.tokens, batch.valid, batch.completion_start), batch)
  return loss_fn


def check_step_labels(batch: RMBatch, sep_id: int, where: str):
  """Every labelled response must have exactly as many separators as step labels."""
  comp = np.arange(batch.tokens.shape[1])[None, :] >= batch.completion_start[:, None]
  seps = np.sum((batch.tokens == sep_id) & batch.valid & comp, axis=1)
  labels = np.sum(batch.steps_mask, axis=1)
  bad = np.nonzero((labels > 0) & (seps != labels))[0]
  if len(bad):
    i = int(bad[0])
    raise ValueError(f"{where}: response {i} has {seps[i]} step separators but {labels[i]} step labels")


def load_pair_sets(data_cfg, seed: int, task: Task, steps: bool = False, tokenizer=None):
  """(train pairs, eval pairs): files when configured (config.data: pref_path, eval_path), else
  synthetic train/eval splits (num_pairs, eval_pairs, label_noise, length_bias, tie_frac,
  p_answer, p_slip, eval_length_trap); `steps`: with per-step labels (process head);
  `tokenizer` renders conversational rows with its chat template."""
  dc = data_cfg
  kw = dict(label_noise=dc.label_noise, length_bias=dc.length_bias, tie_frac=dc.tie_frac,
            p_answer=dc.p_answer, steps=steps, p_slip=dc.get("p_slip", 0.5))
  train = (preference_file(dc.pref_path, tokenizer=tokenizer, seq_len=dc.seq_len) if dc.get("pref_path") else
           synthetic_rm_pairs(task, np.random.default_rng([seed, 7]), dc.num_pairs, **kw))   # file: a share per process
  if dc.get("eval_path"):
    held_out = load_preferences(dc.eval_path, tokenizer=tokenizer)
  else:   # clean labels, best-of-4 groups, and a length-trap subset
    held_out = synthetic_rm_pairs(task, np.random.default_rng([seed, 8]), dc.eval_pairs,
                                  split="eval", p_answer=dc.p_answer, rejected_per_prompt=3,
                                  length_trap=dc.eval_length_trap, steps=steps, p_slip=dc.get("p_slip", 0.5))
  return train, held_out


def make_scorer(graphdef, hc: HeadConfig, mesh):
  @jax.jit
  def score(params, tokens, valid, start):
    out = nnx.merge(graphdef, params)(tokens, valid, start)
    scores = None if hc.type == "general" else out["reward"]
    return pair_logit(hc, out), scores, out.get("step_logits"), out.get("step_mask")
  return score


def make_rm_evaluator(graphdef, hc: HeadConfig, tokenizer, pairs, mesh, seq_len: int, batch_size: int,
                      report_dir=None, merge=None):
  """Scores held-out pairs in fixed-size batches -> rm_report scalars (+ report files).
  `merge`: `rm_lora`'s, to score the full params of a LoRA-trained state."""
  bs = batch_size
  score = make_scorer(graphdef, hc, mesh)
  has_gold = all(p.chosen_ratings and p.rejected_ratings for p in pairs)

  def evaluate(state):
    params = model_params(state.params, state.frozen, merge)
    logits, scores, step_hits, step_n = [], [], 0.0, 0.0
    for s in range(0, len(pairs), bs):
      chunk = list(pairs[s:s + bs])
      n = len(chunk)
      b = rm_batch(chunk + [chunk[-1]] * (bs - n), tokenizer, seq_len, hc.num_attributes, hc.max_steps)
      lg, sc, sl, sm = to_host(score(params, *shard_batch(
          (b.tokens, b.valid, b.completion_start), mesh)))
      logits.append(lg[:n])
      if sc is not None:
        scores.append(sc.reshape(bs, 2)[:n])   # pair-major rows: (chosen, rejected)
      if sl is not None:
        m = sm & b.steps_mask
        step_hits += float(np.sum(((sl > 0) == (b.steps > 0.5)) & m))
        step_n += float(np.sum(m))
    scores = np.concatenate(scores) if scores else None
    gold = (np.array([[p.chosen_ratings[0], p.rejected_ratings[0]] for p in pairs]) if has_gold else None)
    report = rm_report(pairs, np.concatenate(logits), scores, gold)
    if report_dir is not None and is_main():
      write_report(report, report_dir)
    out = {"accuracy": report["accuracy"], "best_of_4": report["best_of_4"]["accuracy"],
           "ece": report["calibration"]["ece"]}
    out.update({f"accuracy/{k}": v["accuracy"] for k, v in report["by_subset"].items()})
    if "gold" in report:
      out.update({f"gold_{k}": v for k, v in report["gold"].items()})
    if step_n:
      out["step_accuracy"] = step_hits / step_n
    evaluate.report = report
    return out
  return evaluate


def export_reward_model(folder: str, params, hc: HeadConfig, model_cfg, tokenizer_path: str, seq_len: int) -> str:
  """<folder>/params (orbax) + rm.json (model, head, tokenizer, seq_len): what the scorer loads.
  Several processes: each calls this (orbax saves their shards); process 0 writes rm.json."""
  import dataclasses
  folder = os.path.abspath(folder)
  if is_main():
    os.makedirs(folder, exist_ok=True)
  with ocp.StandardCheckpointer() as ckptr:
    ckptr.save(os.path.join(folder, "params"), params, force=True)
  if not is_main():
    return folder
  meta = {"model": dataclasses.asdict(model_cfg), "head": dataclasses.asdict(hc),
          "tokenizer_path": tokenizer_path, "seq_len": seq_len}
  with open(os.path.join(folder, "rm.json"), "w") as f:
    json.dump(meta, f, indent=2)
  return folder


RM_PANELS = (("train", "loss"), ("train", "accuracy"), ("eval", "accuracy"), ("eval", "best_of_4"), ("eval", "ece"))


def build(config, workdir: str | None = None) -> Built:
  """Runs (or restores) the SFT warm-up and returns the reward model's pipeline; its
  finish writes the export (<workdir>/reward_model)."""
  workdir, mesh = begin_run(config, workdir)
  dc, tc = config.data, config.train
  task = make_task(dc.task, **dc.task_kwargs)
  warm = sft.warm_start(config, workdir)
  spec = PolicySpec.from_config(config)
  tokenizer = spec.load_tokenizer()
  hc = head_config(config.rm, tokenizer)
  graphdef, params, model_cfg = build_reward_model(spec, hc, mesh, None if warm is None else warm[0])
  train_pairs, eval_pairs = load_pair_sets(dc, config.seed, task, steps=hc.type == "process", tokenizer=tokenizer)
  if len(train_pairs) < dc.batch_size:
    raise ValueError(f"preference data: {len(train_pairs)} pairs, fewer than data.batch_size={dc.batch_size}")
  optimizer, schedule = make_optimizer(config.optim, tc.steps)
  trainable, frozen, merge = rm_lora(spec.lora, params, mesh, config.seed)
  state = create_train_state(trainable, optimizer, mesh, config.seed, frozen=frozen)

  local = process_examples(dc.batch_size, mesh, rows_per_example=2)

  def batch_at(i: int) -> RMBatch:
    idx = epoch_batch_indices([config.seed], i, len(train_pairs), dc.batch_size)
    b = rm_batch(batch_rows(train_pairs, idx, local), tokenizer, dc.seq_len, hc.num_attributes, hc.max_steps)
    if hc.type == "process":
      check_step_labels(b, hc.sep_id, f"training batch {i}")
    return b

  evaluate = make_rm_evaluator(graphdef, hc, tokenizer, eval_pairs, mesh, dc.seq_len, config.eval.batch_size,
                               report_dir=workdir, merge=merge)
  pipeline = Pipeline(graphdef, state, make_rm_loss_fn(hc, config.rm), optimizer, schedule, offline_source(batch_at),
                      evaluate,
                      merge=merge, plot_panels=RM_PANELS)

  def finish(summary):
    final = summary["state"]
    return dict(summary, report=getattr(evaluate, "report", None), num_pairs=len(train_pairs),
                **report_reads(train_pairs),
                export=export_reward_model(os.path.join(workdir, "reward_model"),
                                           model_params(final.params, final.frozen, merge),  # LoRA: merged
                                           hc, model_cfg, spec.tokenizer_path or spec.hf_path, dc.seq_len))
  return Built(pipeline, mesh, LoopSettings.from_config(tc), finish)


run = runner(build)


__all__ = ["run", "build", "build_reward_model", "rm_lora", "rm_loss", "export_reward_model", "ATTRIBUTES", "STEP_SEPARATOR"]
