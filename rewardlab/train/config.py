"""Shared config defaults and start-up validation.

Experiment files in configs/ start from `base_config()` and change what they need. A
config is validated once, before anything is built; every error names the field, the bad
value and what is allowed.
"""
from __future__ import annotations

import dataclasses
import math
import os

import jax
import ml_collections
from ml_collections.config_dict import placeholder

from rewardlab.data.tasks import TASKS
from rewardlab.models.attention import check_attention_platform
from rewardlab.models.config import ModelConfig
from rewardlab.models.lora import LORA_TARGETS
from rewardlab.ops.masked import AGGREGATIONS
from rewardlab.train.optim import OPTIMIZERS, SCHEDULES, STATE_DTYPES
from rewardlab.sharding import BATCH_AXES, MESH_AXES, mesh_shape
from rewardlab.train.policy import PolicySpec, resolve_model_config


class ConfigError(ValueError):
  """A config field is missing or holds a value that is not allowed."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.pipeline = "sft"
  c.seed = 0
  c.workdir = "runs/default"
  # every ModelConfig field, unset (None) unless a config sets it: unset fields take the
  # preset's value (model.preset), the HF folder's (model.hf_path), or the embedded default's
  c.model = ml_collections.ConfigDict(dict(
      {f.name: placeholder(type(f.default)) for f in dataclasses.fields(ModelConfig)},
      preset="",    # a published shape, e.g. "qwen3-0.6b" (rewardlab.models.presets.PRESETS)
      hf_path=""))  # a local HF folder; sizes then come from its config.json
  c.tokenizer_path = ""  # "" = byte tokenizer, or model.hf_path's tokenizer when that is set
  c.lora = ml_collections.ConfigDict(dict(rank=0, alpha=16.0, targets=("q", "v")))
  c.export_hf = ""  # write the final (merged) weights here as a HF folder
  c.data = ml_collections.ConfigDict(dict(
      task="addition", task_kwargs=ml_collections.ConfigDict(dict(min_digits=1, max_digits=3)),
      seq_len=16, batch_size=128))
  c.objective = ml_collections.ConfigDict(dict(name="sft", aggregation="token_mean"))
  c.optim = ml_collections.ConfigDict(dict(
      name="adamw", lr=2e-3, schedule="cosine", warmup_steps=50, min_lr_ratio=0.1,
      b1=0.9, b2=0.98, eps=1e-8, weight_decay=0.01, clip_norm=1.0,
      mu_dtype="",              # first-moment dtype ("" = master dtype; "bfloat16" halves it)
      master_dtype="float32"))  # f32 master copy of bf16 params in the optimizer state ("" = none)
  c.train = ml_collections.ConfigDict(dict(
      steps=1000, log_every=10, eval_every=250, checkpoint_every=500, keep_checkpoints=2,
      progress=True, tensorboard=True, logprob_chunk=4096,
      micro_batches=1,   # gradient accumulation: each update's batch in this many micro-batches
      skip_nonfinite_steps=0,    # > 0: skip up to this many steps with a NaN/inf loss, gradient or reward
      # refuse the run before it starts when `rewardlab plan` says a function needs more than
      # fit_margin of the device memory (or of memory_budget_gib when > 0); see rewardlab/plan/fit.py
      check_fit=False, memory_budget_gib=0.0, fit_margin=0.9))
  c.eval = ml_collections.ConfigDict(dict(num_problems=256, batch_size=128, max_prompt_len=10,
                                          max_new_tokens=6, seed=1234))
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  return c


def _check(cond: bool, field: str, msg: str):
  if not cond:
    raise ConfigError(f"config.{field}: {msg}")


def _one_of(config, field: str, allowed):
  value = config
  for part in field.split("."):
    _check(part in value, field, "missing")
    value = value[part]
  _check(value in allowed, field, f"{value!r} is not allowed; allowed: {sorted(allowed)}")


def validate(config: ml_collections.ConfigDict, objectives, pipelines,
             n_devices: int | None = None) -> None:
  """Raises ConfigError naming the first bad field. `objectives`/`pipelines`: registries."""
  for section in ("model", "data", "objective", "optim", "train", "eval", "mesh"):
    _check(section in config, section, "missing section")
  _one_of(config, "pipeline", pipelines)
  from rewardlab.objectives import PIPELINE_OBJECTIVES
  allowed = [o for o in PIPELINE_OBJECTIVES.get(config.pipeline, objectives) if o in objectives]
  _one_of(config, "objective.name", allowed)
  if config.objective.get("aggregation") is not None:
    _one_of(config, "objective.aggregation", AGGREGATIONS)
  _one_of(config, "optim.name", OPTIMIZERS)
  _one_of(config, "optim.schedule", SCHEDULES)
  for field in ("mu_dtype", "master_dtype"):
    if field in config.optim:
      _one_of(config, f"optim.{field}", STATE_DTYPES)
  _one_of(config, "data.task", TASKS)
  if config.model.get("hf_path"):
    _check(os.path.exists(os.path.join(config.model.hf_path, "config.json")), "model.hf_path",
           f"{config.model.hf_path!r} has no config.json (expected a local HF model folder)")
  try:
    model = resolve_model_config(PolicySpec.from_config(config))
  except (ValueError, TypeError) as e:
    raise ConfigError(f"config.{e}") from None
  try:
    check_attention_platform(model, jax.default_backend())
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None
  if "lora" in config and config.lora.rank > 0:
    bad = sorted(set(config.lora.targets) - set(LORA_TARGETS))
    _check(not bad, "lora.targets", f"{bad} not allowed; allowed: {sorted(LORA_TARGETS)}")
  _check(config.data.seq_len <= model.max_seq_len, "data.seq_len",
         f"{config.data.seq_len} is over model.max_seq_len={model.max_seq_len}")
  gen_len = config.eval.max_prompt_len + config.eval.max_new_tokens
  _check(gen_len <= model.max_seq_len, "eval.max_new_tokens",
         f"eval.max_prompt_len + eval.max_new_tokens = {gen_len} is over "
         f"model.max_seq_len={model.max_seq_len}")
  _check(bool(config.model.get("hf_path") or config.get("tokenizer_path")) or model.vocab_size >= 259,
         "model.vocab_size",
         f"{model.vocab_size} is smaller than the byte tokenizer's 259 ids")
  for field in ("train.steps", "data.batch_size", "eval.batch_size", "train.log_every"):
    section, name = field.split(".")
    _check(config[section][name] >= 1, field, f"{config[section][name]} must be >= 1")
  _check(config.optim.lr > 0, "optim.lr", f"{config.optim.lr} must be > 0")
  n_devices = jax.device_count() if n_devices is None else n_devices
  try:
    shape = dict(zip(MESH_AXES, mesh_shape(dict(config.mesh), n_devices)))
  except ValueError as e:
    raise ConfigError(f"config.{e}") from None
  n_batch = math.prod(shape[a] for a in BATCH_AXES)
  micro = config.train.get("micro_batches", 1)
  _check(micro >= 1, "train.micro_batches", f"{micro} must be >= 1")
  if config.pipeline == "rl":
    _validate_rl(config, model, n_batch)
  if config.pipeline == "rm":
    _validate_rm(config)
  if config.pipeline == "online_dpo":
    _validate_online(config, model)
  if config.data.get("unpaired_path"):
    _check(config.pipeline == "dpo" and config.objective.name == "kto", "data.unpaired_path",
           f"unpaired rows train KTO only (pipeline 'dpo', objective 'kto'); got {config.pipeline!r} / "
           f"{config.objective.name!r}")
    _check(not config.data.get("pref_path"), "data.unpaired_path", "set data.pref_path or data.unpaired_path, not both")
    _check(os.path.exists(config.data.unpaired_path), "data.unpaired_path", f"{config.data.unpaired_path!r} does not exist")
  for field in ("data.batch_size", "eval.batch_size"):
    section, name = field.split(".")
    _check(config[section][name] % n_batch == 0, field,
           f"{config[section][name]} is not divisible by mesh data x fsdp = {n_batch}")
  if config.pipeline != "rl":   # each micro-batch spreads over every batch shard
    _check(config.data.batch_size % (micro * n_batch) == 0, "train.micro_batches",
           f"data.batch_size={config.data.batch_size} is not divisible by micro_batches x mesh data x fsdp "
           f"= {micro} x {n_batch}")


def _validate_rl(config, model, n_batch: int):
  from rewardlab.objectives.policy_gradient import PG_OBJECTIVES
  from rewardlab.rollout import REWARD_BUILDERS
  rc = config.rl
  group_normalised = PG_OBJECTIVES[config.objective.name]["advantage"] != "reinforce_pp"
  _check(rc.group_size >= (2 if group_normalised else 1), "rl.group_size",
         f"{rc.group_size}: {config.objective.name} normalises within groups and needs >= 2")
  rows = rc.num_prompts * rc.group_size
  _check(rc.minibatch_size >= 1 and rows % rc.minibatch_size == 0, "rl.minibatch_size",
         f"{rc.minibatch_size} does not divide num_prompts x group_size = {rows}")
  _check(rc.minibatch_size % n_batch == 0, "rl.minibatch_size",
         f"{rc.minibatch_size} is not divisible by mesh data x fsdp = {n_batch}")
  micro = config.train.get("micro_batches", 1)
  _check(rc.minibatch_size % (micro * n_batch) == 0, "train.micro_batches",
         f"rl.minibatch_size={rc.minibatch_size} is not divisible by micro_batches x mesh data x fsdp "
         f"= {micro} x {n_batch}")
  _check(rows % n_batch == 0 and rc.num_prompts % n_batch == 0, "rl.num_prompts",
         f"{rc.num_prompts} prompts are not divisible by mesh data x fsdp = {n_batch}")
  total = config.eval.max_prompt_len + rc.max_new_tokens
  _check(total <= model.max_seq_len, "rl.max_new_tokens",
         f"eval.max_prompt_len + rl.max_new_tokens = {total} is over model.max_seq_len={model.max_seq_len}")
  allowed = set(REWARD_BUILDERS) - ({"reward_model"} if not rc.get("reward_model_path") else set())
  bad = sorted(set(rc.rewards) - allowed)
  _check(not bad, "rl.rewards", f"{bad} not allowed; allowed: {sorted(allowed)}"
         + ("" if rc.get("reward_model_path") else " ('reward_model' needs rl.reward_model_path)"))
  if rc.get("reward_model_path"):
    path = rc.reward_model_path
    _check(os.path.exists(os.path.join(path, "rm.json")) or os.path.exists(os.path.join(path, "config.json")),
           "rl.reward_model_path", f"{path!r} has no rm.json (rewardlab RM export) or config.json (HF)")
  _check(rc.epochs >= 1, "rl.epochs", f"{rc.epochs} must be >= 1")
  _check(0 < rc.top_p <= 1, "rl.top_p", f"{rc.top_p} must be in (0, 1]")
  _check(config.eval.pass_n >= max(config.eval.pass_k), "eval.pass_k",
         f"{tuple(config.eval.pass_k)} has k over eval.pass_n={config.eval.pass_n}")


def _validate_rm(config):
  from rewardlab.models.reward_model import HeadConfig
  _check("rm" in config, "rm", "missing section (reward-model head and loss settings)")
  fields = dict(config.rm.head)
  if fields.get("type") == "process":
    fields["sep_id"] = 0   # resolved from the tokenizer when the model is built
  try:
    HeadConfig.from_mapping(fields)
  except ValueError as e:
    raise ConfigError(f"config.rm.{e}") from None
  _check(0.0 <= config.rm.label_smoothing < 0.5, "rm.label_smoothing",
         f"{config.rm.label_smoothing} must be in [0, 0.5)")
  for field in ("label_noise", "length_bias", "tie_frac"):
    v = config.data.get(field, 0.0)
    _check(0.0 <= v <= 1.0, f"data.{field}", f"{v} must be in [0, 1]")


def _validate_online(config, model):
  _check("online" in config, "online", "missing section (rounds, sampling, ranking)")
  oc = config.online
  _check(oc.ranker in ("gold", "self_judge") or os.path.exists(os.path.join(oc.ranker, "rm.json"))
         or os.path.exists(os.path.join(oc.ranker, "config.json")), "online.ranker",
         f"{oc.ranker!r}: 'gold', 'self_judge' or a reward-model folder (rm.json / HF config.json)")
  if oc.get("cream"):
    _check(config.objective.name in ("dpo", "cdpo"), "online.cream",
           f"CREAM smooths DPO pairs; objective.name={config.objective.name!r} must be dpo or cdpo")
  if oc.ranker == "self_judge":
    _check("judge" in config, "judge", "missing section (template, mode, score_tokens, max_len)")
  _one_of(config, "online.reference", ("initial", "previous"))
  _check(oc.samples_per_prompt >= 2, "online.samples_per_prompt", f"{oc.samples_per_prompt} must be >= 2")
  _check(oc.steps_per_round >= 1 and config.train.steps % oc.steps_per_round == 0, "online.steps_per_round",
         f"{oc.steps_per_round} must be >= 1 and divide train.steps={config.train.steps}")
  total = config.eval.max_prompt_len + oc.max_new_tokens
  _check(total <= model.max_seq_len, "online.max_new_tokens",
         f"eval.max_prompt_len + online.max_new_tokens = {total} is over model.max_seq_len={model.max_seq_len}")
