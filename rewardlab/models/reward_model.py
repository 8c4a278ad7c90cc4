"""A reward model: the policy trunk (Transformer) + one of the heads in heads.py.

`RewardModel(tokens, valid, completion_start)` returns a dict of head outputs; every head
but the general-preference one also returns a scalar `reward` [N] per response, so any RM
can score completions online. `pair_logit` turns the outputs of pair-major rows (chosen 0,
rejected 0, chosen 1, ...) into the logit of P(chosen > rejected) for every head type.

Head types (HeadConfig.type):
  scalar    r = w.h_last + b                                            (A1)
  ensemble  K scalar members on one trunk, or K independent trunks;
            reward = mean / min / mean - lam var across members          (A2)
  gated     k attribute regressions mixed by a prompt-conditioned gate   (A3)
  ordinal   logits over K levels, reward = E[level]                      (A4)
  general   embedding v in R^{2k}, s(a, b) = v_a^T R v_b (no per-response reward) (A5)
  process   step scores at separator tokens, reward = min/last/product   (A7)
"""
from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from rewardlab.data.preference import split_pair_rows
from rewardlab.models import heads as H
from rewardlab.models.config import ModelConfig
from rewardlab.models.transformer import Transformer
from rewardlab.objectives.reward_model import ordinal_pair_prob

HEAD_TYPES = ("scalar", "ensemble", "gated", "ordinal", "general", "process")


@dataclasses.dataclass(frozen=True)
class HeadConfig:
  type: str = "scalar"
  num_members: int = 4               # ensemble: K
  independent_trunks: bool = False   # ensemble: K trunks (own init) instead of K heads on one
  aggregation: str = "mean"          # ensemble: mean | min | uwo
  uwo_lambda: float = 1.0
  num_attributes: int = 3            # gated
  gate_hidden: int = 64
  levels: int = 5                    # ordinal
  embed_dim: int = 8                 # general: 2k
  sep_id: int = -1                   # process: the step-separator token id
  max_steps: int = 8
  step_aggregation: str = "min"      # process: min | last | product

  def __post_init__(self):
    if self.type not in HEAD_TYPES:
      raise ValueError(f"head.type={self.type!r}; allowed: {list(HEAD_TYPES)}")
    if self.aggregation not in H.ENSEMBLE_AGGREGATIONS:
      raise ValueError(f"head.aggregation={self.aggregation!r}; allowed: {sorted(H.ENSEMBLE_AGGREGATIONS)}")
    if self.step_aggregation not in ("min", "last", "product"):
      raise ValueError(f"head.step_aggregation={self.step_aggregation!r}; allowed: min, last, product")
    if self.type == "ensemble" and self.num_members < 2:
      raise ValueError(f"head.num_members={self.num_members}: an ensemble needs >= 2")
    if self.independent_trunks and self.type != "ensemble":
      raise ValueError("head.independent_trunks: only the ensemble head has several trunks")
    if self.type == "process" and self.sep_id < 0:
      raise ValueError("head.sep_id: the process head needs the step-separator token id")

  @property
  def num_trunks(self) -> int:
    return self.num_members if self.independent_trunks else 1

  @classmethod
  def from_mapping(cls, m) -> "HeadConfig":
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(m) - fields)
    if unknown:
      raise ValueError(f"head: unknown fields {unknown}; allowed: {sorted(fields)}")
    return cls(**dict(m))


def _make_head(d: int, hc: HeadConfig, rngs, dtype):
  if hc.type == "scalar":
    return H.ScalarHead(d, 1, rngs=rngs, param_dtype=dtype)
  if hc.type == "ensemble":
    return H.ScalarHead(d, 1 if hc.independent_trunks else hc.num_members, rngs=rngs, param_dtype=dtype)
  if hc.type == "gated":
    return H.GatedAttributeHead(d, hc.num_attributes, hc.gate_hidden, rngs=rngs, param_dtype=dtype)
  if hc.type == "ordinal":
    return H.OrdinalHead(d, hc.levels, rngs=rngs, param_dtype=dtype)
  if hc.type == "general":
    return H.PreferenceEmbeddingHead(d, hc.embed_dim, rngs=rngs, param_dtype=dtype)
  return H.ProcessHead(d, rngs=rngs, param_dtype=dtype)


class RewardModel(nnx.Module):
  """Trunk(s) + head. Params (pure dict): {"trunks": {0: transformer, ...}, "heads": {0: ...}}."""

  def __init__(self, cfg: ModelConfig, head: HeadConfig, *, rngs: nnx.Rngs):
    self.cfg, self.head_cfg = cfg, head
    self.trunks = nnx.List([Transformer(cfg, rngs=rngs) for _ in range(head.num_trunks)])
    self.heads = nnx.List([_make_head(cfg.d_model, head, rngs, cfg.jnp_param_dtype)
                           for _ in range(head.num_trunks)])

  def __call__(self, tokens, valid, completion_start) -> dict:
    """tokens/valid [N, T] (right-padded `BOS prompt completion EOS`), completion_start [N]
    (index of the first completion token) -> head outputs, each [N, ...] float32."""
    hc = self.head_cfg
    hiddens = [trunk.hidden_states(tokens, valid=valid)[0] for trunk in self.trunks]
    hidden, head = hiddens[0], self.heads[0]
    if hc.type == "scalar":
      return {"reward": head(hidden, valid)[:, 0]}
    if hc.type == "ensemble":
      members = jnp.concatenate([h(x, valid) for h, x in zip(self.heads, hiddens)], -1)
      agg = H.ENSEMBLE_AGGREGATIONS[hc.aggregation]
      return {"members": members, "reward": agg(members, hc.uwo_lambda)}
    if hc.type == "gated":
      attrs, gate = head(hidden, valid, jnp.maximum(completion_start - 1, 0))
      return {"attributes": attrs, "gate": gate, "reward": jnp.sum(attrs * gate, -1)}
    if hc.type == "ordinal":
      logits = head(hidden, valid)
      return {"level_logits": logits, "reward": H.expected_level(logits)}
    if hc.type == "general":
      return {"embedding": head(hidden, valid)}
    positions, step_mask = H.separator_positions(tokens, valid, completion_start, hc.sep_id, hc.max_steps)
    step_logits = head(hidden, positions)
    return {"step_logits": step_logits, "step_mask": step_mask,
            "reward": H.aggregate_steps(step_logits, step_mask, hc.step_aggregation)}


def split_pairs(outputs: dict) -> tuple[dict, dict]:
  """Outputs of 2B pair-major rows (chosen 0, rejected 0, chosen 1, ...: data.preference.pair_rows)
  -> (chosen [B, ...], rejected [B, ...])."""
  return (jax.tree.map(lambda x: split_pair_rows(x)[0], outputs),
          jax.tree.map(lambda x: split_pair_rows(x)[1], outputs))


def pair_logit(head: HeadConfig, outputs: dict) -> jax.Array:
  """Logit of P(chosen > rejected) [B] from the outputs of pair-major (chosen, rejected) rows."""
  c, r = split_pairs(outputs)
  if head.type == "general":
    return H.general_preference_score(c["embedding"], r["embedding"])
  if head.type == "ordinal":
    p = jnp.clip(ordinal_pair_prob(c["level_logits"], r["level_logits"]), 1e-6, 1 - 1e-6)
    return jnp.log(p) - jnp.log1p(-p)
  if head.type == "process" and head.step_aggregation != "product":
    p_c, p_r = (jnp.clip(x["reward"], 1e-6, 1 - 1e-6) for x in (c, r))
    return (jnp.log(p_c) - jnp.log1p(-p_c)) - (jnp.log(p_r) - jnp.log1p(-p_r))
  return c["reward"] - r["reward"]


def response_scores(head: HeadConfig, outputs: dict, group_size: int) -> jax.Array:
  """A scalar score per response [N] for ranking/best-of-n. The general-preference head has
  none of its own: a response scores its mean win probability against the rest of its
  group of `group_size` consecutive rows (a round robin, linear in responses per pair)."""
  if head.type != "general":
    return outputs["reward"]
  v = outputs["embedding"]
  g = v.reshape(-1, group_size, v.shape[-1])
  s = H.general_preference_score(g[:, :, None, :], g[:, None, :, :])     # [G, n, n]
  p = jax.nn.sigmoid(s) * (1.0 - jnp.eye(group_size))
  return (jnp.sum(p, -1) / max(group_size - 1, 1)).reshape(-1)
