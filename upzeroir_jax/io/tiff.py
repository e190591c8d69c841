"""TIFFs that Pillow cannot decode (floating-point or wide-integer colour samples), decoded
with libtiff (through `imagecodecs`), their orientation tag read with Pillow's TIFF parser."""

import io
import os

import imagecodecs
import numpy as np
from PIL import Image, TiffImagePlugin

from upzeroir_jax.io.errors import fail

_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
_WIDTH, _HEIGHT, _ORIENTATION = 256, 257, 274


def is_tiff(data: bytes) -> bool:
  """True when `data` starts with a TIFF or BigTIFF signature."""
  return data[:4] in _MAGIC


def _directory(data: bytes, path: str | os.PathLike) -> tuple[int, int, int]:
  """(width, height, orientation tag or 1) of the first image directory.

  Raises:
    ImageError: an unreadable directory, or more pixels than Pillow's decompression-bomb limit.
  """
  try:
    ifd = TiffImagePlugin.ImageFileDirectory_v2(data[:8])
    f = io.BytesIO(data)
    f.seek(ifd.next)
    ifd.load(f)
    width, height = int(ifd[_WIDTH]), int(ifd[_HEIGHT])
    orientation = int(ifd.get(_ORIENTATION, 1))
  except (ValueError, TypeError, KeyError, OSError, SyntaxError) as e:
    raise fail(path, f"corrupt TIFF directory ({type(e).__name__}: {e})") from None
  if width * height > 2 * Image.MAX_IMAGE_PIXELS:
    raise fail(path, f"decompression bomb ({width}x{height} pixels is over the limit)")
  return width, height, orientation


def decode(data: bytes, path: str | os.PathLike) -> tuple[np.ndarray, int]:
  """(float32 `[H, W, C]` in [0, 1] as stored, C = 1–4 with alpha last; the orientation tag).

  Float samples (16, 32 or 64 bits) are clipped to [0, 1]; integer samples are divided by
  their type's largest code, negative ones clipped to 0 (as `pixels.to_float`).

  Raises:
    ImageError: undecodable data, too many pixels, an unsupported layout, or non-finite
      float samples.
  """
  orientation = _directory(data, path)[2]
  try:
    x = np.asarray(imagecodecs.tiff_decode(data))
  except (imagecodecs.TiffError, ValueError, MemoryError) as e:
    raise fail(path, f"truncated or corrupt TIFF ({e})") from None
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim != 3 or not 1 <= x.shape[-1] <= 4 or 0 in x.shape:
    raise fail(path, f"unsupported TIFF layout (samples of shape {x.shape})")
  if np.issubdtype(x.dtype, np.floating):
    bad = np.count_nonzero(~np.isfinite(x))
    if bad:
      raise fail(path, f"contains {bad} NaN or infinite samples")
    x = np.clip(x.astype(np.float64), 0.0, 1.0)
  elif np.issubdtype(x.dtype, np.integer):
    x = np.clip(x.astype(np.float64) / np.iinfo(x.dtype).max, 0.0, 1.0)
  else:
    raise fail(path, f"unsupported TIFF sample type {x.dtype}")
  return x.astype(np.float32), orientation
