"""The map between an image of any size and the model's input grid, and back."""

from __future__ import annotations

import dataclasses
import math
from typing import Literal

import numpy as np
from PIL import Image

from upzeroir_jax.io import upsample

# The grid modes: "resize" and "upsample" restore on a `size x size` grid, "pad" at full size.
MODES = ("resize", "pad", "upsample")
SQUARE_MODES = ("resize", "upsample")


@dataclasses.dataclass(frozen=True)
class GridMeta:
  """How `to_model_grid` changed an image, so that `from_model_grid` can undo it.

  Attributes:
    height: original height H.
    width: original width W.
    mode: "resize" (stretched to a square grid), "pad" (reflect-padded at bottom and right) or
      "upsample" (stretched as "resize"; back by the guided transform of `io.upsample`).
    full: in "upsample" mode, the full-resolution input `[H, W, 3]`; else None.
    grid_input: in "upsample" mode, the input on the model grid; else None.
  """
  height: int
  width: int
  mode: str
  full: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)
  grid_input: np.ndarray | None = dataclasses.field(default=None, compare=False, repr=False)


def as_float_image(img: np.ndarray, name: str = "image") -> np.ndarray:
  """float32 `[H, W, 3]` from float [0,1] or uint8, `[H, W]`, `[H, W, 1]` or `[H, W, 3]`.

  Raises:
    ValueError: another shape, or a NaN / infinite value.
  """
  x = np.asarray(img)
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim != 3 or x.shape[-1] not in (1, 3) or x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"{name} must be [H, W, 3] (or [H, W] grayscale), got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contains NaN or infinite values")
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def _resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bicubic resize of float `[H, W, C]` (antialiased when shrinking), clipped to [0, 1]."""
  if x.shape[:2] == (height, width):
    return x.astype(np.float32)
  chans = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c], np.float32)).resize(
      (width, height), Image.Resampling.BICUBIC)) for c in range(x.shape[-1])]
  return np.clip(np.stack(chans, axis=-1), 0.0, 1.0).astype(np.float32)


def grid_shape(height: int, width: int, size: int, mode: str,
               multiple: int) -> tuple[int, int]:
  """The model-grid `(H', W')` that `to_model_grid` gives an `H x W` image."""
  if mode in SQUARE_MODES:
    return size, size
  if mode == "pad":
    return multiple * math.ceil(height / multiple), multiple * math.ceil(width / multiple)
  raise ValueError(f"grid mode must be one of {', '.join(MODES)}, got {mode!r}")


def to_model_grid(img: np.ndarray, size: int, mode: Literal["resize", "pad", "upsample"],
                  multiple: int) -> tuple[np.ndarray, GridMeta]:
  """Brings an image of any size onto the model's input grid.

  "resize" stretches it to `size x size` (bicubic, antialiased when shrinking), as the original
  method feeds 512 x 512 inputs to SD. "pad" keeps every pixel: reflect padding at the bottom
  and right up to the next multiple of `multiple` (the model's own, e.g. 64 = the SD VAE's 8 x
  the UNet's 8), repeating the reflection for images smaller than the padding; docs/method.md
  §3 rescales the guidance weight by the grid's pixel count in that mode. "upsample" brings it
  to the grid as "resize" does and keeps the full-resolution input in the GridMeta, for
  `from_model_grid` to carry the restoration back by the guided transform (`io.upsample`).

  Args:
    img: float `[H, W, 3]` in [0, 1] (or uint8).
    size: side of the square grid in "resize" and "upsample" modes (unused in "pad" mode).
    mode: "resize", "pad" or "upsample".
    multiple: grid sizes in "pad" mode are multiples of this (unused in "resize" mode).

  Returns:
    (float32 `[H', W', 3]` grid image, GridMeta for `from_model_grid`).
  """
  x = as_float_image(img)
  h, w, _ = x.shape
  gh, gw = grid_shape(h, w, size, mode, multiple)
  if mode == "pad":
    return (np.pad(x, ((0, gh - h), (0, gw - w), (0, 0)), mode="reflect"),
            GridMeta(height=h, width=w, mode=mode))
  out = _resize(x, gh, gw)
  if mode == "upsample":
    return out, GridMeta(height=h, width=w, mode=mode, full=x, grid_input=out)
  return out, GridMeta(height=h, width=w, mode=mode)


def from_model_grid(out: np.ndarray, meta: GridMeta) -> np.ndarray:
  """Inverse of `to_model_grid`: crops ("pad"), resizes back ("resize") or carries the output
  to the full-resolution input by the guided transform ("upsample", `io.upsample.carry`).

  Args:
    out: float `[H', W', 3]` image on the model grid (numpy or jax).
    meta: the GridMeta `to_model_grid` returned for the input.

  Returns:
    float32 `[meta.height, meta.width, 3]` in [0, 1].
  """
  x = as_float_image(out, "model output")
  if meta.mode == "pad":
    if x.shape[0] < meta.height or x.shape[1] < meta.width:
      raise ValueError(f"model output {x.shape} is smaller than the original "
                       f"{meta.height}x{meta.width}")
    return np.ascontiguousarray(np.clip(x[:meta.height, :meta.width], 0.0, 1.0))
  if meta.mode == "upsample":
    if meta.full is None or meta.grid_input is None or meta.grid_input.shape != x.shape:
      raise ValueError(f"model output {x.shape} does not match the grid input this GridMeta "
                       "holds; bring the image to the grid with to_model_grid(..., 'upsample')")
    return upsample.carry(meta.full, meta.grid_input, x)
  return _resize(x, meta.height, meta.width)
