"""Reward-model overoptimization on the synthetic arithmetic task (Gao et al. 2022 at CPU scale).

    python experiments/overoptimization.py --config configs/overoptimization.py[:tiny] \
        [--out runs/overoptimization] [--config.seeds="(0,1,2)"]

Per seed: one SFT policy (pipeline "sft", exported as a HF folder) is the base policy, the
initial RL policy and the reward models' trunk init. Proxy reward models (pipeline "rm",
scalar Bradley-Terry) are trained on N pairs of the SFT policy's own samples labelled by the
gold reward (`data.preference.gold_reward`; label noise flips a fraction; as Gao et al.) or
on `synthetic_rm_pairs` (`proxy.data`), `proxy.members` of them at one N (same pairs,
different init and order) for the ensembles, plus one trained with the spurious length
correlate (`length_bias`). The policy is then optimised against each proxy, and, as the
control, against the gold reward itself:

  best-of-n   K samples per held-out prompt from the SFT policy; the expected gold / proxy
              reward of best-of-n for n <= K (exact over all n-subsets), at
              KL = log n - (n-1)/n (the analytic value; an upper bound when samples repeat)
  RL          GRPO (pipeline "rl") with the proxy as the only weighted reward and the gold
              reward logged at weight 0 (`reward/gold`); KL(pi || pi_init) per iteration is
              the logged per-token k3 estimate times the mean response length (one on-policy
              minibatch per iteration, so this is the mean sequence-level KL of the batch)

Both against d = sqrt(KL). Gold gains over the SFT policy are fitted to d(alpha - beta d)
(best-of-n) and d(alpha - beta log d) (RL) per seed; the table gives t-intervals over seeds.
Mitigations at one N: ensembles (mean / WCO / UWO over members), log-sigmoid centring and
PAR (reference = the proxy's score of the SFT policy's greedy answer), KL penalty (GRPO
beta), and the length-controlled reward on the length-biased proxy. STARC distance
(`eval/starc.py`, canonicalised under the SFT policy's empirical response distribution on
the best-of-n prompts) between gold and every proxy, with its Spearman correlation to the
gold drop. Writes <out>/table.md, results.json, overoptimization.png.

Reward transforms and ensembles of several exported RMs have no hook in the RL pipeline
yet; they are registered as temporary rollout rewards (`rollout.REWARD_BUILDERS`) for the
duration of a run (`registered_rewards`).
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "configs"))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import ml_collections  # noqa: E402
import numpy as np  # noqa: E402

import grpo_arithmetic  # noqa: E402
import rm_synthetic  # noqa: E402
from rewardlab.data import load_tokenizer, make_task, prompt_batch  # noqa: E402
from rewardlab.data.preference import PreferencePair, gold_reward, synthetic_rm_pairs, verbose_suffix  # noqa: E402
from rewardlab.eval import best_of_n as bon  # noqa: E402
from rewardlab.eval import overoptimization as oo  # noqa: E402
from rewardlab.eval import starc  # noqa: E402
from rewardlab.eval.reward_model import spearman  # noqa: E402
from rewardlab.eval.tables import markdown_table  # noqa: E402
from rewardlab.models import hf as hf_io  # noqa: E402
from rewardlab.models.heads import ENSEMBLE_AGGREGATIONS  # noqa: E402
from rewardlab.rewards import REWARDS  # noqa: E402
from rewardlab.rewards import transforms as T  # noqa: E402
from rewardlab.rewards.reward_model import RewardModelScorer  # noqa: E402
from rewardlab.sampling import SamplingParams, make_sample_fn  # noqa: E402
from rewardlab.sharding import make_mesh, shard_batch  # noqa: E402
from rewardlab.pipelines import PIPELINES  # noqa: E402
from rewardlab.rollout import REWARD_BUILDERS  # noqa: E402

AGG = {"ensemble_mean": "mean", "ensemble_wco": "min", "ensemble_uwo": "uwo"}
ORACLE = "gold (oracle)"


# --- conditions: which reward the policy is optimised against ------------------------------

def mitigation_n(cfg) -> int:
  n = cfg.mitigation_num_pairs or min(cfg.proxy.num_pairs)
  if n not in cfg.proxy.num_pairs:
    raise ValueError(f"config.mitigation_num_pairs={n} is not one of proxy.num_pairs={tuple(cfg.proxy.num_pairs)}")
  return n


def _condition(name: str, n, baseline: str, beta: float, biased: bool = False, agg=None, transform=None,
               bon: bool = True) -> dict:
  return dict(name=name, n=n, baseline=baseline, beta=beta, biased=biased, agg=agg, transform=transform, bon=bon)


def conditions(cfg) -> list[dict]:
  """name, proxy set (N, length-biased?), aggregation over members, transform, GRPO beta,
  whether best-of-n applies (a KL penalty has no best-of-n counterpart), and the baseline
  a mitigation is compared with."""
  mit_n, beta = mitigation_n(cfg), cfg.rl.beta
  base = f"proxy N={mit_n}"
  # the control: optimising the gold reward itself (best-of-n: the oracle pick)
  out = [_condition(ORACLE, None, ORACLE, beta)]
  out += [_condition(f"proxy N={n}", n, f"proxy N={n}", beta) for n in cfg.proxy.num_pairs]
  for m in cfg.mitigations:
    if m in AGG:
      out.append(_condition(f"{m} N={mit_n}", mit_n, base, beta, agg=AGG[m]))
    elif m in T.TRANSFORMS:
      out.append(_condition(f"{m} N={mit_n}", mit_n, base, beta, transform=m))
    elif m == "kl":
      out += [_condition(f"kl beta={b} N={mit_n}", mit_n, base, b, bon=False) for b in cfg.rl.kl_betas]
    else:
      raise ValueError(f"config.mitigations: {m!r} is unknown; allowed: {sorted(AGG) + sorted(T.TRANSFORMS) + ['kl']}")
  if cfg.length_hacking:
    biased = f"length-biased N={mit_n}"
    out.append(_condition(biased, mit_n, biased, beta, biased=True))
    out.append(_condition(f"length-controlled N={mit_n}", mit_n, biased, beta, biased=True,
                          transform="length_controlled"))
  return out


def combine_members(cond: dict, member_scores: np.ndarray, ref: np.ndarray | None, lengths: np.ndarray,
                    group_size: int, uwo_lambda: float) -> np.ndarray:
  """member_scores [B, M] -> the condition's reward [B]: member 0 alone or the ensemble
  aggregation, then the transform (reference rewards `ref` [B], length control in groups)."""
  if cond["agg"] is None:
    r = member_scores[:, 0]
  else:
    r = np.asarray(ENSEMBLE_AGGREGATIONS[cond["agg"]](jnp.asarray(member_scores), uwo_lambda))
  if cond["transform"] in T.TRANSFORMS:
    return T.TRANSFORMS[cond["transform"]](r, ref)
  if cond["transform"] == "length_controlled":
    return T.length_controlled(r, lengths, group_size)
  return np.asarray(r, np.float64)


@contextlib.contextmanager
def registered_rewards(fns: dict):
  """Adds REWARDS-signature functions fn(texts, problems, lengths) -> [B] as rollout rewards
  (`rollout.REWARD_BUILDERS`, which `rl.rewards` names are checked against) for a run."""
  clash = sorted(set(fns) & set(REWARD_BUILDERS))
  if clash:
    raise ValueError(f"registered_rewards: {clash} already name rollout rewards")
  REWARD_BUILDERS.update({name: (lambda ctx, fn=fn: lambda c: fn(c.texts, c.problems, c.lengths))
                          for name, fn in fns.items()})
  try:
    yield
  finally:
    for k in fns:
      REWARD_BUILDERS.pop(k, None)


# --- the pieces of one seed ----------------------------------------------------------------

def _common(c, cfg, seed: int, workdir: str):
  c.seed = seed
  c.workdir = workdir
  c.model.update(cfg.model.to_dict())
  c.data.task_kwargs.update(cfg.task_kwargs.to_dict())
  c.sft_warmup.update(cfg.sft.to_dict())
  c.train.update(progress=False, tensorboard=False)
  return c


def rm_config(cfg, seed: int, workdir: str, pairs_path: str = "", eval_path: str = ""):
  c = _common(rm_synthetic.get_config("tiny"), cfg, seed, workdir)
  pc = cfg.proxy
  c.data.update(pref_path=pairs_path, eval_path=eval_path, batch_size=pc.batch_size)
  c.eval.batch_size = pc.batch_size
  c.optim.lr = pc.lr
  c.train.update(steps=pc.steps, eval_every=pc.steps, checkpoint_every=pc.steps, log_every=50)
  return c


def sft_config(cfg, seed: int, workdir: str, export: str):
  """The SFT warm-up that the rm / rl pipelines would run for this seed (the same derivation
  as their `sft_warmup` section), run once here with a HF export for sampling."""
  c = rm_config(cfg, seed, workdir)
  c.pipeline = "sft"
  c.objective = ml_collections.ConfigDict({"name": "sft", "aggregation": "token_mean"})
  c.optim.lr = cfg.sft.lr
  c.data.judge_fraction = 0.0
  c.train.update(steps=cfg.sft.steps, eval_every=cfg.sft.steps, checkpoint_every=cfg.sft.steps)
  c.export_hf = export
  return c


def with_warmup(run_dir: str, warmup: str):
  """Copies the seed's finished SFT run in as the pipeline's sft_warmup (restored, not rerun)."""
  target = os.path.join(run_dir, "sft_warmup")
  if not os.path.isdir(target):
    shutil.copytree(warmup, target, ignore=shutil.ignore_patterns("policy_hf", "tb"))
  return run_dir


def write_pairs(path: str, pairs):
  with open(path, "w") as f:
    for p in pairs:
      row = {k: v for k, v in p._asdict().items()
             if k in ("prompt", "chosen", "rejected", "margin", "subset", "category", "chosen_ratings",
                      "rejected_ratings") and v is not None}
      f.write(json.dumps(row) + "\n")
  return path


class Policy:
  """The SFT policy loaded from its HF export: sampling for the best-of-n pool and greedy
  reference answers."""

  def __init__(self, folder: str, mesh, max_prompt_len: int):
    _, self.cfg, self.graphdef, self.params = hf_io.load_hf_model(folder, mesh)
    self.tokenizer, self.mesh, self.max_prompt_len = load_tokenizer(None), mesh, max_prompt_len
    self._fns = {}

  def sample(self, prompts, n: int, max_new_tokens: int, temperature: float, seed: int, chunk: int = 2048):
    """-> (texts [len(prompts) * n], lengths), prompt-major, in prompt chunks of ~`chunk` rows."""
    key = (n, max_new_tokens, temperature)
    if key not in self._fns:
      sp = SamplingParams(max_new_tokens, n=n, temperature=temperature, stop_ids=(self.tokenizer.eos_id,))
      self._fns[key] = make_sample_fn(self.graphdef, sp, self.tokenizer.pad_id, self.mesh)
    per = max(chunk // n, 1)
    texts, lengths = [], []
    for s in range(0, len(prompts), per):
      part = list(prompts[s:s + per])
      real = len(part)
      part += [part[-1]] * (per - real)                   # one static shape per call
      pb = prompt_batch(part, self.tokenizer, self.max_prompt_len)
      out = jax.device_get(self._fns[key](self.params, *shard_batch((pb.tokens, pb.valid), self.mesh),
                                          jax.random.PRNGKey(seed * 100_003 + s)))
      texts += self.tokenizer.decode_batch(out.tokens)[:real * n]
      lengths.append(np.asarray(out.lengths)[:real * n])
    return texts, np.concatenate(lengths)


def policy_pairs(policy: "Policy", task, n: int, rng: np.random.Generator, split: str, max_new_tokens: int,
                 label_noise: float = 0.0, length_bias: float = 0.0, seed: int = 0) -> list[PreferencePair]:
  """Gold-labelled pairs of the policy's own samples (the proxy data of Gao et al. 2022):
  4 samples per prompt at temperature 1, samples (0, 1) and (2, 3) form a pair when their
  gold rewards differ (and neither is empty); chosen = higher gold, flipped with prob `label_noise`. With prob
  `length_bias` the chosen gets a verbose suffix (gold-neutral: the answer is the first
  line), the spurious "longer is better" correlate of `synthetic_rm_pairs`."""
  pairs, round_ = [], 0
  while len(pairs) < n:
    problems = task.sample_many(rng, max((n - len(pairs)) // 2 + 16, 64), split=split)
    texts, _ = policy.sample([p.prompt for p in problems], 4, max_new_tokens, 1.0, seed=seed * 7919 + round_)
    round_ += 1
    for i, p in enumerate(problems):
      for a, b in ((texts[4 * i], texts[4 * i + 1]), (texts[4 * i + 2], texts[4 * i + 3])):
        ga, gb = gold_reward(a, p.answer), gold_reward(b, p.answer)
        if a == b or ga == gb or not a or not b:   # the pair loader rejects empty completions
          continue
        (c, gc), (r, gr) = ((a, ga), (b, gb)) if ga > gb else ((b, gb), (a, ga))
        if rng.random() < length_bias:
          c += verbose_suffix(rng)
        if rng.random() < label_noise:
          (c, gc), (r, gr) = (r, gr), (c, gc)
        pairs.append(PreferencePair(p.prompt, c, r, abs(ga - gb), "policy_samples", f"{len(p.answer)}-digit",
                                    chosen_ratings=(gc,), rejected_ratings=(gr,)))
  return pairs[:n]


class ReferenceRewards:
  """r_ref(x): a scorer's reward for the SFT policy's greedy answer to x (cached per prompt)."""

  def __init__(self, policy: Policy, score, max_new_tokens: int):
    self.policy, self.score, self.max_new_tokens, self.cache = policy, score, max_new_tokens, {}

  def __call__(self, problems) -> np.ndarray:
    new = sorted({p.prompt for p in problems} - set(self.cache))
    if new:
      answers, _ = self.policy.sample(new, 1, self.max_new_tokens, 0.0, seed=0, chunk=64)
      self.cache.update(zip(new, self.score(new, answers)))
    return np.array([self.cache[p.prompt] for p in problems], np.float64)


def score_members(scorers, prompts, texts) -> np.ndarray:
  """[B, M] scores of each member."""
  return np.stack([s.score(prompts, texts) for s in scorers], 1).astype(np.float64)


def rl_records(workdir: str, proxy_key: str) -> dict:
  """metrics.jsonl -> per-iteration d = sqrt(kl_ref * response_length), gold, proxy, length."""
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  # strict JSON: a non-finite metric is written as null; such an iteration is left out
  keys = ("kl_ref", "response_length", "reward/gold", f"reward/{proxy_key}")
  rows = [r for r in rows if r["split"] == "train" and all(r.get(k) is not None for k in keys)]
  kl = np.array([max(r["kl_ref"], 0.0) * r["response_length"] for r in rows])
  return {"d": np.sqrt(kl).tolist(), "gold": [r["reward/gold"] for r in rows],
          "proxy": [r[f"reward/{proxy_key}"] for r in rows], "length": [r["response_length"] for r in rows],
          "accuracy": [r["reward/exact_answer"] for r in rows]}


def run_rl(cfg, seed: int, workdir: str, warmup: str, cond: dict, reward_fn=None, rm_path: str = "") -> dict:
  """One GRPO run on the condition's reward; gold logged at weight 0."""
  rc = cfg.rl
  c = _common(grpo_arithmetic.get_config("tiny", objective=rc.objective), cfg, seed, workdir)
  c.objective.beta = float(cond["beta"])
  c.optim.lr = rc.lr
  key = "reward_model" if rm_path else "proxy"
  c.rl.update(num_prompts=rc.num_prompts, group_size=rc.group_size, max_new_tokens=rc.max_new_tokens,
              minibatch_size=rc.num_prompts * rc.group_size, reward_model_path=rm_path)
  c.rl.rewards = ml_collections.ConfigDict({key: 1.0, "gold": 0.0})
  c.train.update(steps=rc.iterations, eval_every=0, checkpoint_every=0, log_every=1)
  if not os.path.exists(os.path.join(workdir, "metrics.jsonl")):
    with registered_rewards({} if rm_path else {"proxy": reward_fn}):
      PIPELINES["rl"](c, with_warmup(workdir, warmup))
  return rl_records(workdir, key)


def run_seed(cfg, seed: int, out: str, mesh) -> dict:
  """Everything for one seed -> a JSON-able dict (also written to <out>/seed_<seed>.json)."""
  path = os.path.join(out, f"seed_{seed}.json")
  if os.path.exists(path):
    with open(path) as f:
      return json.load(f)
  sdir = os.path.join(out, f"seed_{seed}")
  os.makedirs(sdir, exist_ok=True)
  t0 = time.perf_counter()
  task = make_task("addition", **cfg.task_kwargs.to_dict())
  pc, bc, rc = cfg.proxy, cfg.bon, cfg.rl

  # 1. SFT policy (the base of best-of-n, the initial RL policy, the RM trunk init)
  warmup = os.path.join(sdir, "sft")
  export = os.path.join(warmup, "policy_hf")
  if not os.path.exists(os.path.join(export, "config.json")):
    PIPELINES["sft"](sft_config(cfg, seed, warmup, export), warmup)
  policy = Policy(export, mesh, max_prompt_len=10)

  # 2. proxy reward models: `members` per N on the same pairs, and one length-biased. The
  # pairs of the smaller N are the first N of the largest set (nested, as more data would be).
  def make_pairs(n, rng, split, noise, length_bias):
    if pc.data == "policy":
      return policy_pairs(policy, task, n, rng, split, bc.max_new_tokens, noise, length_bias, seed)
    if pc.data == "synthetic":
      kw = dict(rejected_per_prompt=3, length_trap=0.25) if split == "eval" else {}
      return synthetic_rm_pairs(task, rng, n, split=split, label_noise=noise, length_bias=length_bias,
                                p_answer=pc.p_answer, **kw)
    raise ValueError(f"config.proxy.data={pc.data!r}; allowed: 'policy', 'synthetic'")
  eval_path = write_pairs(os.path.join(sdir, "eval_pairs.jsonl"),
                          make_pairs(pc.eval_pairs, np.random.default_rng([seed, 8]), "eval", 0.0, 0.0))
  all_pairs = make_pairs(max(pc.num_pairs), np.random.default_rng([seed, 7]), "train", pc.label_noise, 0.0)
  rm_sets, rm_acc = {}, {}
  ensembles = any(m in AGG for m in cfg.mitigations)
  for n in pc.num_pairs:
    for biased in ((False, True) if cfg.length_hacking and n == mitigation_n(cfg) else (False,)):
      tag = f"N{n}" + ("_biased" if biased else "")
      pairs = (make_pairs(n, np.random.default_rng([seed, 9]), "train", pc.label_noise, pc.length_bias)
               if biased else all_pairs[:n])
      pairs_path = write_pairs(os.path.join(sdir, f"pairs_{tag}.jsonl"), pairs)
      exports = []
      for m in range(pc.members if ensembles and n == mitigation_n(cfg) and not biased else 1):
        wd = os.path.join(sdir, f"rm_{tag}_m{m}")
        if not os.path.exists(os.path.join(wd, "reward_model", "rm.json")):
          PIPELINES["rm"](rm_config(cfg, 1000 * seed + m, wd, pairs_path, eval_path), with_warmup(wd, warmup))
        with open(os.path.join(wd, "rm_eval.json")) as f:
          rm_acc[f"{tag}_m{m}"] = json.load(f)["accuracy"]
        exports.append(os.path.join(wd, "reward_model"))
      rm_sets[(n, biased)] = exports
  scorers = {k: [RewardModelScorer(e, mesh) for e in v] for k, v in rm_sets.items()}

  # 3. the best-of-n pool: K samples per held-out prompt
  problems = task.sample_many(np.random.default_rng([seed, 11]), bc.num_prompts, split="eval")
  texts, lengths = policy.sample([p.prompt for p in problems], bc.samples, bc.max_new_tokens, 1.0, seed)
  k = bc.samples
  expanded = [p for p in problems for _ in range(k)]
  prompts = [p.prompt for p in expanded]
  gold = np.array([gold_reward(t, p.answer) for t, p in zip(texts, expanded)])
  members = {key: score_members(s, prompts, texts) for key, s in scorers.items()}
  refs = {key: ReferenceRewards(policy, s[0].score, bc.max_new_tokens) for key, s in scorers.items()}
  # STARC's space: each prompt's distinct samples, weighted by their frequency (flat: a row of
  # the pool for each, so pool scores index straight into it)
  candidates, ref_probs, mask, flat = starc.empirical_space([texts[i * k:(i + 1) * k] for i in range(len(problems))])
  gold_grid = starc.to_grid(gold[flat], candidates)

  # RL samples training-split prompts, which the SFT policy answers better than held-out ones:
  # its starting gold reward is measured there, on as many samples as the best-of-n pool
  train_problems = task.sample_many(np.random.default_rng([seed, 12]), bc.num_prompts, split="train")
  t_texts, t_lengths = policy.sample([p.prompt for p in train_problems], k, rc.max_new_tokens, 1.0, seed + 1)
  t_gold = [gold_reward(t, p.answer) for t, p in zip(t_texts, (p for p in train_problems for _ in range(k)))]
  result = {"seed": seed, "rm_accuracy": rm_acc, "gold_init": {"bon": float(gold.mean()), "rl": float(np.mean(t_gold))},
            "length_init": {"bon": float(lengths.mean()), "rl": float(t_lengths.mean())},
            "bon": {}, "rl": {}, "starc": {}}
  for cond in conditions(cfg):
    key = (cond["n"], cond["biased"])
    if cond["name"] == ORACLE:
      scores = gold
    else:
      ref = refs[key](expanded) if cond["transform"] in T.TRANSFORMS else None
      scores = combine_members(cond, members[key], ref, lengths, k, pc.uwo_lambda)
    if cond["bon"]:
      curve = bon.best_of_n_curve(scores.reshape(-1, k), gold.reshape(-1, k), bc.ns)
      length = bon.best_of_n_curve(scores.reshape(-1, k), lengths.reshape(-1, k).astype(float), bc.ns)
      result["bon"][cond["name"]] = {"d": np.sqrt(curve["kl_bon"]).tolist(), "gold": curve["gold"].tolist(),
                                     "proxy": curve["proxy"].tolist(), "length": length["gold"].tolist()}
      result["starc"][cond["name"]] = starc.starc_distance(gold_grid, starc.to_grid(scores[flat], candidates),
                                                           ref_probs, mask)

    # 4. RL against the condition's reward
    wd = os.path.join(sdir, "rl_" + cond["name"].replace(" ", "_").replace("=", ""))
    plain = cond["agg"] is None and cond["transform"] is None
    if cond["name"] == ORACLE:
      result["rl"][cond["name"]] = run_rl(cfg, seed, wd, warmup, cond, reward_fn=REWARDS["gold"])
    elif plain:     # the RL pipeline's own RM reward
      result["rl"][cond["name"]] = run_rl(cfg, seed, wd, warmup, cond, rm_path=rm_sets[key][0])
    else:
      group = rc.group_size
      sc, rf = scorers[key], refs[key]

      def reward_fn(completions, probs, lens, cond=cond, sc=sc, rf=rf, group=group):
        ms = score_members(sc, [p.prompt for p in probs], list(completions))
        ref = rf(probs) if cond["transform"] in T.TRANSFORMS else None
        return combine_members(cond, ms, ref, np.asarray(lens), group, pc.uwo_lambda).astype(np.float32)
      result["rl"][cond["name"]] = run_rl(cfg, seed, wd, warmup, cond, reward_fn=reward_fn)
    print(f"seed {seed} {cond['name']}: done ({time.perf_counter() - t0:.0f}s)", flush=True)
  result["wall_s"] = time.perf_counter() - t0
  with open(path, "w") as f:
    json.dump(result, f)
  return result


# --- analysis: fits, table, figure ---------------------------------------------------------

def _fmt(ci) -> str:
  mean, lo, hi = ci
  if not np.isfinite(mean):
    return "-"
  return f"{mean:.2f}" if not np.isfinite(lo) else f"{mean:.2f} [{lo:.2f}, {hi:.2f}]"


def curve_stats(run: dict, gold_init: float, form: str, edges=None) -> dict:
  """One seed's curve {"d", "gold", "proxy", "length"} -> fitted (alpha, beta, peak) of the
  gold gain, the measured peak, gain at the end and drop, the Spearman correlation of proxy
  and d (does the proxy keep rising?), and the response length at the end. RL curves are
  binned over d first (per-iteration points are noisy)."""
  d, g = np.asarray(run["d"]), np.asarray(run["gold"]) - gold_init
  alpha, beta = oo.fit_form(d, g, form)
  curves = {"gold": g, "proxy": np.asarray(run["proxy"]), "length": np.asarray(run["length"])}
  if edges is not None:
    d = 0.5 * (edges[1:] + edges[:-1])
    curves = {k: oo.binned(run["d"], v, edges) for k, v in curves.items()}
    ok = np.isfinite(curves["gold"])
    d, curves = d[ok], {k: v[ok] for k, v in curves.items()}
  g = curves["gold"]
  i = int(np.argmax(g))
  return {"alpha": alpha, "beta": beta, "peak_fit": oo.peak(alpha, beta, form), "peak_d": float(d[i]),
          "gold_peak": float(g[i]), "gold_end": float(g[-1]), "drop": float(g[i] - g[-1]), "d_end": float(d[-1]),
          "proxy_vs_d": spearman(d, curves["proxy"]), "length_end": float(curves["length"][-1])}


def analyse(cfg, seeds: list[dict], out: str) -> tuple[str, dict]:
  conds = conditions(cfg)
  # bins up to the 98th percentile of d: the per-token k3 estimate has rare huge outliers
  d_max = np.percentile(np.concatenate([s["rl"][c["name"]]["d"] for s in seeds for c in conds]), 98)
  edges = np.linspace(0.0, d_max, cfg.rl.d_bins + 1)
  stats = {"bon": {}, "rl": {}}
  for method, form in (("bon", "bon"), ("rl", "rl")):
    for c in conds:
      if method == "bon" and not c["bon"]:
        continue
      stats[method][c["name"]] = [curve_stats(s[method][c["name"]], s["gold_init"][method], form,
                                              None if method == "bon" else edges) for s in seeds]
  rows = []
  for method in ("bon", "rl"):
    for c in conds:
      per = stats[method].get(c["name"])
      if per is None:
        continue
      base = stats[method][c["baseline"]]
      fit = oo.fit_over_seeds([(s[method][c["name"]]["d"],
                                np.asarray(s[method][c["name"]]["gold"]) - s["gold_init"][method]) for s in seeds],
                              method)
      delay = [p["peak_d"] - b["peak_d"] for p, b in zip(per, base)]
      rows.append({
          "method": "best-of-n" if method == "bon" else "GRPO", "reward": c["name"],
          "alpha": _fmt(fit["alpha"]), "beta": _fmt(fit["beta"]),
          "d* (fit)": _fmt(fit["peak_d"]) + (f" ({fit['no_peak']} no peak)" if fit["no_peak"] else ""),
          "d_peak (measured)": _fmt(oo.t_interval([p["peak_d"] for p in per])),
          "peak delay vs " + "baseline": "-" if c["baseline"] == c["name"] else _fmt(oo.t_interval(delay)),
          "gold gain at peak": _fmt(oo.t_interval([p["gold_peak"] for p in per])),
          "gold gain at end": _fmt(oo.t_interval([p["gold_end"] for p in per])),
          "drop": _fmt(oo.t_interval([p["drop"] for p in per])),
          "d_end": _fmt(oo.t_interval([p["d_end"] for p in per])),
          "proxy~d (Spearman)": _fmt(oo.t_interval([p["proxy_vs_d"] for p in per])),
          "length at end": _fmt(oo.t_interval([p["length_end"] for p in per])),
          "STARC(gold, r)": _fmt(oo.t_interval([s["starc"][c["name"]] for s in seeds])) if c["bon"] else "-"})
  # does STARC predict the drop? Spearman over (seed, reward) points, per method
  starc_rank = {}
  for method in ("bon", "rl"):
    xs, ys = [], []
    for c in conds:
      if not c["bon"] or c["name"] == ORACLE:
        continue
      for s, p in zip(seeds, stats[method][c["name"]]):
        xs.append(s["starc"][c["name"]])
        ys.append(p["drop"])
    starc_rank[method] = {"spearman_starc_vs_drop": spearman(np.array(xs), np.array(ys)), "points": len(xs),
                          "starc": xs, "drop": ys}
  table = markdown_table(rows)
  acc = {k: oo.t_interval([s["rm_accuracy"][k] for s in seeds]) for k in seeds[0]["rm_accuracy"]}
  init = {m: _fmt(oo.t_interval([s["gold_init"][m] for s in seeds])) for m in ("bon", "rl")}
  text = (f"# Reward-model overoptimization ({len(seeds)} seed(s): {[s['seed'] for s in seeds]})\n\n"
          f"d = sqrt(KL to the SFT policy); gains are gold reward minus the SFT policy's (best-of-n: "
          f"held-out prompts, {init['bon']}; GRPO: training prompts, {init['rl']}). Intervals: 95% t over seeds. "
          "d* (fit): the peak of the fitted functional form; d_peak (measured): d at the highest measured "
          "gold (RL: binned over d); drop: gold at the peak minus gold at the largest d reached; "
          "proxy~d: rank correlation of the proxy reward with d (1 = rises monotonically).\n\n"
          + table + f"\nProxy RM held-out pairwise accuracy ({cfg.proxy.data} pairs, clean labels): "
          + ", ".join(f"{k} {_fmt(v)}" for k, v in acc.items())
          + "\n\nSTARC(gold, proxy) vs gold drop, Spearman over (seed, reward) points: "
          + ", ".join(f"{'best-of-n' if m == 'bon' else 'GRPO'} {v['spearman_starc_vs_drop']:.2f} "
                      f"(n={v['points']})" for m, v in starc_rank.items()) + "\n")
  return text, {"rows": rows, "stats": stats, "starc_rank": starc_rank, "edges": edges.tolist()}


def plot(cfg, seeds: list[dict], summary: dict, path: str):
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  conds = conditions(cfg)
  edges = np.asarray(summary["edges"])
  centres = 0.5 * (edges[1:] + edges[:-1])

  def band(ax, method, name, key, label, color, style="-", rel=True):
    if method == "bon":
      x = np.asarray(seeds[0]["bon"][name]["d"])
      ys = np.array([np.asarray(s["bon"][name][key]) - (s["gold_init"]["bon"] if rel and key == "gold" else 0.0)
                     for s in seeds])
    else:
      x = centres
      ys = np.array([oo.binned(s["rl"][name]["d"], np.asarray(s["rl"][name][key])
                               - (s["gold_init"]["rl"] if rel and key == "gold" else 0.0), edges) for s in seeds])
    seen = np.isfinite(ys).any(0)            # d bins this curve never reached
    x, ys = x[seen], ys[:, seen]
    mean = np.nanmean(ys, 0)
    ax.plot(x, mean, style, color=color, label=label, marker=".", markersize=4)
    if len(seeds) > 1:
      count = np.isfinite(ys).sum(0)
      sd = np.sqrt(np.nansum(np.square(ys - mean), 0) / np.maximum(count - 1, 1))
      ax.fill_between(x, mean - sd, mean + sd, color=color, alpha=0.2, linewidth=0)

  fig, axes = plt.subplots(2, 4, figsize=(20, 8.5))
  colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
  proxies = [c for c in conds if c["name"] == c["baseline"] and not c["biased"] and c["name"] != ORACLE]
  for col, method in enumerate(("bon", "rl")):
    title = "best-of-n" if method == "bon" else "GRPO"
    ax_g, ax_p = axes[0, 2 * col], axes[0, 2 * col + 1]
    band(ax_g, method, ORACLE, "gold", "optimising gold itself", "black", ":")
    for i, c in enumerate(proxies):
      band(ax_g, method, c["name"], "gold", c["name"], colors[i])
      band(ax_p, method, c["name"], "proxy", c["name"], colors[i], "--")
    ax_g.set_title(f"{title}: gold gain vs d")
    ax_p.set_title(f"{title}: proxy reward vs d")
    ax_m = axes[1, col]
    mit = [c for c in conds if c["baseline"] == f"proxy N={mitigation_n(cfg)}" and (method == "rl" or c["bon"])]
    for i, c in enumerate(mit):
      band(ax_m, method, c["name"], "gold", c["name"], colors[i % len(colors)])
    ax_m.set_title(f"{title}: mitigations, gold gain vs d")
  # length hacking: response length and gold for the length-biased proxy and its control
  ax_l, ax_lg = axes[1, 2], axes[1, 3]
  length_conds = [c for c in conds if c["biased"]]
  for i, c in enumerate(length_conds):
    for method, style in (("bon", "-"), ("rl", "--")):
      tag = "BoN" if method == "bon" else "GRPO"
      band(ax_l, method, c["name"], "length", f"{c['name']} ({tag})", colors[i], style)
      band(ax_lg, method, c["name"], "gold", f"{c['name']} ({tag})", colors[i], style)
  ax_l.set_title("length hacking: response length vs d")
  ax_lg.set_title("length hacking: gold gain vs d")
  for ax in axes.flat:
    if not ax.get_legend_handles_labels()[0]:
      ax.set_visible(False)        # e.g. no length-hacking runs configured
      continue
    ax.set_xlabel("d = sqrt(KL)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path, dpi=100)
  plt.close(fig)
  return path


def run_study(cfg, out: str) -> dict:
  """Runs (or resumes: finished seeds and runs are read back) every seed, then writes
  <out>/table.md, results.json and overoptimization.png. Returns the seeds' results, the
  table text and the per-seed statistics."""
  from absl import logging
  logging.set_verbosity(logging.WARNING)     # orbax logs every save and restore at INFO
  os.makedirs(out, exist_ok=True)
  if cfg.compilation_cache and not jax.config.jax_compilation_cache_dir:
    # every run of a study compiles the same programs (same shapes): cache them on disk
    # (a repeated 10-iteration GRPO run: 30 s -> 6 s on 2 CPU cores)
    jax.config.update("jax_compilation_cache_dir", os.path.join(out, "jax_cache"))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", 0)
  mesh = make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  seeds = [run_seed(cfg, int(s), out, mesh) for s in cfg.seeds]
  text, summary = analyse(cfg, seeds, out)
  with open(os.path.join(out, "table.md"), "w") as f:
    f.write(text)
  with open(os.path.join(out, "results.json"), "w") as f:
    json.dump({"config": cfg.to_dict(), "seeds": seeds, "rows": summary["rows"],
               "starc_rank": summary["starc_rank"]}, f, indent=1, default=float)
  plot(cfg, seeds, summary, os.path.join(out, "overoptimization.png"))
  return {"seeds": seeds, "table": text, **summary}


def main(argv):
  del argv
  from absl import flags
  cfg = flags.FLAGS.config
  out = flags.FLAGS.out
  result = run_study(cfg, out)
  print(result["table"])
  print(f"wrote {out}/table.md, results.json, overoptimization.png")


if __name__ == "__main__":
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", os.path.join(ROOT, "configs", "overoptimization.py"),
                                  "experiment config", lock_config=True)
  flags.DEFINE_string("out", "runs/overoptimization", "output directory")
  app.run(main)
