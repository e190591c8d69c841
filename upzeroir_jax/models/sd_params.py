"""PyTorch state dicts of diffusers / transformers SD networks -> our Flax parameters.

The modules of `unet`, `vae` and `clip_text` name their parameters after the PyTorch modules
(`down_blocks_0_resnets_1` for `down_blocks.0.resnets.1`), so a PyTorch name and a Flax path
meet in one key: the path's parts joined by "_", with Flax's "kernel" / "scale" / "embedding"
read as PyTorch's "weight". Tensors are transposed into the layouts the Flax layers use:
convolutions `[O, I, kh, kw]` -> `[kh, kw, I, O]`, linear layers `[O, I]` -> `[I, O]`.
No torch or diffusers import: the tensors come in as numpy arrays.
"""

from collections.abc import Callable, Mapping
from typing import Any

import flax.traverse_util
import numpy as np

from upzeroir_jax.models import weights_check

_FLAX_WEIGHT = ("kernel", "scale", "embedding")
# Attention names of VAE checkpoints saved before diffusers' `Attention` class.
_LEGACY = {"query": "to_q", "key": "to_k", "value": "to_v", "proj_attn": "to_out.0"}
# Buffers that some transformers versions saved with the text encoder.
BUFFERS = frozenset({"text_model.embeddings.position_ids"})


def flax_key(path: tuple[str, ...]) -> str:
  """The shared key of a Flax parameter path."""
  leaf = "weight" if path[-1] in _FLAX_WEIGHT else path[-1]
  return "_".join((*path[:-1], leaf))


def torch_key(part: str, name: str) -> str:
  """The shared key of a PyTorch parameter name of `part` ("unet", "vae", "text_encoder")."""
  if part == "text_encoder":
    name = name.removeprefix("text_model.")
  parts = name.split(".")
  if part == "vae":
    parts = [q for p in parts for q in _LEGACY.get(p, p).split(".")]
  return "_".join(parts)


def to_flax_layout(array: np.ndarray, path: tuple[str, ...], shape: tuple[int, ...]) -> np.ndarray:
  """A PyTorch tensor in the layout of the Flax parameter at `path` with `shape`."""
  if path[-1] != "kernel":
    return array
  if array.ndim == 4 and len(shape) == 2 and array.shape[2:] == (1, 1):
    array = array[:, :, 0, 0]  # a 1×1 convolution stored for a linear layer
  if array.ndim == 4:
    return array.transpose(2, 3, 1, 0)
  return array.T if array.ndim == 2 else array


def convert(part: str, state_dict: Mapping[str, np.ndarray], abstract: Any,
            origin: Callable[[str], str], fix: str) -> Any:
  """Maps a PyTorch state dict (numpy float arrays) onto the Flax tree `abstract`.

  Args:
    part: "unet", "vae" or "text_encoder".
    state_dict: PyTorch name -> float array.
    abstract: the Flax parameter tree of shapes the architecture needs.
    origin: PyTorch name -> the file it came from ("" -> the part's folder), for errors.
    fix: what the user should pass instead, ending every error message.

  Returns:
    The float32 parameter tree.

  Raises:
    weights_check.CheckpointError: an unexpected, misshaped or non-finite tensor, or a missing
      one (one line naming the file and the first bad key, in sorted order).
  """
  target = {flax_key(p): (p, v.shape)
            for p, v in flax.traverse_util.flatten_dict(abstract).items()}
  out = {}
  for name in sorted(state_dict):
    if name in BUFFERS:
      continue
    key = torch_key(part, name)
    if key not in target:
      raise weights_check.CheckpointError(
        f"{origin(name)}: unexpected tensor {name!r} (not in the {part} architecture); {fix}")
    path, shape = target[key]
    array = np.asarray(state_dict[name])
    if not weights_check.is_float_dtype(array.dtype):
      raise weights_check.CheckpointError(
        f"{origin(name)}: tensor {name!r} is {array.dtype}, not a float type; {fix}")
    array = to_flax_layout(array.astype(np.float32), path, tuple(shape))
    weights_check.check_tensor(origin(name), name, array, shape, fix)
    out[path] = array
  missing = sorted(p for p, _ in target.values() if p not in out)
  if missing:
    raise weights_check.CheckpointError(
      f"{origin('')}: the {part} parameter {'/'.join(missing[0])} has no tensor "
      f"({len(missing)} of {len(target)} missing); {fix}")
  return flax.traverse_util.unflatten_dict(out)
