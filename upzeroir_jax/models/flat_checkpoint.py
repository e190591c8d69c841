"""Flat safetensors checkpoints for the quality models (VGG16, ARNIQA, LPIPS).

A checkpoint is ONE safetensors file: every leaf of a nested dict of arrays stored under its
'/'-joined path (`conv1_1/kernel`), plus string metadata. A single flat file was chosen over an
orbax directory because these models are small, fixed-architecture feature extractors: the file
is written and read without any asynchronous checkpoint machinery, is readable from numpy alone,
and carries its provenance (source file, dataset, score range) in its header. Reading never runs
code from the file (safetensors holds only tensors); `load` checks the tensors against the
architecture (`weights_check`) before anything uses them.
"""

import os
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import safetensors
import safetensors.numpy

from upzeroir_jax.models import places
from upzeroir_jax.models.weights_check import CheckpointError, check


class MissingCheckpointError(FileNotFoundError, CheckpointError):
  """A converted checkpoint is absent; the message names the path and the commands to run."""


def _flatten(tree: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
  flat = {}
  for name, value in tree.items():
    path = f"{prefix}{name}"
    if isinstance(value, Mapping):
      flat.update(_flatten(value, path + "/"))
    else:
      flat[path] = value
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
  flat = {k: np.ascontiguousarray(np.asarray(v, dtype=np.float32))
          for k, v in _flatten(tree).items()}
  safetensors.numpy.save_file(flat, os.fspath(path), metadata=dict(metadata or {}))


def _read(path: str | os.PathLike, converter: str, title: str,
          place: str) -> tuple[dict[str, np.ndarray], dict[str, str]]:
  """The flat tensors and metadata of a safetensors file, unchecked.

  Raises:
    MissingCheckpointError: `path` does not exist.
    CheckpointError: the file is not a complete safetensors file.
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise MissingCheckpointError(places.not_found(f"{title} checkpoint", path, place, converter))
  try:
    with safetensors.safe_open(path, framework="numpy") as f:
      metadata = dict(f.metadata() or {})
    return safetensors.numpy.load_file(path), metadata
  except (safetensors.SafetensorError, OSError, ValueError) as e:
    raise CheckpointError(f"{path}: not a complete safetensors file ({' '.join(str(e).split())}); "
                          f"rebuild it with `{converter}`") from None


def load(path: str | os.PathLike, converter: str, model: str, title: str,
         expected: Callable[[dict[str, str]], Any],
         place: str) -> tuple[dict[str, Any], dict[str, str]]:
  """Reads a file written by `save` and checks it -> (nested dict of numpy arrays, metadata).

  Args:
    path: the checkpoint file.
    converter: the command that writes this checkpoint, named in errors.
    model: the `model` entry its metadata must hold (e.g. "vgg16").
    title: what such a checkpoint is called in errors (e.g. "VGG16").
    expected: metadata -> nested dict whose leaves have `.shape` (e.g. `jax.eval_shape` of the
      model's init): the file must hold exactly these keys, as finite float tensors of these
      shapes (`weights_check.check`). It may raise `CheckpointError` for unusable metadata.
    place: where weights.fetch writes this file in its output folder (`places.fetch_output`),
      for the message when `path` is absent.

  Raises:
    MissingCheckpointError: `path` does not exist.
    CheckpointError: the file is unreadable, of another model, or does not fit `expected`.
  """
  flat, metadata = _read(path, converter, title, place)
  if metadata.get("model") != model:
    raise CheckpointError(f"{os.fspath(path)}: not a {title} checkpoint (its metadata says "
                          f"model={metadata.get('model')!r}); rebuild it with `{converter}`")
  want = {k: tuple(v.shape) for k, v in _flatten(expected(metadata)).items()}
  check(path, flat, want, f"rebuild it with `{converter}`")
  return _unflatten(flat), metadata
