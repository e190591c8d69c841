"""Decoded pixels to upright float RGB: sample scaling, orientation, alpha on white."""

import os

import numpy as np
from PIL import Image

from upzeroir_jax.io.errors import fail

_TIFF_BITS_PER_SAMPLE = 258
_TIFF_SAMPLE_FORMAT = 339  # 1 unsigned integer, 2 signed integer, 3 float
_SIGNED = 2


def _integer_range(im: Image.Image) -> float:
  """The largest code of a mode-"I" image's samples: 2^b − 1 (unsigned) or 2^(b−1) − 1."""
  tags = getattr(im, "tag_v2", {})
  bits = tags.get(_TIFF_BITS_PER_SAMPLE, (16,))
  bits = bits[0] if isinstance(bits, tuple) else bits
  fmt = tags.get(_TIFF_SAMPLE_FORMAT, (1,))
  signed = (fmt[0] if isinstance(fmt, tuple) else fmt) == _SIGNED
  return float(2 ** (bits - 1) - 1 if signed else 2 ** bits - 1)


def to_float(im: Image.Image, path: str | os.PathLike) -> np.ndarray:
  """A loaded Pillow image as float32 `[H, W, C]` in [0, 1], C in {1, 3, 4} (alpha last).

  Integer samples are divided by their type's largest code (as `skimage.img_as_float`), with
  negative values of signed types clipped to 0: 8-bit / 255, 16-bit / 65535, 32-bit signed
  TIFF / (2^31 − 1), 32-bit unsigned TIFF / (2^32 − 1). Float samples are taken as [0, 1] and
  clipped.

  Raises:
    ImageError: float samples that are NaN or infinite.
  """
  if im.mode.startswith("I;16"):
    return np.asarray(im).astype(np.float32)[..., None] / 65535.0
  if im.mode == "I":
    top = _integer_range(im)
    x = np.asarray(im)
    x = x.view(np.uint32) if top > 2 ** 31 else x
    return np.clip(x.astype(np.float64) / top, 0.0, 1.0).astype(np.float32)[..., None]
  if im.mode == "F":
    x = np.asarray(im, np.float32)
    if not np.all(np.isfinite(x)):
      raise fail(path, f"contains {np.count_nonzero(~np.isfinite(x))} NaN or infinite samples")
    return np.clip(x, 0.0, 1.0)[..., None]
  if im.mode in ("1", "L"):
    return np.asarray(im.convert("L"), np.float32)[..., None] / 255.0
  has_alpha = "A" in im.mode or "a" in im.mode or "transparency" in im.info
  return np.asarray(im.convert("RGBA" if has_alpha else "RGB"), np.float32) / 255.0


def to_rgb(x: np.ndarray) -> np.ndarray:
  """`[H, W, C]` (C = 1–4, alpha last when C is 2 or 4) -> `[H, W, 3]` composited on white."""
  if x.ndim == 2:
    x = x[..., None]
  color, alpha = (x[..., :-1], x[..., -1:]) if x.shape[-1] in (2, 4) else (x, None)
  if color.shape[-1] == 1:
    color = np.repeat(color, 3, axis=-1)
  if alpha is not None:
    color = color * alpha + (1.0 - alpha)
  return np.ascontiguousarray(color, np.float32)


def orient(img: np.ndarray, orientation: int) -> np.ndarray:
  """Applies an EXIF orientation tag (1–8) so the image is upright.

  Args:
    img: `[H, W, C]` array as stored in the file.
    orientation: EXIF tag 0x0112; values outside 2–8 leave the image as it is.

  Returns:
    `[H', W', C]` upright array (H' = W for orientations 5–8).
  """
  ops = {
      2: lambda a: a[:, ::-1],
      3: lambda a: a[::-1, ::-1],
      4: lambda a: a[::-1],
      5: lambda a: a.transpose(1, 0, 2),
      6: lambda a: np.rot90(a, -1),
      7: lambda a: a.transpose(1, 0, 2)[::-1, ::-1],
      8: lambda a: np.rot90(a, 1),
  }
  return np.ascontiguousarray(ops[orientation](img)) if orientation in ops else img
