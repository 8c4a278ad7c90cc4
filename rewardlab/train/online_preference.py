"""Online / iterative preference optimization (pipeline "online_dpo"), and the
self-rewarding loop (`online.ranker="self_judge"`: the current policy judges its own samples).

For k rounds: sample n completions per prompt from the current policy (KV-cache sampler),
rank them with the gold reward, a trained reward model, or the policy as judge, pair each prompt's best against
its worst, keep pairs whose score gap is at least `online.min_margin` (the rest are counted,
not silently dropped), cache the reference's log-probs of the kept pairs once, and run
`online.steps_per_round` updates of any DPO-family objective on them. The reference is the
initial policy (`online.reference="initial"`) or the previous round's policy ("previous",
iterative DPO). Checkpoints land on round boundaries, so a resumed run regenerates the
interrupted round's pairs from the same weights and reproduces the uninterrupted run.
"""
from __future__ import annotations

import os

import jax
import jax.numpy as jnp
import numpy as np

from rewardlab.data import make_task, prompt_batch
from rewardlab.data.batching import epoch_batch_indices
from rewardlab.data.preference import PairBatch, PreferencePair, gold_reward, pair_batch
from rewardlab.objectives.preference import REFERENCE_FREE
from rewardlab.rewards.judge import judge_from_config
from rewardlab.rewards.self_rewards import auc
from rewardlab.sampling import SamplingParams, make_sample_fn
from rewardlab.sharding import batch_sharding, make_mesh, shard_batch
from rewardlab.train import sft
from rewardlab.train.checkpoint import Checkpointer
from rewardlab.train.loop import fit
from rewardlab.train.metrics import MetricWriter, read_metrics
from rewardlab.train.optim import make_optimizer
from rewardlab.train.policy import build_policy
from rewardlab.train.preference import make_gold_evaluator, make_preference_loss_fn, reference_logps
from rewardlab.train.state import create_train_state, shardings_of
from rewardlab.train.step import make_update_step


def make_ranker(config, mesh, policy):
  """(current params, prompts, completions, problems) -> scores [N]: the gold reward, a
  trained RM, or the policy itself as a generative judge ("self_judge": self-rewarding)."""
  oc = config.online
  if oc.ranker == "gold":
    return lambda params, prompts, texts, problems: np.array(
        [gold_reward(t, p.answer) for t, p in zip(texts, problems)], np.float32)
  if oc.ranker == "self_judge":
    judge = judge_from_config(config, policy, mesh)
    return lambda params, prompts, texts, problems: judge.score(params, prompts, texts)
  from rewardlab.rewards.reward_model import RewardModelScorer
  scorer = RewardModelScorer(oc.ranker, mesh)
  return lambda params, prompts, texts, problems: scorer.score(prompts, texts, group_size=oc.samples_per_prompt)


def win_prob_in_group(scores: np.ndarray, i: int) -> float:
  """P(y_i > pi) estimated against the other members of its group (ties count 1/2)."""
  others = np.delete(scores, i)
  return float(np.mean((scores[i] > others) + 0.5 * (scores[i] == others)))


def kendall_tau(a: np.ndarray, b: np.ndarray) -> float:
  """Rank agreement of two score vectors: (concordant - discordant) / pairs; ties count 0."""
  i, j = np.triu_indices(len(a), 1)
  return float(np.mean(np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])))


def best_vs_worst(prompts, texts, scores, n: int, min_margin: float, fits, older=None,
                  consistency=None) -> tuple[list, dict]:
  """Pairs each group's highest-scored completion with its lowest. Skips (and counts)
  groups whose gap is below min_margin, whose best and worst texts are equal, or that do
  not fit the context (`fits(prompt, completion)`).

  older: (texts, scores) of an older model's samples for the same prompts (temporal
  self-rewarding: the rejected is the older model's worst). consistency [G]: each group's
  judge agreement C in [0, 1] with the previous round (CREAM: pair smoothing 1 - C)."""
  pairs, skipped = [], {"small_margin": 0, "identical": 0, "too_long": 0}
  old_texts, old_scores = older if older is not None else (texts, scores)
  for g in range(len(prompts) // n):
    s, s_old = scores[g * n:(g + 1) * n], old_scores[g * n:(g + 1) * n]
    hi, lo = int(np.argmax(s)), int(np.argmin(s_old))
    chosen, rejected, prompt = texts[g * n + hi], old_texts[g * n + lo], prompts[g * n]
    if s[hi] - s_old[lo] < min_margin or (older is None and hi == lo):
      skipped["small_margin"] += 1
    elif chosen == rejected:
      skipped["identical"] += 1
    elif not (fits(prompt, chosen) and fits(prompt, rejected)):
      skipped["too_long"] += 1
    else:
      pairs.append(PreferencePair(prompt, chosen, rejected, float(s[hi] - s_old[lo]), "on_policy",
                                  win_probs=(win_prob_in_group(s, hi), win_prob_in_group(s_old, lo)),
                                  smoothing=0.0 if consistency is None else 1.0 - float(consistency[g])))
  return pairs, skipped


def run(config, workdir: str | None = None, stop_at_step: int | None = None) -> dict:
  workdir = workdir or config.workdir
  mesh = make_mesh(dict(config.mesh))
  dc, tc, oc = config.data, config.train, config.online
  spr = oc.steps_per_round
  if tc.steps % spr:
    raise ValueError(f"config.train.steps={tc.steps} is not a whole number of rounds of "
                     f"online.steps_per_round={spr}")
  task = make_task(dc.task, **dc.task_kwargs)
  warm = sft.warm_start(config, workdir)
  policy = build_policy(config, mesh)
  if warm is not None:
    policy.params = warm[0]
  tok = policy.tokenizer
  initial = jax.tree.map(jnp.copy, policy.full_params())
  optimizer, schedule = make_optimizer(config.optim, tc.steps)
  state = create_train_state(policy.params, optimizer, mesh, config.seed, frozen={"base": policy.frozen})
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), spr, max(tc.keep_checkpoints, 2))
  previous = None   # CREAM: the previous round's judge (its round-start params)
  if ckpt.latest_step() is not None:
    state = ckpt.restore(state)
    if oc.get("cream") and int(state.step) == spr:     # round 0 started from the initial policy
      previous = jax.tree.map(jnp.copy, initial)
    elif oc.get("cream") and int(state.step) > spr:
      prev_state = ckpt.restore(state, step=int(state.step) - spr)
      previous = jax.tree.map(jnp.copy, policy.full_params(prev_state.params, prev_state.frozen["base"]))
  ckpt.close()
  merge = None if policy.merge is None else (lambda p, f: policy.merge(p, f["base"]))
  loss_fn = make_preference_loss_fn(config.objective, tc.logprob_chunk, per_pair_smoothing=bool(oc.get("cream")))
  sample = make_sample_fn(policy.graphdef, SamplingParams(
      oc.max_new_tokens, n=oc.samples_per_prompt, temperature=oc.temperature,
      stop_ids=(tok.eos_id,)), tok.pad_id, mesh)
  # one jitted update step for every round (its shapes do not change between rounds)
  step_fn = make_update_step(policy.graphdef, loss_fn, optimizer, schedule, shardings_of(state),
                             batch_sharding(mesh), merge=merge)
  rank = make_ranker(config, mesh, policy)
  evaluate = make_gold_evaluator(config, policy, initial, mesh)
  n = oc.samples_per_prompt
  fits = lambda p, c: len(tok.encode(p, bos=True)) + len(tok.encode(c, eos=True)) <= dc.seq_len  # noqa: E731
  summary, rounds = None, []
  writer = MetricWriter(workdir, tensorboard=False)
  logged = {r["step"] for r in read_metrics(workdir) if r["split"] == "round"} if os.path.exists(
      os.path.join(workdir, "metrics.jsonl")) else set()

  for r in range(int(state.step) // spr, tc.steps // spr):
    params = policy.full_params(state.params, state.frozen["base"])
    # own buffers: the update step donates the state that `params` may alias
    round_start = jax.tree.map(jnp.copy, params) if oc.get("cream") else None
    ref = initial if oc.reference == "initial" else jax.tree.map(jnp.copy, params)
    problems = task.sample_many(np.random.default_rng([config.seed, 31, r]), oc.prompts_per_round)
    pb = prompt_batch([p.prompt for p in problems], tok, config.eval.max_prompt_len)
    key = jax.random.fold_in(jax.random.PRNGKey(config.seed + 17), r)
    out = jax.device_get(sample(params, *shard_batch((pb.tokens, pb.valid), mesh), key))
    texts = tok.decode_batch(out.tokens)
    expanded = [p for p in problems for _ in range(n)]
    prompts = [p.prompt for p in expanded]
    scores = np.asarray(rank(params, prompts, texts, expanded))
    older, consistency, extra = None, None, {}
    if oc.get("temporal"):   # rejected from the initial (older) model's samples, judged now
      old = jax.device_get(sample(initial, *shard_batch((pb.tokens, pb.valid), mesh), jax.random.fold_in(key, 1)))
      old_texts = tok.decode_batch(old.tokens)
      older = (old_texts, np.asarray(rank(params, prompts, old_texts, expanded)))
    if oc.get("cream"):      # agreement of this round's and the previous round's judge
      if previous is None:
        consistency = np.ones(len(problems))
      else:
        prev_scores = np.asarray(rank(previous, prompts, texts, expanded))
        consistency = np.array([(kendall_tau(scores[g * n:(g + 1) * n], prev_scores[g * n:(g + 1) * n]) + 1) / 2
                                for g in range(len(problems))])
      extra["judge_consistency"] = float(consistency.mean())
    pairs, skipped = best_vs_worst(prompts, texts, scores, n, oc.min_margin, fits, older, consistency)
    correct = [task.verify(t, p.answer) for t, p in zip(texts, expanded)]
    stats = {"pairs_kept": len(pairs), **{f"skipped_{k}": v for k, v in skipped.items()},
             "ranker_score_mean": float(scores.mean()), "accuracy": float(np.mean(correct)),
             "pair_margin_mean": float(np.mean([p.margin for p in pairs])) if pairs else 0.0,
             "gold_mean": float(np.mean([gold_reward(t, p.answer) for t, p in zip(texts, expanded)])),
             # how well the ranker (e.g. the model judging itself) separates right from wrong
             "ranker_auc": auc(scores, correct), **extra}
    if len(pairs) < dc.batch_size:
      raise ValueError(f"online round {r}: only {len(pairs)} pairs kept (skipped {skipped}), fewer than "
                       f"data.batch_size={dc.batch_size}; raise online.prompts_per_round or lower "
                       "online.min_margin")
    if config.objective.name in REFERENCE_FREE:
      ref_cache = np.zeros((len(pairs), 2), np.float32)
    else:
      ref_cache = reference_logps(policy.graphdef, ref, pairs, tok, dc.seq_len, dc.batch_size, mesh,
                                  tc.logprob_chunk)
    if r * spr not in logged:
      writer.write(r * spr, stats, split="round")
    rounds.append(dict(stats, round=r))

    def batch_at(i: int, pairs=pairs, ref_cache=ref_cache) -> PairBatch:
      idx = epoch_batch_indices([config.seed, i // spr], i % spr, len(pairs), dc.batch_size)
      return pair_batch([pairs[j] for j in idx], tok, dc.seq_len,
                        np.concatenate([ref_cache[idx, 0], ref_cache[idx, 1]]))

    round_config = config.copy_and_resolve_references()
    round_config.train.steps = (r + 1) * spr
    round_config.train.checkpoint_every = spr
    end = (r + 1) * spr
    eval_now = tc.eval_every > 0 and (r == 0 or end % tc.eval_every == 0 or end == tc.steps)
    summary = fit(round_config, workdir, mesh, policy.graphdef, state, loss_fn, optimizer, schedule,
                  batch_at, evaluate if eval_now else None, stop_at_step=stop_at_step, step_fn=step_fn,
                  plot_panels=(("train", "loss"), ("train", "reward_accuracy"), ("eval", "gold_reward"),
                               ("eval", "win_rate_vs_ref"), ("eval", "kl_to_ref")))
    state = summary["state"]
    previous = round_start
    if stop_at_step is not None and int(state.step) >= stop_at_step:
      break
  writer.close()
  if summary is None:   # already finished: report what the workdir holds
    summary = {"state": state, "evals": [r for r in read_metrics(workdir) if r["split"] == "eval"]}
  summary["rounds"] = rounds
  summary["records"] = read_metrics(workdir)
  return summary
