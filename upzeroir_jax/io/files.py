"""Reading and writing image files.

Images at this boundary are float32 `[H, W, 3]` arrays in [0, 1] (uint8 arrays are accepted as
input and scaled by 1/255). Reading covers PNG (8 and 16 bits per channel), JPEG, BMP, TIFF and
WebP. Choices made here:

- Every PNG passes one structural check first (`png.check`: CRCs, a single IHDR, IEND), the
  same for 8 and 16 bits; Pillow's decompression-bomb pixel limit applies to every format and
  both PNG depths (files over `2 · PIL.Image.MAX_IMAGE_PIXELS` pixels are refused). 8-bit PNGs and every other format are decoded by
  Pillow; 16-bit PNGs by libpng, because Pillow keeps only the high byte of 16-bit colour PNGs
  (colour TIFFs with 16 bits per channel are read at Pillow's 8-bit precision).
- The EXIF orientation tag is applied, so photos come out upright.
- Grayscale becomes three equal channels; an alpha channel (or a tRNS / palette transparency) is
  composited on a white background: `rgb · a + 1 · (1 − a)`.
- Multi-frame files (animated GIF/WebP, multi-page TIFF) give their first frame.
- Integer samples are scaled by their type's range (`pixels.to_float`); float TIFF samples must
  be finite and are clipped to [0, 1]. TIFFs Pillow cannot decode (float or 32-bit colour
  samples) are decoded by libtiff (`tiff`).
- Only regular files are read: a FIFO, device or socket is refused at once, never waited on.

Every failure to read (missing path, directory, permission, empty, truncated, corrupt, too
large, non-finite, or non-image file) raises `ImageError`, a `ValueError` whose one-line message
names the file and the problem. Every image returned is finite and in [0, 1].
"""

import contextlib
import io
import os
import pathlib
import struct
import zlib
from collections.abc import Iterator
from typing import BinaryIO

import numpy as np
from PIL import Image

from upzeroir_jax.io import atomic, grid, pixels, png, tiff
from upzeroir_jax.io.errors import ImageError, fail, kind_of

PathLike = str | os.PathLike

_EXIF_ORIENTATION = 0x0112
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError,
               TypeError, KeyError, MemoryError, Image.DecompressionBombError)
_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF",
                  ".tiff": "TIFF", ".webp": "WEBP"}
_NOT_AN_IMAGE = "not a recognised image file (PNG, JPEG, BMP, TIFF or WebP)"
IMAGE_SUFFIXES = frozenset(_WRITE_FORMATS)


def _orientation(im: Image.Image) -> int:
  """EXIF orientation of an opened image, read from its header only.

  For PNG only an eXIf chunk before the image data counts (Pillow would decode the whole image
  to look further), so `image_size` and `read_image` always agree.
  """
  if im.format == "PNG":
    exif = Image.Exif()
    if im.info.get("exif"):
      exif.load(im.info["exif"])
    return exif.get(_EXIF_ORIENTATION, 1)
  return im.getexif().get(_EXIF_ORIENTATION, 1)


def _os_problem(e: OSError) -> str:
  if isinstance(e, FileNotFoundError):
    return "no such file"
  if isinstance(e, PermissionError):
    return "cannot open (permission denied)"
  if isinstance(e, IsADirectoryError):
    return "is a directory, not an image file"
  return f"cannot read ({e.strerror or e})"


def _regular(path: PathLike) -> BinaryIO:
  """`path` opened for reading, refused at once unless it is a regular file (a FIFO is opened
  without blocking, then refused)."""
  p = pathlib.Path(path)
  try:
    fd = os.open(p, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
  except OSError as e:
    raise fail(path, _os_problem(e)) from None
  kind = kind_of(os.fstat(fd).st_mode)
  if kind is not None:
    os.close(fd)
    if kind == "a directory":
      raise fail(path, "is a directory, not an image file")
    raise fail(path, f"is {kind}, not a regular file")
  return os.fdopen(fd, "rb")


def _open(path: PathLike) -> tuple[bytes, png.Header | None]:
  """The whole file, and its PNG header (checked) when it is a PNG."""
  try:
    with _regular(path) as f:
      data = f.read()
  except OSError as e:
    raise fail(path, _os_problem(e)) from None
  if not data:
    raise fail(path, "empty file (0 bytes)")
  return data, png.check(data, path) if png.is_png(data) else None


@contextlib.contextmanager
def _decoding(path: PathLike) -> Iterator[None]:
  """Turns every failure of the block inside (OS, Pillow, decoder) into an `ImageError`."""
  try:
    yield
  except ImageError:
    raise
  except Image.UnidentifiedImageError:
    raise fail(path, _NOT_AN_IMAGE) from None
  except OSError as e:
    if e.errno is not None:
      raise fail(path, _os_problem(e)) from None
    raise fail(path, f"truncated or corrupt image ({e})") from None
  except _PIL_ERRORS as e:
    raise fail(path, f"truncated or corrupt image ({type(e).__name__}: {e})") from None


def read_image(path: PathLike) -> np.ndarray:
  """Reads an image file as upright RGB.

  Args:
    path: a PNG (8/16-bit), JPEG, BMP, TIFF or WebP file.

  Returns:
    float32 `[H, W, 3]`, finite, in [0, 1]; grayscale repeated over channels, alpha composited
    on white, the EXIF orientation applied (see the module docstring).

  Raises:
    ImageError: the path is missing, a directory, unreadable, empty, truncated, corrupt, too
      large, holds non-finite samples, or is not an image.
  """
  data, header = _open(path)
  with _decoding(path):
    if tiff.is_tiff(data) and not _pillow_reads(data):
      x, orientation = tiff.decode(data, path)
      return pixels.to_rgb(pixels.orient(x, orientation))
    with Image.open(io.BytesIO(data)) as im:
      orientation = _orientation(im)
      if header is not None and header.depth == 16:
        x = png.decode16(data, header, path)
      else:
        im.seek(0)
        im.load()
        x = pixels.to_float(im, path)
        if im.format == "TIFF":  # Pillow 13 and later orient TIFFs on load and drop the tag
          orientation = _orientation(im)
  return pixels.to_rgb(pixels.orient(x, orientation))


def _pillow_reads(data: bytes) -> bool:
  """Whether Pillow identifies the image in `data`."""
  try:
    with Image.open(io.BytesIO(data)):
      return True
  except Image.UnidentifiedImageError:
    return False


def image_size(path: PathLike) -> tuple[int, int]:
  """Upright `(H, W)` of an image file from its header (no pixel decoding).

  Raises:
    ImageError: as `read_image`, for files whose header cannot be read.
  """
  with _decoding(path), _regular(path) as f:
    head = f.read(8)
    if not head:
      raise fail(path, "empty file (0 bytes)")
    f.seek(0)
    if tiff.is_tiff(head) and not _pillow_reads(f.read()):
      height, width = read_image(path).shape[:2]
      return height, width
    f.seek(0)
    with Image.open(f) as im:
      width, height = im.size
      stored = (im.tag_v2.get(256), im.tag_v2.get(257)) if im.format == "TIFF" else im.size
      # Pillow (13 and later) gives TIFFs their upright size already.
      swap = _orientation(im) in (5, 6, 7, 8) and im.size == stored
  return (width, height) if swap else (height, width)


def write_image(path: PathLike, img: np.ndarray, bits: int = 8, quality: int = 95) -> None:
  """Writes an RGB image; the format follows the file suffix.

  Values are clipped to [0, 1] and rounded to the nearest code. The file appears atomically
  (`atomic.write`: a private temporary file beside it, then renamed), so an interrupted run never
  leaves half an image and a planted file or symlink is never followed. Parent folders are
  created.

  Args:
    path: .png, .jpg/.jpeg (quality `quality`), .bmp, .tif/.tiff or .webp (lossless).
    img: float `[H, W, 3]` in [0, 1] (or uint8, or `[H, W]` grayscale).
    bits: 8, or 16 for a 16-bit PNG.
    quality: JPEG quality.

  Raises:
    ValueError: unknown suffix, 16 bits for a non-PNG file, or a malformed image array.
    atomic.WriteError: the file cannot be written (the message names `path`).
  """
  p = pathlib.Path(path)
  fmt = _WRITE_FORMATS.get(p.suffix.lower())
  if fmt is None:
    raise ValueError(f"{p}: unknown image suffix {p.suffix!r}; use one of "
                     f"{', '.join(sorted(_WRITE_FORMATS))}")
  if bits not in (8, 16) or (bits == 16 and fmt != "PNG"):
    raise ValueError(f"{p}: bits={bits} is not supported; 16 bits needs a .png file")
  x = np.clip(grid.as_float_image(img), 0.0, 1.0)
  if bits == 16:
    data = png.encode16(np.round(x * 65535.0).astype(np.uint16))
    atomic.write(p, lambda f: f.write(data))
  else:
    options = {"JPEG": {"quality": quality}, "WEBP": {"lossless": True}}.get(fmt, {})
    image = Image.fromarray(np.round(x * 255.0).astype(np.uint8))
    atomic.write(p, lambda f: image.save(f, format=fmt, **options))
