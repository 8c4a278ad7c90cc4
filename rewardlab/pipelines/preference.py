"""Offline preference optimization (DPO family) on the shared update step and loop.

The dataset is a fixed list of pairs (synthetic gold-labelled pairs, or a JSONL / Parquet
file in TRL's standard or conversational format), or, for KTO, unpaired rows
(`data.unpaired_path`: prompt, completion, label).
The frozen reference's summed log-probs of every chosen/rejected completion are computed
once, before training, and cached on the host (`ref_forward_passes` = 1 in the metrics);
reference-free objectives (SimPO, ORPO) skip that pass. Evaluation compares greedy
completions of the policy with those of the reference under the gold reward.
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from rewardlab.data import Task, make_task, prompt_batch
from rewardlab.data.batching import epoch_batch_indices
from rewardlab.data.formats import load_unpaired
from rewardlab.data.preference import (PairBatch, PreferencePair, UnpairedBatch, drop_too_long, gold_reward,
                                       pair_batch, preference_file, split_pair_rows, synthetic_pairs,
                                       unpaired_batch)
from rewardlab.data.row_file import batch_rows, report_reads
from rewardlab.distributed import is_main, to_host
from rewardlab.models.logprobs import completion_logprobs, sequence_logprobs
from rewardlab.objectives.preference import PAIRED, REFERENCE_FREE, cdpo_loss, kto_loss, sppo_loss, tgdpo_loss
from rewardlab.ops import masked_sum
from rewardlab.pipelines import sft
from rewardlab.sampling import SamplingParams, make_sample_fn
from rewardlab.sharding import process_examples, shard_batch
from rewardlab.pipelines.common import Built, runner
from rewardlab.train.loop import LoopSettings, Pipeline, begin_run, offline_source
from rewardlab.train.optim import make_optimizer
from rewardlab.train.state import create_train_state

HYPERPARAMS = ("beta", "label_smoothing", "gamma", "lam", "alpha", "eta", "token_alpha", "lambda_d", "lambda_u",
               "length_normalize")
TOKEN_LEVEL = ("tgdpo",)   # objectives that need per-token rewards and reference log-probs


def summed_logprobs(model, tokens, valid, loss_mask, chunk: int):
  """Summed completion log-probs and completion lengths: [N, T] -> ([N], [N])."""
  logps = sequence_logprobs(model, tokens, valid, chunk)
  mask = loss_mask[:, 1:]
  return masked_sum(logps, mask, axis=-1), jnp.sum(mask, -1).astype(jnp.float32)


def kto_on_pairs(logp_w, logp_l, ref_w, ref_l, *, beta: float = 0.1, **hp):
  """KTO fed from pairs: chosen completions are the desirable examples, rejected the
  undesirable ones (unpaired inside the loss); adds the paired metrics for comparison."""
  loss, metrics = kto_loss(jnp.concatenate([logp_w, logp_l]), jnp.concatenate([ref_w, ref_l]),
                           jnp.arange(2 * logp_w.shape[0]) < logp_w.shape[0], beta=beta, **hp)
  rw, rl = beta * (logp_w - ref_w), beta * (logp_l - ref_l)
  return loss, dict(metrics, reward_accuracy=jnp.mean((rw > rl).astype(jnp.float32)),
                    logp_chosen=jnp.mean(logp_w), logp_rejected=jnp.mean(logp_l))


def sppo_on_pairs(logp_w, logp_l, ref_w, ref_l, *, win_w, win_l, eta: float = 1.0, beta: float = 0.1, **_):
  """SPPO on both completions of each pair, each regressed toward eta (P(y > pi) - 1/2);
  P comes from the on-policy group (online) or is 1 / 0 for a labelled pair (offline)."""
  loss, metrics = sppo_loss(jnp.concatenate([logp_w, logp_l]), jnp.concatenate([ref_w, ref_l]),
                            jnp.concatenate([win_w, win_l]), eta=eta)
  rw, rl = beta * (logp_w - ref_w), beta * (logp_l - ref_l)
  return loss, dict(metrics, reward_chosen=jnp.mean(rw), reward_rejected=jnp.mean(rl),
                    reward_margin=jnp.mean(rw - rl), reward_accuracy=jnp.mean((rw > rl).astype(jnp.float32)),
                    logp_chosen=jnp.mean(logp_w), logp_rejected=jnp.mean(logp_l))


# objectives the pair pipelines (dpo, online_dpo) train with
PAIR_OBJECTIVES = {**PAIRED, "kto": kto_on_pairs, "sppo": sppo_on_pairs}


def register_pair_objective(name: str, fn) -> None:
  """Makes `fn` trainable as config.objective.name=`name` in the dpo and online_dpo pipelines
  of this process, without editing the package (e.g. a prototype in a notebook).

  fn(logp_w, logp_l, ref_w, ref_l, *, len_w, len_l, win_w, win_l, **hyperparams) ->
  (loss, metrics): summed completion log-probs [B] of the policy and the reference on the
  chosen (w) and rejected (l) responses, lengths [B], win probabilities [B]; hyperparams are
  the config.objective fields in HYPERPARAMS that are set. The reference's log-probs are
  computed (name is not in REFERENCE_FREE). Registering a name again (a re-run notebook
  cell) replaces it; a built-in objective's name is refused."""
  from rewardlab.objectives import OBJECTIVES, PIPELINE_OBJECTIVES
  if name in OBJECTIVES and name not in _REGISTERED:
    raise ValueError(f"register_pair_objective: {name!r} is a built-in objective; choose another name")
  PAIR_OBJECTIVES[name] = fn
  OBJECTIVES[name] = fn
  for pipeline in ("dpo", "online_dpo"):
    if name not in PIPELINE_OBJECTIVES[pipeline]:
      PIPELINE_OBJECTIVES[pipeline].append(name)
  _REGISTERED.add(name)


_REGISTERED: set[str] = set()   # names added by register_pair_objective


def tgdpo_on_pairs(model, batch: PairBatch, chunk: int, *, beta: float = 0.1, token_alpha: float = 1.0, **_):
  """TGDPO: DPO with per-token weights from the token-level reward r_t: chosen tokens
  w = max(0, 1 + alpha r_t) (push good tokens up harder), rejected tokens
  w = max(0, 1 - alpha r_t) (push bad tokens down harder); alpha = 0 is DPO."""
  logps = sequence_logprobs(model, batch.tokens, batch.valid, chunk)       # [2B, T-1]
  mask = batch.loss_mask[:, 1:].astype(jnp.float32)
  r_w, r_l = split_pair_rows(batch.token_rewards)
  w_w = jnp.maximum(1.0 + token_alpha * r_w, 0.0)
  w_l = jnp.maximum(1.0 - token_alpha * r_l, 0.0)
  return tgdpo_loss(*split_pair_rows(logps), *split_pair_rows(batch.ref_token_logps), *split_pair_rows(mask),
                    w_w, w_l, beta=beta)


def make_preference_loss_fn(objective_cfg, chunk: int, per_pair_smoothing: bool = False):
  """`per_pair_smoothing` (CREAM): conservative DPO with each pair's own label smoothing."""
  hp = {k: objective_cfg[k] for k in HYPERPARAMS if objective_cfg.get(k) is not None}
  if objective_cfg.name == "tgdpo":
    return lambda model, batch, rng: tgdpo_on_pairs(model, batch, chunk, **hp)
  fn = cdpo_loss if per_pair_smoothing else PAIR_OBJECTIVES[objective_cfg.name]

  def loss_fn(model, batch: PairBatch, rng):
    del rng
    logps, lengths = summed_logprobs(model, batch.tokens, batch.valid, batch.loss_mask, chunk)
    kw = dict(hp, label_smoothing=split_pair_rows(batch.smoothing)[0]) if per_pair_smoothing else hp
    (len_w, len_l), (win_w, win_l) = split_pair_rows(lengths), split_pair_rows(batch.win_prob)
    return fn(*split_pair_rows(logps), *split_pair_rows(batch.ref_logps),
              len_w=len_w, len_l=len_l, win_w=win_w, win_l=win_l, **kw)
  return loss_fn


def load_pairs(data_cfg, seed: int, task: Task, tokenizer, token_rewards: bool = False,
               skipped: dict | None = None):
  """The run's pairs (config.data: `pref_path`, or synthetic `num_pairs` / `label_noise` /
  `p_answer`), over-long pairs dropped-and-counted or an error by `on_bad_pair` ("error" |
  "skip"; skips are counted in `skipped`). token_rewards: synthetic pairs carry gold
  per-token rewards (TGDPO)."""
  dc = data_cfg
  skip = skipped if dc.get("on_bad_pair", "error") == "skip" else None
  if dc.get("pref_path"):   # read a share per process (data.row_file)
    return preference_file(dc.pref_path, skip, tokenizer, dc.seq_len)
  pairs = synthetic_pairs(task, np.random.default_rng([seed, 99]), dc.num_pairs,
                          label_noise=dc.label_noise, p_answer=dc.p_answer, token_rewards=token_rewards)
  return drop_too_long(pairs, tokenizer, dc.seq_len, skip)


def kl_partners(examples, tokenizer, seq_len: int) -> list[PreferencePair]:
  """KTO on unpaired rows: each example as a pair (prompt j, its completion, a mismatched
  completion) whose second row feeds KTO's KL reference point z. The partner is the nearest
  earlier example (dataset order, cyclic) whose completion fits after prompt j, so it is fixed
  and its reference log-prob is cached once like the example's own."""
  fits = lambda prompt, completion: (len(tokenizer.encode(prompt, bos=True))  # noqa: E731
                                     + len(tokenizer.encode(completion, eos=True)) <= seq_len)
  pairs = []
  for j, e in enumerate(examples):
    partner = next((examples[j - k].completion for k in range(1, len(examples))
                    if fits(e.prompt, examples[j - k].completion)), None)
    if partner is None:
      raise ValueError(f"unpaired data: no other example's completion fits after prompt {j} ({e.prompt[:30]!r}) "
                       f"within data.seq_len={seq_len}: KTO needs one for its KL estimate")
    pairs.append(PreferencePair(e.prompt, e.completion, partner))
  return pairs


def unpaired_batches(examples, partners, ref_cache: np.ndarray, tokenizer, seq_len: int, batch_size: int, key):
  """batch_at(i) -> UnpairedBatch of update i (reshuffled every epoch, seeded by `key`), with
  cached reference log-probs ref_cache [n, 2] (own completion, KL partner)."""
  def batch_at(i: int) -> UnpairedBatch:
    idx = epoch_batch_indices(key, i, len(examples), batch_size)
    return unpaired_batch([examples[j] for j in idx], tokenizer, seq_len, ref_cache[idx, 0], ref_cache[idx, 1],
                          kl_completions=[partners[j].rejected for j in idx])
  return batch_at


def make_unpaired_kto_loss_fn(objective_cfg, chunk: int):
  """KTO on UnpairedBatches: summed completion log-probs of each row and of its KL partner."""
  hp = {k: objective_cfg[k] for k in HYPERPARAMS if objective_cfg.get(k) is not None}

  def loss_fn(model, batch: UnpairedBatch, rng):
    del rng
    logp, _ = summed_logprobs(model, batch.tokens, batch.valid, batch.loss_mask, chunk)
    kl_logp, _ = summed_logprobs(model, batch.kl_tokens, batch.kl_valid, batch.kl_loss_mask, chunk)
    return kto_loss(logp, batch.ref_logps, batch.desirable, kl_logp=kl_logp, kl_ref=batch.kl_ref_logps, **hp)
  return loss_fn


def make_reference_scorer(graphdef, chunk: int, per_token: bool = False):
  """jitted score(params, tokens [N, T], valid, loss_mask) -> [N] summed completion
  log-probs, or with per_token [N, T-1] masked per-token log-probs: the reference pass."""
  @jax.jit
  def score(params, tokens, valid, mask):
    model = nnx.merge(graphdef, params)
    if per_token:
      return sequence_logprobs(model, tokens, valid, chunk) * mask[:, 1:]
    return summed_logprobs(model, tokens, valid, mask, chunk)[0]
  return score


def reference_logps(graphdef, ref_params, pairs, tokenizer, seq_len, batch_size, mesh, chunk,
                    per_token: bool = False):
  """One pass of the frozen reference over the dataset -> [N, 2] (chosen, rejected) summed
  completion log-probs, or with per_token [N, 2, T-1] masked per-token log-probs."""
  score = make_reference_scorer(graphdef, chunk, per_token)
  out = np.zeros((len(pairs), 2) + ((seq_len - 1,) if per_token else ()), np.float32)
  local = process_examples(batch_size, mesh, rows_per_example=2)
  for s in range(0, len(pairs), batch_size):
    n = min(batch_size, len(pairs) - s)
    idx = list(range(s, s + n)) + [s + n - 1] * (batch_size - n)   # static shapes
    b = pair_batch(batch_rows(pairs, idx, local), tokenizer, seq_len)
    got = np.asarray(to_host(score(ref_params, *shard_batch((b.tokens, b.valid, b.loss_mask), mesh))))
    out[s:s + n] = got.reshape(batch_size, 2, *got.shape[1:])[:n]   # pair-major rows
  return out


def make_gold_evaluator(eval_cfg, task: Task, policy, ref_params, mesh):
  """Gold reward of greedy completions on held-out prompts, win rate vs the reference's
  greedy completions (ties count 1/2), exact-match accuracy, and a sampled KL(pi || ref).
  config.eval: seed, num_problems, max_prompt_len, max_new_tokens."""
  ec, tok = eval_cfg, policy.tokenizer
  problems = task.sample_many(np.random.default_rng(ec.seed), ec.num_problems, split="eval")
  pb = prompt_batch([p.prompt for p in problems], tok, ec.max_prompt_len)
  tokens, valid = shard_batch((pb.tokens, pb.valid), mesh)
  greedy = make_sample_fn(policy.graphdef, SamplingParams(ec.max_new_tokens, temperature=0.0,
                                                          stop_ids=(tok.eos_id,)), tok.pad_id, mesh)
  sample = make_sample_fn(policy.graphdef, SamplingParams(ec.max_new_tokens, temperature=1.0,
                                                          stop_ids=(tok.eos_id,)), tok.pad_id, mesh)

  @jax.jit
  def logps_under(params, full_tokens, full_valid):
    return completion_logprobs(nnx.merge(policy.graphdef, params), full_tokens, full_valid,
                               ec.max_new_tokens)

  def golds(params):
    texts = tok.decode_batch(np.asarray(to_host(greedy(params, tokens, valid, jax.random.PRNGKey(0)).tokens)))
    return np.array([gold_reward(t, p.answer) for t, p in zip(texts, problems)]), texts

  ref_gold, _ = golds(ref_params)

  def evaluate(state):
    params = policy.full_params(state.params, state.frozen["base"])
    gold, texts = golds(params)
    out = to_host(sample(params, tokens, valid, jax.random.PRNGKey(ec.seed)))
    full = shard_batch((np.concatenate([pb.tokens, out.tokens], 1),
                        np.concatenate([pb.valid, out.mask], 1)), mesh)
    ref_lp = np.asarray(to_host(logps_under(ref_params, *full)))
    kl = float(np.mean(np.sum((out.logps_model - ref_lp) * out.mask, -1)))
    win = np.mean((gold > ref_gold) + 0.5 * (gold == ref_gold))
    return {"gold_reward": float(gold.mean()), "gold_reward_ref": float(ref_gold.mean()),
            "win_rate_vs_ref": float(win), "kl_to_ref": kl,
            "accuracy": float(np.mean([task.verify(t, p.answer) for t, p in zip(texts, problems)])),
            "examples": [f"{p.prompt}{t}" for p, t in zip(problems[:3], texts)]}
  return evaluate


def pair_batches(pairs, ref_cache: np.ndarray, tokenizer, seq_len: int, batch_size: int, key,
                 token_level: bool = False, mesh=None):
  """batch_at(i) -> PairBatch of update i: a reshuffled-every-epoch draw (seeded by `key`) of
  the pairs with their cached reference log-probs ([n, 2] sums, or [n, 2, T-1] per token).
  With the mesh, each process reads only the pairs of its part of the batch (`batch_rows`)."""
  local = process_examples(batch_size, mesh, rows_per_example=2)

  def batch_at(i: int) -> PairBatch:
    idx = epoch_batch_indices(key, i, len(pairs), batch_size)
    rows = batch_rows(pairs, idx, local)
    ref_rows = ref_cache[idx].reshape(2 * len(idx), *ref_cache.shape[2:])   # pair-major, as the batch's rows
    if token_level:   # per-token cache [n, 2, T-1]
      return pair_batch(rows, tokenizer, seq_len, ref_rows.sum(-1), ref_token_logps=ref_rows, token_rewards=True)
    return pair_batch(rows, tokenizer, seq_len, ref_rows)
  return batch_at


GOLD_PANELS = (("train", "loss"), ("train", "reward_margin"), ("eval", "gold_reward"),
               ("eval", "win_rate_vs_ref"), ("eval", "kl_to_ref"))


def load_unpaired_examples(data_cfg, tokenizer, skipped: dict):
  """(examples, their KL partners as pairs) from data.unpaired_path; bad or over-long rows
  raise, or are counted in `skipped` with data.on_bad_pair="skip"."""
  skip = skipped if data_cfg.get("on_bad_pair", "error") == "skip" else None
  examples = drop_too_long(load_unpaired(data_cfg.unpaired_path, skip, tokenizer=tokenizer), tokenizer,
                           data_cfg.seq_len, skip, completions=lambda e: (e.completion,), what="unpaired row")
  return examples, kl_partners(examples, tokenizer, data_cfg.seq_len)


def build(config, workdir: str | None = None) -> Built:
  """Runs (or restores) the SFT warm-up, caches the reference's log-probs, and returns the
  pipeline ready for the loop."""
  workdir, mesh = begin_run(config, workdir)
  dc, tc = config.data, config.train
  task = make_task(dc.task, **dc.task_kwargs)
  policy, ref, _ = sft.warm_policy(config, workdir, mesh)
  token_level = config.objective.name in TOKEN_LEVEL
  unpaired, skipped = bool(dc.get("unpaired_path")), {}
  if unpaired:   # KTO on (prompt, completion, label) rows; "pairs" are (row, KL partner)
    examples, pairs = load_unpaired_examples(dc, policy.tokenizer, skipped)
  else:
    pairs = load_pairs(dc, config.seed, task, policy.tokenizer, token_level, skipped)
  if skipped and is_main():
    print(f"preference data: skipped {skipped}", flush=True)
  if len(pairs) < dc.batch_size:
    raise ValueError(f"preference data: {len(pairs)} {'rows' if unpaired else 'pairs'}, fewer than "
                     f"data.batch_size={dc.batch_size}")
  if config.objective.name in REFERENCE_FREE:
    ref_cache, passes = np.zeros((len(pairs), 2), np.float32), 0
  else:
    ref_cache = reference_logps(policy.graphdef, ref, pairs, policy.tokenizer, dc.seq_len,
                                dc.batch_size, mesh, tc.logprob_chunk, per_token=token_level)
    passes = 1
  optimizer, schedule = make_optimizer(config.optim, tc.steps)
  state = create_train_state(policy.params, optimizer, mesh, config.seed,
                             frozen={"base": policy.frozen})
  merge = None if policy.merge is None else (lambda p, f: policy.merge(p, f["base"]))
  if unpaired:
    loss_fn = make_unpaired_kto_loss_fn(config.objective, tc.logprob_chunk)
    batch_at = unpaired_batches(examples, pairs, ref_cache, policy.tokenizer, dc.seq_len, dc.batch_size,
                                [config.seed])
  else:
    loss_fn = make_preference_loss_fn(config.objective, tc.logprob_chunk)
    batch_at = pair_batches(pairs, ref_cache, policy.tokenizer, dc.seq_len, dc.batch_size, [config.seed],
                            token_level, mesh)

  def with_cache_metric(model, batch, rng):
    loss, metrics = loss_fn(model, batch, rng)
    return loss, dict(metrics, ref_forward_passes=jnp.float32(passes))

  pipeline = Pipeline(policy.graphdef, state, with_cache_metric, optimizer, schedule, offline_source(batch_at),
                      make_gold_evaluator(config.eval, task, policy, ref, mesh), merge=merge,
                      plot_panels=GOLD_PANELS)
  return Built(pipeline, mesh, LoopSettings.from_config(tc),
               lambda summary: dict(summary, num_pairs=len(pairs), skipped=skipped, **report_reads(pairs)))


run = runner(build)
