"""Addressing leaves of nested parameter dicts by key tuples ("layers", 0, "attn", "q")."""
from __future__ import annotations


def get_path(tree, path):
  for k in path:
    tree = tree[k]
  return tree


def set_path(tree, path, value):
  """Sets tree[path] = value, creating intermediate dicts."""
  for k in path[:-1]:
    tree = tree.setdefault(k, {})
  tree[path[-1]] = value


def key_tuple(jax_path) -> tuple:
  """A jax tree path (DictKey / SequenceKey entries) as a plain tuple of keys."""
  return tuple(getattr(p, "key", getattr(p, "idx", None)) for p in jax_path)
