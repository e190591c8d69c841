"""Flat safetensors checkpoints for the quality models (VGG16, ARNIQA, LPIPS).

A checkpoint is ONE safetensors file: every leaf of a nested dict of arrays stored under its
'/'-joined path (`conv1_1/kernel`), plus string metadata. A single flat file was chosen over an
orbax directory because these models are small, fixed-architecture feature extractors: the file
is written and read without any asynchronous checkpoint machinery, is readable from numpy alone,
and carries its provenance (source file, dataset, score range) in its header.
"""

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import safetensors.numpy


class MissingCheckpointError(FileNotFoundError, ValueError):
  """A converted checkpoint is absent; the message names the converter to run."""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, np.ndarray]:
  flat = {}
  for name, value in tree.items():
    path = f"{prefix}{name}"
    if isinstance(value, Mapping):
      flat.update(_flatten(value, path + "/"))
    else:
      flat[path] = np.ascontiguousarray(np.asarray(value, dtype=np.float32))
  return flat


def _unflatten(flat: Mapping[str, np.ndarray]) -> dict[str, Any]:
  tree: dict[str, Any] = {}
  for path, value in flat.items():
    *parents, leaf = path.split("/")
    node = tree
    for name in parents:
      node = node.setdefault(name, {})
    node[leaf] = value
  return tree


def save(path: str | os.PathLike, tree: Mapping[str, Any],
         metadata: Mapping[str, str] | None = None) -> None:
  """Writes a nested dict of float32 arrays (and string metadata) to one safetensors file."""
  safetensors.numpy.save_file(_flatten(tree), os.fspath(path), metadata=dict(metadata or {}))


def load(path: str | os.PathLike, converter: str) -> tuple[dict[str, Any], dict[str, str]]:
  """Reads a file written by `save` -> (nested dict of numpy arrays, metadata).

  Args:
    path: the checkpoint file.
    converter: the command that writes this checkpoint, named in the error when it is missing.

  Raises:
    MissingCheckpointError: `path` does not exist.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise MissingCheckpointError(f"checkpoint {path!r} not found; create it with `{converter}`")
  with safetensors.safe_open(path, framework="numpy") as f:
    metadata = dict(f.metadata() or {})
  return _unflatten(safetensors.numpy.load_file(path)), metadata
