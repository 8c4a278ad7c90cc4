"""A TFDS builder over local preference files (JSONL or Parquet, the shape of
`rewardlab.data.preference`), so the same files load through TFDS offline.

Without TensorFlow, prepare as ArrayRecord and read through the random-access data source
(what grain consumes):

    sources = load_tfds_preferences({"train": "train.jsonl", "test": "test.parquet"}, data_dir)
    pairs = tfds_to_pairs(sources["train"])      # back to PreferencePair rows

With TensorFlow installed, `tfds.load("preference_files", data_dir=data_dir,
builder_kwargs={"config": preference_files_config(files)})` gives tf.data as usual.
Rows are validated by the same `pair_from_row` as the direct loaders (errors name
file:line); optional fields missing from a row are stored as NaN / "" / [] and come back
as None.
"""
from __future__ import annotations

import hashlib
import math
from typing import Mapping

import numpy as np
import tensorflow_datasets as tfds

from rewardlab.data.preference import PreferencePair, load_preferences

_LIST_FIELDS = ("chosen_ratings", "rejected_ratings", "chosen_steps", "rejected_steps")


class PreferenceFilesConfig(tfds.core.BuilderConfig):
  """One config per set of files: {split name: local .jsonl/.parquet path}."""

  def __init__(self, *, files: Mapping[str, str], **kwargs):
    super().__init__(**kwargs)
    self.files = dict(files)


def preference_files_config(files: Mapping[str, str]) -> PreferenceFilesConfig:
  """Names the config by a hash of the paths, so different file sets never share a cache."""
  digest = hashlib.sha1(repr(sorted(files.items())).encode()).hexdigest()[:12]
  return PreferenceFilesConfig(name=f"files_{digest}", files=files,
                               description=f"preference pairs from {dict(files)}")


class PreferenceFiles(tfds.core.GeneratorBasedBuilder):
  """prompt/chosen/rejected pairs with optional margin, subset, category, tie, ratings, steps."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self) -> tfds.core.DatasetInfo:
    f = tfds.features
    lists = {k: f.Sequence(np.float32) for k in _LIST_FIELDS}
    return self.dataset_info_from_configs(features=f.FeaturesDict(dict(
        prompt=f.Text(), chosen=f.Text(), rejected=f.Text(), margin=np.float32,
        subset=f.Text(), category=f.Text(), tie=np.bool_, **lists)))

  def _split_generators(self, dl_manager):
    del dl_manager  # local files only: nothing to download
    return {split: self._generate_examples(path) for split, path in self.builder_config.files.items()}

  def _generate_examples(self, path):
    for i, p in enumerate(load_preferences(path)):
      yield i, dict(prompt=p.prompt, chosen=p.chosen, rejected=p.rejected,
                    margin=math.nan if p.margin is None else p.margin, subset=p.subset or "",
                    category=p.category or "", tie=p.tie,
                    **{k: list(getattr(p, k) or ()) for k in _LIST_FIELDS})


def load_tfds_preferences(files: Mapping[str, str], data_dir: str) -> dict:
  """Prepares (once) and returns {split: random-access data source} without TensorFlow."""
  builder = PreferenceFiles(config=preference_files_config(files), data_dir=data_dir,
                            file_format="array_record")
  builder.download_and_prepare()
  return builder.as_data_source()


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
