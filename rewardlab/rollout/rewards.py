"""Rewards of a rollout's completions, by name (`config.rl.rewards`: name -> weight).

Every entry of `REWARD_BUILDERS` turns the run's `RewardContext` into a function of one
round's `Completions` -> float32 [B]: the rule-based `rewardlab.rewards.REWARDS`
(verifiers, format, length), the label-free rewards (majority vote within a group,
self-certainty from the sampler's own log-probs) and a trained reward model.
"""
from __future__ import annotations

import dataclasses
from typing import Callable, Mapping, NamedTuple, Sequence

import numpy as np

from rewardlab.data import Problem
from rewardlab.rewards import REWARDS
from rewardlab.rewards.self_rewards import majority_vote_reward, self_certainty
from rewardlab.rewards.verifiers import RewardFn


class Completions(NamedTuple):
  """One round's completions as rewards see them; B = prompts x group size, prompt-major.

  texts/problems: B decoded completions and the problem each answers
  lengths: [B] generated tokens; mask/vocab_mean_logp: [B, N] the sampler's outputs
  """
  texts: Sequence[str]
  problems: Sequence[Problem]
  lengths: np.ndarray
  mask: np.ndarray
  vocab_mean_logp: np.ndarray


RolloutReward = Callable[[Completions], np.ndarray]


@dataclasses.dataclass(frozen=True)
class RewardContext:
  """What reward builders may need from the run."""
  group_size: int
  vocab_size: int
  reward_model_path: str = ""     # a trained RM (rewardlab export or HF seq-cls folder)
  mesh: object = None


def _rule(fn: RewardFn) -> Callable[[RewardContext], RolloutReward]:
  return lambda ctx: lambda c: fn(c.texts, c.problems, c.lengths)


def _reward_model(ctx: RewardContext) -> RolloutReward:
  if not ctx.reward_model_path:
    raise ValueError("rewards: 'reward_model' needs rl.reward_model_path (a trained RM folder)")
  from rewardlab.rewards.reward_model import RewardModelScorer, rm_reward
  reward = rm_reward(RewardModelScorer(ctx.reward_model_path, ctx.mesh), ctx.group_size)
  return lambda c: reward(c.texts, c.problems, c.lengths)


REWARD_BUILDERS: dict[str, Callable[[RewardContext], RolloutReward]] = {
    **{name: _rule(fn) for name, fn in REWARDS.items()},
    "majority_vote": lambda ctx: lambda c: majority_vote_reward(c.texts, ctx.group_size),
    "self_certainty": lambda ctx: lambda c: np.asarray(
        self_certainty(c.vocab_mean_logp, c.mask, ctx.vocab_size)),
}
REWARD_BUILDERS["reward_model"] = _reward_model


def build_rewards(names: Sequence[str], ctx: RewardContext) -> dict[str, RolloutReward]:
  """The named rewards, each built once per run."""
  unknown = sorted(set(names) - set(REWARD_BUILDERS))
  if unknown:
    raise ValueError(f"rewards: unknown {unknown}; allowed: {sorted(REWARD_BUILDERS)}")
  return {name: REWARD_BUILDERS[name](ctx) for name in names}


def score(completions: Completions, rewards: Mapping[str, RolloutReward],
          weights: Mapping[str, float]) -> tuple[np.ndarray, dict[str, np.ndarray]]:
  """-> (weighted sum [B] float32, each weighted reward's own values [B])."""
  parts = {name: np.asarray(rewards[name](completions), np.float32) for name in weights}
  total = sum(w * parts[name] for name, w in weights.items())
  return np.asarray(total, np.float32), parts
