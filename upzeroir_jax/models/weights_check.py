"""Weights checked against the architecture before use, for every model the package loads.

`check` compares a flat `{key: array}` read from a file with the flat `{key: shape}` the
architecture needs and raises `CheckpointError` at the first problem, in this order: a missing
tensor, an unexpected one, then per key (sorted) a non-float dtype, a wrong shape (a transposed
layout such as PyTorch's OIHW shows up here) and NaN / infinite values. The message is one line:
the file, the key, the problem, and what to do.
"""

import os
from collections.abc import Mapping
from typing import Any

import numpy as np


class CheckpointError(ValueError):
  """A weights file that cannot be read or does not fit the architecture (one-line message)."""


def is_float_dtype(dtype: Any) -> bool:
  """True for floating-point numpy dtypes, bfloat16 included."""
  dtype = np.dtype(dtype)
  return dtype.kind == "f" or dtype.name == "bfloat16"


def check(file: str | os.PathLike, arrays: Mapping[str, Any],
          expected: Mapping[str, tuple[int, ...]], fix: str) -> None:
  """Raises `CheckpointError` unless `arrays` holds exactly the float, finite tensors `expected`.

  Args:
    file: the weights file, named in the message.
    arrays: key -> array (numpy, or anything with `.shape`, `.dtype` and `np.asarray`).
    expected: key -> shape the architecture needs.
    fix: what to do, appended to the message (e.g. the converter command).
  """
  name = os.fspath(file)
  missing = [k for k in sorted(expected) if k not in arrays]
  if missing:
    raise CheckpointError(f"{name}: tensor {missing[0]!r} is missing ({len(missing)} of "
                          f"{len(expected)} missing); {fix}")
  unexpected = sorted(set(arrays) - set(expected))
  if unexpected:
    raise CheckpointError(f"{name}: unexpected tensor {unexpected[0]!r} ({len(unexpected)} not "
                          f"in the architecture); {fix}")
  for key in sorted(expected):
    check_tensor(name, key, arrays[key], expected[key], fix)


def check_tensor(file: str | os.PathLike, key: str, array: Any, shape: tuple[int, ...],
                 fix: str) -> None:
  """Raises `CheckpointError` unless `array` is a finite float tensor of shape `shape`."""
  name = os.fspath(file)
  if not is_float_dtype(array.dtype):
    raise CheckpointError(f"{name}: tensor {key!r} is {np.dtype(array.dtype).name}, not a float "
                          f"type; {fix}")
  if tuple(array.shape) != tuple(shape):
    raise CheckpointError(f"{name}: tensor {key!r} has shape {tuple(array.shape)}, the "
                          f"architecture needs {tuple(shape)}; {fix}")
  bad = np.size(array) - np.count_nonzero(np.isfinite(np.asarray(array, np.float32)))
  if bad:
    raise CheckpointError(f"{name}: tensor {key!r} has {bad} NaN or infinite values; {fix}")
