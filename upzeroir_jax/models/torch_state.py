"""PyTorch `.pth` / `.bin` state dicts read without running code and without surprises in size.

`load` is `torch.load(weights_only=True)` (torch's allow-list unpickler: tensors and plain
containers, no code) with its failures turned into one line that says what is wrong with the
file. torch's own advice to retry with `weights_only=False`, which would run the file's code, is
never repeated. `named_tensors` then accepts only a mapping of names to tensors, each tensor
within its storage: torch checks that a tensor's furthest element lies inside its storage, but a
tensor with zero strides views one stored number as, say, 100000 × 100000 values, and copying it
(any conversion does) would allocate tens of GiB from a file of a few hundred bytes. A tensor
with more elements than its storage holds is refused here.
"""

import os
import re
from collections.abc import Mapping
from typing import Any

from upzeroir_jax.models.weights_check import CheckpointError

# Sentences of torch's messages that advise disabling the safe loader, or point at its docs.
_ADVICE = re.compile(r"weights_only|trusted source|arbitrary code|documentation|safe_globals|"
                     r"Weights only load failed|allowlist", re.IGNORECASE)


def reason(error: Exception) -> str:
  """The sentences of a torch.load error that describe the file, advice dropped; one line."""
  sentences = re.split(r"(?<=[.!?])\s+|\n+", str(error))
  kept = " ".join(s.strip() for s in sentences if s.strip() and not _ADVICE.search(s))
  return " ".join(kept.split())[:200] or type(error).__name__


def load(path: str | os.PathLike) -> Any:
  """What `torch.load(path, weights_only=True)` returns, on the CPU.

  Raises:
    CheckpointError: one line `<path>: not a PyTorch state dict that can be read safely (...)`
      for any file torch refuses or cannot parse (a pickle naming code, a TorchScript archive,
      a truncated or foreign file).
  """
  import torch  # Converters only: torch is not a runtime dependency.

  name = os.fspath(path)
  try:
    return torch.load(name, map_location="cpu", weights_only=True)
  except Exception as e:  # noqa: BLE001 (torch raises many types for a bad file)
    raise CheckpointError(f"{name}: not a PyTorch state dict that can be read safely "
                          f"({reason(e)}); pass the official weights file") from None


def fits_storage(tensor: Any) -> bool:
  """True when `tensor` (a torch tensor) has no more elements than its storage holds past its
  offset, so that copying it allocates at most the storage's size."""
  capacity = tensor.untyped_storage().nbytes() // tensor.element_size() - tensor.storage_offset()
  return tensor.numel() <= capacity


def named_tensors(path: str | os.PathLike, state: Any) -> dict[str, Any]:
  """`state` as `{name: torch tensor}`, checked to be a state dict (see the module docstring).

  Raises:
    CheckpointError: one line naming the file and what is wrong: not a mapping (e.g. a list),
      a key that is not a string, a value that is not a tensor, or a tensor larger than its
      storage.
  """
  import torch

  name = os.fspath(path)
  if not isinstance(state, Mapping):
    raise CheckpointError(f"{name}: holds a {type(state).__name__}, not a state dict (tensor "
                          "names -> tensors); pass the official weights file")
  for key, value in state.items():
    if not isinstance(key, str) or not isinstance(value, torch.Tensor):
      raise CheckpointError(f"{name}: entry {key!r} is a {type(value).__name__}, not a named "
                            "tensor; pass the official weights file")
    if not fits_storage(value):
      raise CheckpointError(f"{name}: tensor {key!r} of shape {tuple(value.shape)} claims more "
                            "values than its storage holds (a malformed file); pass the "
                            "official weights file")
  return dict(state)
