"""Shared pieces of the PyTorch -> JAX converters: reading state dicts, re-laying out weights."""

import os
from collections.abc import Mapping
from typing import Any

import numpy as np

from upzeroir_jax.models import torch_state


def require_files(**paths: str | None) -> None:
  """Command-line check of input files given as `flag=path` (None: flag not given).

  Raises:
    FileNotFoundError: one line `--<flag>=<path>: no such file` for the first absent one.
  """
  for flag, path in paths.items():
    if path and not os.path.isfile(path):
      raise FileNotFoundError(f"--{flag}={path}: no such file")


def read_state_dict(path: str | os.PathLike) -> dict[str, np.ndarray]:
  """Loads a PyTorch `.pth` state dict (tensors only, no code execution) as numpy arrays.

  A checkpoint that wraps its state dict (`{"state_dict": ...}` or `{"model": ...}`) is unwrapped.

  Raises:
    CheckpointError: one line for a file that is not a safe, well-formed state dict
      (`torch_state.load`, `torch_state.named_tensors`).
  """
  state = torch_state.load(path)
  for wrapper in ("state_dict", "model"):
    if isinstance(state, Mapping) and wrapper in state and isinstance(state[wrapper], Mapping):
      state = state[wrapper]
  return to_numpy(torch_state.named_tensors(path, state))


def to_numpy(state: Mapping[str, Any]) -> dict[str, np.ndarray]:
  """A state dict of torch tensors (or arrays) -> float32 numpy arrays, same keys."""
  out = {}
  for name, value in state.items():
    if hasattr(value, "detach"):
      value = value.detach().cpu().numpy()
    out[name] = np.asarray(value, dtype=np.float32)
  return out


def conv(state: Mapping[str, np.ndarray], prefix: str, bias: bool = True) -> dict[str, np.ndarray]:
  """torch Conv2d `{prefix}.weight [O, I, kh, kw]` (+ bias) -> Flax `{kernel [kh, kw, I, O]}`."""
  params = {"kernel": np.transpose(state[f"{prefix}.weight"], (2, 3, 1, 0))}
  if bias:
    params["bias"] = state[f"{prefix}.bias"]
  return params
