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

In the shared loop a round is the source's work at every `steps_per_round`-th step; its
statistics are logged under split "round" at the round's first update.
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from rewardlab.data import Task, make_task, prompt_batch
from rewardlab.data.preference import PreferencePair, gold_reward
from rewardlab.distributed import to_host
from rewardlab.objectives.preference import REFERENCE_FREE
from rewardlab.pipelines import sft
from rewardlab.pipelines.preference import GOLD_PANELS, make_gold_evaluator, make_preference_loss_fn, pair_batches, \
    reference_logps
from rewardlab.rewards.judge import make_judge
from rewardlab.rewards.self_rewards import auc
from rewardlab.sampling import SamplingParams, make_sample_fn
from rewardlab.sharding import shard_batch
from rewardlab.pipelines.common import Built, runner
from rewardlab.train.loop import LoopSettings, Pipeline, StepInputs, begin_run
from rewardlab.train.optim import make_optimizer
from rewardlab.train.policy import Policy
from rewardlab.train.state import TrainState, create_train_state


def make_ranker(online_cfg, judge_cfg, policy: Policy, mesh, batch_size: int):
  """(current params, prompts, completions, problems) -> scores [N]: the gold reward, a
  trained RM (`online.ranker` a folder), or the policy itself as a generative judge
  ("self_judge": self-rewarding, configured by config.judge)."""
  oc = online_cfg
  if oc.ranker == "gold":
    return lambda params, prompts, texts, problems: np.array(
        [gold_reward(t, p.answer) for t, p in zip(texts, problems)], np.float32)
  if oc.ranker == "self_judge":
    judge = make_judge(judge_cfg, policy.graphdef, policy.tokenizer, mesh, batch_size)
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


@dataclasses.dataclass(frozen=True)
class RoundSettings:
  """One online round (config.online, plus the pair batches' data.seq_len / batch_size)."""
  seed: int
  prompts_per_round: int
  samples_per_prompt: int
  steps_per_round: int
  min_margin: float
  max_prompt_len: int
  seq_len: int
  batch_size: int
  logprob_chunk: int
  reference: str = "initial"     # "initial" | "previous" (iterative DPO)
  temporal: bool = False         # rejected from the initial model's samples
  cream: bool = False            # smooth each pair by the judge's agreement with last round's
  reference_free: bool = False   # the objective needs no reference log-probs

  @classmethod
  def from_config(cls, config) -> "RoundSettings":
    oc, dc = config.online, config.data
    return cls(config.seed, oc.prompts_per_round, oc.samples_per_prompt, oc.steps_per_round, oc.min_margin,
               config.eval.max_prompt_len, dc.seq_len, dc.batch_size, config.train.logprob_chunk,
               oc.reference, bool(oc.get("temporal")), bool(oc.get("cream")),
               config.objective.name in REFERENCE_FREE)


class RoundSource:
  """The loop's source: at each round's first step, sample on-policy pairs from the current
  policy and cache their reference log-probs; every step, a batch of the round's pairs.
  `rounds` collects each round's statistics. With CREAM the previous round's starting model
  is kept in `state.frozen["previous"]`, so a resumed run judges with the same one."""

  def __init__(self, rs: RoundSettings, policy: Policy, task: Task, mesh, rank, sample, initial):
    self.rs, self.policy, self.task, self.mesh = rs, policy, task, mesh
    self.rank, self.sample, self.initial = rank, sample, initial
    self.rounds, self.current = [], {}   # round stats; round index -> batch_at of its pairs

  def __call__(self, i: int, state: TrainState):
    spr = self.rs.steps_per_round
    r, records = i // spr, {}
    if r not in self.current:
      if i % spr:
        raise RuntimeError(f"online round {r} entered at step {i}, not at its start ({r * spr}): "
                           "checkpoints must land on round boundaries")
      state, batch_at, stats = self.new_round(r, state)
      self.current = {r: batch_at}
      self.rounds.append(dict(stats, round=r))
      records = {"round": stats}
    batch = self.current[r](i % spr)
    return state, StepInputs([batch], tokens=int(np.sum(batch.valid)), records=records)

  def new_round(self, r: int, state: TrainState):
    """-> (state, batch_at of the round's pairs, round statistics)."""
    rs, tok, n = self.rs, self.policy.tokenizer, self.rs.samples_per_prompt
    params = self.policy.full_params(state.params, state.frozen["base"])
    problems = self.task.sample_many(np.random.default_rng([rs.seed, 31, r]), rs.prompts_per_round)
    pb = prompt_batch([p.prompt for p in problems], tok, rs.max_prompt_len)
    key = jax.random.fold_in(jax.random.PRNGKey(rs.seed + 17), r)
    texts = self.completions(params, pb, key)
    expanded = [p for p in problems for _ in range(n)]
    prompts = [p.prompt for p in expanded]
    scores = np.asarray(self.rank(params, prompts, texts, expanded))
    older, consistency, extra = None, None, {}
    if rs.temporal:   # rejected from the initial (older) model's samples, judged now
      old_texts = self.completions(self.initial, pb, jax.random.fold_in(key, 1))
      older = (old_texts, np.asarray(self.rank(params, prompts, old_texts, expanded)))
    if rs.cream:      # agreement of this round's and the previous round's judge
      consistency = self.judge_consistency(state, r, prompts, texts, expanded, scores)
      extra["judge_consistency"] = float(consistency.mean())
      # own buffers: the update step donates the state that `params` may alias
      state = state.replace(frozen=dict(state.frozen, previous=jax.tree.map(jnp.copy, params)))
    fits = lambda p, c: len(tok.encode(p, bos=True)) + len(tok.encode(c, eos=True)) <= rs.seq_len  # noqa: E731
    pairs, skipped = best_vs_worst(prompts, texts, scores, n, rs.min_margin, fits, older, consistency)
    correct = [self.task.verify(t, p.answer) for t, p in zip(texts, expanded)]
    stats = {"pairs_kept": len(pairs), **{f"skipped_{k}": v for k, v in skipped.items()},
             "ranker_score_mean": float(scores.mean()), "accuracy": float(np.mean(correct)),
             "pair_margin_mean": float(np.mean([p.margin for p in pairs])) if pairs else 0.0,
             "gold_mean": float(np.mean([gold_reward(t, p.answer) for t, p in zip(texts, expanded)])),
             # how well the ranker (e.g. the model judging itself) separates right from wrong
             "ranker_auc": auc(scores, correct), **extra}
    if len(pairs) < rs.batch_size:
      raise ValueError(f"online round {r}: only {len(pairs)} pairs kept (skipped {skipped}), fewer than "
                       f"data.batch_size={rs.batch_size}; raise online.prompts_per_round or lower "
                       "online.min_margin")
    ref = self.initial if rs.reference == "initial" else params
    ref_cache = (np.zeros((len(pairs), 2), np.float32) if rs.reference_free else
                 reference_logps(self.policy.graphdef, ref, pairs, tok, rs.seq_len, rs.batch_size, self.mesh,
                                 rs.logprob_chunk))
    return state, pair_batches(pairs, ref_cache, tok, rs.seq_len, rs.batch_size, [rs.seed, r]), stats

  def completions(self, params, pb, key) -> list[str]:
    out = to_host(self.sample(params, *shard_batch((pb.tokens, pb.valid), self.mesh), key))
    return self.policy.tokenizer.decode_batch(out.tokens)

  def judge_consistency(self, state, r: int, prompts, texts, expanded, scores) -> np.ndarray:
    """CREAM's C per group in [0, 1]: (Kendall tau between this round's and the previous
    round's judge scores + 1) / 2; 1 in round 0."""
    n = self.rs.samples_per_prompt
    if r == 0:
      return np.ones(len(scores) // n)
    prev = np.asarray(self.rank(state.frozen["previous"], prompts, texts, expanded))
    return np.array([(kendall_tau(scores[g * n:(g + 1) * n], prev[g * n:(g + 1) * n]) + 1) / 2
                     for g in range(len(scores) // n)])


def build(config, workdir: str | None = None) -> Built:
  """Runs (or restores) the SFT warm-up and returns the round-based pipeline."""
  workdir, mesh = begin_run(config, workdir)
  dc, tc, oc = config.data, config.train, config.online
  rs = RoundSettings.from_config(config)
  if tc.steps % rs.steps_per_round:
    raise ValueError(f"config.train.steps={tc.steps} is not a whole number of rounds of "
                     f"online.steps_per_round={rs.steps_per_round}")
  task = make_task(dc.task, **dc.task_kwargs)
  policy, initial, _ = sft.warm_policy(config, workdir, mesh)
  tok = policy.tokenizer
  optimizer, schedule = make_optimizer(config.optim, tc.steps)
  frozen = {"base": policy.frozen}
  if rs.cream:   # the previous round's starting model (a placeholder until round 1)
    frozen["previous"] = jax.tree.map(jnp.copy, initial)
  state = create_train_state(policy.params, optimizer, mesh, config.seed, frozen=frozen)
  merge = None if policy.merge is None else (lambda p, f: policy.merge(p, f["base"]))
  loss_fn = make_preference_loss_fn(config.objective, tc.logprob_chunk, per_pair_smoothing=rs.cream)
  sample = make_sample_fn(policy.graphdef, SamplingParams(
      oc.max_new_tokens, n=rs.samples_per_prompt, temperature=oc.temperature,
      stop_ids=(tok.eos_id,)), tok.pad_id, mesh)
  rank = make_ranker(oc, config.get("judge"), policy, mesh, config.eval.batch_size)
  source = RoundSource(rs, policy, task, mesh, rank, sample, initial)
  pipeline = Pipeline(policy.graphdef, state, loss_fn, optimizer, schedule, source,
                      make_gold_evaluator(config.eval, task, policy, initial, mesh), merge=merge,
                      plot_panels=GOLD_PANELS[:1] + (("train", "reward_accuracy"),) + GOLD_PANELS[2:])
  # checkpoints on round boundaries only: a round's pairs are remade from its starting state
  settings = LoopSettings.from_config(tc, checkpoint_every=rs.steps_per_round)
  return Built(pipeline, mesh, settings, lambda summary: dict(summary, rounds=source.rounds))


run = runner(build)
