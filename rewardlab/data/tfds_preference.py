"""A TFDS builder over local row files (JSONL or Parquet) of one kind: preference pairs
(`rewardlab.data.preference`), prompt-only rows or unpaired rows (`rewardlab.data.formats`),
so the same files load through TFDS offline.

Without TensorFlow, prepare as ArrayRecord and read through the random-access data source
(what grain consumes):

    sources = load_tfds_preferences({"train": "train.jsonl", "test": "test.parquet"}, data_dir)
    pairs = tfds_to_pairs(sources["train"])      # back to PreferencePair rows
    sources = load_tfds_rows({"train": "prompts.jsonl"}, data_dir, kind="prompt",
                             tokenizer_path="/models/qwen")   # renders conversational rows
    rows = tfds_to_rows(sources["train"], "prompt")           # PromptRow / UnpairedExample

With TensorFlow installed, `tfds.load("preference_files", data_dir=data_dir,
builder_kwargs={"config": preference_files_config(files)})` gives tf.data as usual.
Rows are validated by the same parsers as the direct loaders (errors name file:line);
conversational rows are stored rendered with the chat template of `tokenizer_path` ("" =
the byte tokenizer's default template). Optional fields missing from a row are stored as
NaN / "" / [] and come back as None.
"""
from __future__ import annotations

import hashlib
import math
from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds

from rewardlab.data.formats import PromptRow, UnpairedExample, load_prompts, load_unpaired
from rewardlab.data.preference import PreferencePair, load_preferences

_LIST_FIELDS = ("chosen_ratings", "rejected_ratings", "chosen_steps", "rejected_steps")
KINDS = ("preference", "prompt", "unpaired")


class PreferenceFilesConfig(tfds.core.BuilderConfig):
  """One config per set of files: {split name: local .jsonl/.parquet path}, the row kind and
  the tokenizer folder whose chat template renders conversational rows."""

  def __init__(self, *, files: Mapping[str, str], kind: str = "preference", tokenizer_path: str = "",
               **kwargs):
    super().__init__(**kwargs)
    if kind not in KINDS:
      raise ValueError(f"tfds row files: kind={kind!r} is unknown; allowed: {list(KINDS)}")
    self.files, self.kind, self.tokenizer_path = dict(files), kind, tokenizer_path


def preference_files_config(files: Mapping[str, str], kind: str = "preference",
                            tokenizer_path: str = "") -> PreferenceFilesConfig:
  """Names the config by a hash of what it reads (paths, kind, the chat template), so
  different inputs never share a cache."""
  template = ""
  if tokenizer_path:
    from rewardlab.data.hf_tokenizer import HFTokenizer
    template = HFTokenizer(tokenizer_path).chat_template or ""
  key = repr((sorted(files.items()), kind, tokenizer_path, template))
  digest = hashlib.sha1(key.encode()).hexdigest()[:12]
  return PreferenceFilesConfig(name=f"files_{digest}", files=files, kind=kind, tokenizer_path=tokenizer_path,
                               description=f"{kind} rows from {dict(files)}")


class PreferenceFiles(tfds.core.GeneratorBasedBuilder):
  """Rows of one kind: preference (prompt/chosen/rejected with optional margin, subset,
  category, tie, ratings, steps), prompt (prompt, answer) or unpaired (prompt, completion,
  label)."""

  VERSION = tfds.core.Version("1.1.0")
  RELEASE_NOTES = {"1.1.0": "prompt-only and unpaired kinds; conversational rows rendered"}

  def _info(self) -> tfds.core.DatasetInfo:
    f = tfds.features
    kind = self.builder_config.kind
    if kind == "prompt":
      features = dict(prompt=f.Text(), answer=f.Text(), has_answer=np.bool_)
    elif kind == "unpaired":
      features = dict(prompt=f.Text(), completion=f.Text(), label=np.bool_)
    else:
      features = dict(prompt=f.Text(), chosen=f.Text(), rejected=f.Text(), margin=np.float32,
                      subset=f.Text(), category=f.Text(), tie=np.bool_,
                      **{k: f.Sequence(np.float32) for k in _LIST_FIELDS})
    return self.dataset_info_from_configs(features=f.FeaturesDict(features))

  def _split_generators(self, dl_manager):
    del dl_manager  # local files only: nothing to download
    return {split: self._generate_examples(path) for split, path in self.builder_config.files.items()}

  def _generate_examples(self, path):
    from rewardlab.data.hf_tokenizer import load_tokenizer
    cfg = self.builder_config
    tokenizer = load_tokenizer(cfg.tokenizer_path or None)
    if cfg.kind == "prompt":
      for i, r in enumerate(load_prompts(path, tokenizer=tokenizer)):
        yield i, dict(prompt=r.prompt, answer=r.answer or "", has_answer=r.answer is not None)
      return
    if cfg.kind == "unpaired":
      for i, r in enumerate(load_unpaired(path, tokenizer=tokenizer)):
        yield i, r._asdict()
      return
    for i, p in enumerate(load_preferences(path, tokenizer=tokenizer)):
      yield i, dict(prompt=p.prompt, chosen=p.chosen, rejected=p.rejected,
                    margin=math.nan if p.margin is None else p.margin, subset=p.subset or "",
                    category=p.category or "", tie=p.tie,
                    **{k: list(getattr(p, k) or ()) for k in _LIST_FIELDS})


def load_tfds_rows(files: Mapping[str, str], data_dir: str, kind: str = "preference",
                   tokenizer_path: str = "") -> dict:
  """Prepares (once) and returns {split: random-access data source} without TensorFlow."""
  builder = PreferenceFiles(config=preference_files_config(files, kind, tokenizer_path), data_dir=data_dir,
                            file_format="array_record")
  builder.download_and_prepare()
  return builder.as_data_source()


def load_tfds_preferences(files: Mapping[str, str], data_dir: str, tokenizer_path: str = "") -> dict:
  return load_tfds_rows(files, data_dir, "preference", tokenizer_path)


def _text(x) -> str:
  return x.decode() if isinstance(x, bytes) else str(x)


def tfds_to_pairs(source) -> list[PreferencePair]:
  """Data-source records -> PreferencePair rows (the inverse of the builder's encoding)."""
  out = []
  for i in range(len(source)):
    r = source[i]
    lists = {k: (tuple(float(v) for v in r[k]) if len(r[k]) else None) for k in _LIST_FIELDS}
    margin = float(r["margin"])
    out.append(PreferencePair(_text(r["prompt"]), _text(r["chosen"]), _text(r["rejected"]),
                              None if math.isnan(margin) else margin, _text(r["subset"]) or None,
                              _text(r["category"]) or None, bool(r["tie"]), **lists))
  return out


def tfds_to_rows(source, kind: str) -> list:
  """Data-source records -> PreferencePair / PromptRow / UnpairedExample by kind."""
  if kind == "preference":
    return tfds_to_pairs(source)
  rows = [source[i] for i in range(len(source))]
  if kind == "prompt":
    return [PromptRow(_text(r["prompt"]), _text(r["answer"]) if r["has_answer"] else None) for r in rows]
  if kind == "unpaired":
    return [UnpairedExample(_text(r["prompt"]), _text(r["completion"]), bool(r["label"])) for r in rows]
  raise ValueError(f"tfds_to_rows: kind={kind!r} is unknown; allowed: {list(KINDS)}")
