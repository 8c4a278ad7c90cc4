"""A trained reward model as an online reward (RL, best-of-n).

`RewardModelScorer(folder)` loads either an exported rewardlab RM (`<rm workdir>/reward_model`:
params + rm.json; any head, ensembles with their configured aggregation) or a local HF
`*ForSequenceClassification` folder (scalar head). `scorer.score(prompts, completions,
group_size)` -> float32 [N]; general-preference heads score each completion by its mean
win probability inside its group of `group_size` consecutive completions.
`rm_reward(scorer, group_size)` adapts it to the REWARDS signature
`fn(completions, problems, lengths) -> [B]`.
"""
from __future__ import annotations

import json
import os
from typing import Sequence

import jax
import numpy as np
import orbax.checkpoint as ocp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from rewardlab.data import load_tokenizer
from rewardlab.distributed import to_host
from rewardlab.models import hf as hf_io
from rewardlab.models.config import ModelConfig
from rewardlab.models.reward_model import HeadConfig, RewardModel, response_scores
from rewardlab.sharding import LOGICAL_RULES, make_mesh, named, param_specs, shard_batch


class RewardModelScorer:
  def __init__(self, folder: str, mesh=None, batch_size: int = 64, seq_len: int | None = None):
    self.mesh = mesh if mesh is not None else make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    self.batch_size = batch_size
    if os.path.exists(os.path.join(folder, "rm.json")):
      self._load_rewardlab(folder)
    elif os.path.exists(os.path.join(folder, "config.json")):
      self._load_hf(folder)
    else:
      raise FileNotFoundError(f"{folder}: neither rm.json (a rewardlab RM export) nor config.json "
                              "(a HF sequence-classification folder)")
    self.seq_len = seq_len or self.seq_len
    graphdef, hc = self.graphdef, self.head

    def forward(params, tokens, valid, start, group_size):
      return response_scores(hc, nnx.merge(graphdef, params)(tokens, valid, start), group_size)
    self._forward = jax.jit(forward, static_argnums=4)

  def _load_rewardlab(self, folder):
    with open(os.path.join(folder, "rm.json")) as f:
      meta = json.load(f)
    self.model_cfg = ModelConfig.from_mapping(meta["model"])
    self.head = HeadConfig.from_mapping(meta["head"])
    self.tokenizer = load_tokenizer(meta.get("tokenizer_path") or None)
    self.seq_len = meta["seq_len"]
    abstract = nnx.eval_shape(lambda: RewardModel(self.model_cfg, self.head, rngs=nnx.Rngs(0)))
    self.graphdef, state = nnx.split(abstract, nnx.Param)
    shardings = named(self.mesh, param_specs(state, self.mesh, LOGICAL_RULES))
    target = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          nnx.to_pure_dict(state), shardings)
    with ocp.StandardCheckpointer() as ckptr:
      self.params = ckptr.restore(os.path.abspath(os.path.join(folder, "params")), target)

  def _load_hf(self, folder):
    _, cfg, _, trunk, _, head = hf_io.load_hf_reward_model(folder, self.mesh)
    if head["kernel"].shape[-1] != 1:
      raise ValueError(f"{folder}: {head['kernel'].shape[-1]} labels; a reward model needs 1")
    self.model_cfg, self.head = cfg, HeadConfig("scalar")
    self.tokenizer = load_tokenizer(folder)
    self.seq_len = cfg.max_seq_len
    abstract = nnx.eval_shape(lambda: RewardModel(cfg, self.head, rngs=nnx.Rngs(0)))
    self.graphdef, state = nnx.split(abstract, nnx.Param)
    params = nnx.to_pure_dict(state)
    params["trunks"][0] = trunk
    # HF's score layer has no bias: a zero one, replicated (the kernel's 2-D sharding does not fit it)
    params["heads"][0] = {"kernel": head["kernel"],
                          "bias": jax.device_put(np.zeros((1,), np.float32), NamedSharding(self.mesh, P()))}
    self.params = params

  def score(self, prompts: Sequence[str], completions: Sequence[str], group_size: int = 1) -> np.ndarray:
    """Scores prompt+completion pairs in fixed-size batches -> float32 [N]."""
    if len(prompts) != len(completions):
      raise ValueError(f"score: {len(prompts)} prompts for {len(completions)} completions")
    bs = max(self.batch_size // group_size, 1) * group_size
    if len(completions) % group_size:
      raise ValueError(f"score: {len(completions)} completions are not whole groups of {group_size}")
    n_dev = self.mesh.devices.size
    bs = -(-bs // (n_dev * group_size)) * n_dev * group_size   # divisible by devices and groups
    out = []
    self.truncated = 0
    for s in range(0, len(completions), bs):
      rows = list(zip(prompts[s:s + bs], completions[s:s + bs]))
      n = len(rows)
      tokens, valid, start = self._encode(rows + [rows[-1]] * (bs - n), s, n)
      scores = self._forward(self.params, *shard_batch((tokens, valid, start), self.mesh), group_size)
      out.append(np.asarray(to_host(scores))[:n])
    return np.concatenate(out).astype(np.float32)

  def _encode(self, rows, offset: int, n_real: int):
    """`BOS prompt completion EOS`, right-padded to seq_len. A completion too long to fit
    is cut (keeping its EOS) and counted in `self.truncated`; a prompt that alone does not
    fit is an error."""
    tok, t = self.tokenizer, self.seq_len
    tokens = np.full((len(rows), t), tok.pad_id, np.int32)
    valid = np.zeros((len(rows), t), bool)
    start = np.zeros((len(rows),), np.int32)
    for i, (prompt, completion) in enumerate(rows):
      p, c = tok.encode(prompt, bos=True), tok.encode(completion, eos=True)
      if len(p) >= t:
        raise ValueError(f"score: prompt {offset + i} ({prompt[:40]!r}) has {len(p)} tokens; the "
                         f"reward model's seq_len is {t}")
      if len(p) + len(c) > t:
        c = c[:t - len(p) - 1] + c[-1:]
        self.truncated += int(i < n_real)
      ids = p + c
      tokens[i, :len(ids)], valid[i, :len(ids)], start[i] = ids, True, len(p)
    return tokens, valid, start


def rm_reward(scorer: RewardModelScorer, group_size: int = 1):
  """REWARDS-signature adapter: fn(completions, problems, lengths) -> [B]."""
  def reward(completions, problems, lengths=None):
    return scorer.score([p.prompt for p in problems], list(completions), group_size)
  return reward
