"""Image files in and out, and the map between any image and the model's input grid.

Images at this boundary are float32 `[H, W, 3]` arrays in [0, 1] (uint8 arrays are accepted as
input and scaled by 1/255). Reading covers PNG (8 and 16 bits per channel), JPEG, BMP, TIFF and
WebP through Pillow. Choices made here:

- 16-bit PNGs are decoded by this module (zlib + the five PNG row filters + Adam7), because
  Pillow keeps only the high byte of 16-bit colour PNGs; every other format goes through Pillow
  (colour TIFFs with 16 bits per channel are read at Pillow's 8-bit precision).
- The EXIF orientation tag is applied, so photos come out upright.
- Grayscale becomes three equal channels; an alpha channel (or a tRNS / palette transparency) is
  composited on a white background: `rgb · a + 1 · (1 − a)`.
- Multi-frame files (animated GIF/WebP, multi-page TIFF) give their first frame.

Every failure to read (missing path, directory, empty, truncated, corrupt, or non-image file)
raises `ImageError`, a `ValueError` whose one-line message names the file and the problem.
"""

from __future__ import annotations

import dataclasses
import math
import os
import pathlib
import struct
import zlib
from typing import Literal

import numpy as np
from PIL import Image

PathLike = str | os.PathLike

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_CHANNELS = {0: 1, 2: 3, 4: 2, 6: 4}  # colour type -> samples per pixel
# Adam7 passes as (first row, first column, row step, column step).
_ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2),
          (1, 0, 2, 1))
_EXIF_ORIENTATION = 0x0112
_PIL_ERRORS = (OSError, SyntaxError, ValueError, EOFError, struct.error, zlib.error, IndexError,
               Image.DecompressionBombError)
_WRITE_FORMATS = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".tif": "TIFF",
                  ".tiff": "TIFF", ".webp": "WEBP"}
IMAGE_SUFFIXES = frozenset(_WRITE_FORMATS)


class ImageError(ValueError):
  """An image file that cannot be read; the message is one line naming the file."""


@dataclasses.dataclass(frozen=True)
class GridMeta:
  """How `to_model_grid` changed an image, so that `from_model_grid` can undo it.

  Attributes:
    height: original height H.
    width: original width W.
    mode: "resize" (stretched to a square grid) or "pad" (reflect-padded at bottom and right).
  """
  height: int
  width: int
  mode: str


def _fail(path: PathLike, problem: str) -> ImageError:
  return ImageError(f"{os.fspath(path)}: {' '.join(problem.split())}")


def _png_header(path: pathlib.Path) -> tuple[int, int] | None:
  """(bit depth, colour type) of a PNG file, or None when it is not a PNG."""
  with open(path, "rb") as f:
    head = f.read(29)
  if len(head) < 29 or head[:8] != _PNG_SIGNATURE or head[12:16] != b"IHDR":
    return None
  return head[24], head[25]


def _png_chunks(data: bytes, path: PathLike) -> dict[bytes, bytes]:
  """IHDR, tRNS and the concatenated IDAT payloads of a PNG byte string, CRCs checked."""
  chunks = {b"IDAT": b""}
  pos = len(_PNG_SIGNATURE)
  while True:
    if pos + 8 > len(data):
      raise _fail(path, "truncated PNG (no IEND chunk)")
    length, kind = struct.unpack(">I4s", data[pos:pos + 8])
    body = data[pos + 8:pos + 8 + length]
    crc = data[pos + 8 + length:pos + 12 + length]
    if len(body) < length or len(crc) < 4:
      raise _fail(path, f"truncated PNG (inside a {kind.decode('latin-1')} chunk)")
    if struct.unpack(">I", crc)[0] != zlib.crc32(kind + body):
      raise _fail(path, f"corrupt PNG (CRC mismatch in a {kind.decode('latin-1')} chunk)")
    if kind == b"IEND":
      return chunks
    chunks[kind] = chunks[kind] + body if kind == b"IDAT" else body
    pos += 12 + length


def _unfilter_rows(raw: np.ndarray, filters: np.ndarray, prev: np.ndarray) -> np.ndarray:
  """Row-by-row reconstruction for rows filtered None (0), Sub (1) or Up (2) only."""
  out = np.empty_like(raw)
  for r in range(raw.shape[0]):
    if filters[r] == 1:
      out[r] = np.cumsum(raw[r], axis=0, dtype=np.uint8)  # uint8 sums wrap modulo 256
    else:
      out[r] = raw[r] + prev if filters[r] == 2 else raw[r]
    prev = out[r]
  return out


def _unfilter_diagonals(raw: np.ndarray, filters: np.ndarray, prev: np.ndarray) -> np.ndarray:
  """Reconstruction for any filter mix, one vectorised step per anti-diagonal k = r + c.

  Pixel (r, c) depends on its left, upper and upper-left neighbours only, so each diagonal
  follows from the two before it; the rows are stored skewed so that a diagonal is one slice.
  """
  n, w, bpp = raw.shape
  i = np.arange(n)[None, :]
  col = np.arange(n + w - 1)[:, None] - i  # [k, i] -> column of row i on diagonal k
  valid = (col >= 0) & (col < w)
  skew = np.zeros((n + w - 1, n, bpp), np.int16)
  skew[valid] = raw[np.broadcast_to(i, col.shape)[valid], col[valid]]
  # rec[k + 2, i + 1] holds row i at column k − i; rec[:, 0] is the row above.
  rec = np.zeros((n + w + 1, n + 1, bpp), np.int16)
  rec[1:w + 1, 0] = prev
  f = filters[:, None]
  present = set(np.unique(filters).tolist())
  for k in range(n + w - 1):
    left, up, up_left = rec[k + 1, 1:], rec[k + 1, :-1], rec[k, :-1]
    pred = np.where(f == 1, left, np.where(f == 2, up, 0))
    if 3 in present:
      pred = np.where(f == 3, (left + up) // 2, pred)
    if 4 in present:
      p = left + up - up_left
      pa, pb, pc = np.abs(p - left), np.abs(p - up), np.abs(p - up_left)
      paeth = np.where((pa <= pb) & (pa <= pc), left, np.where(pb <= pc, up, up_left))
      pred = np.where(f == 4, paeth, pred)
    rec[k + 2, 1:] = np.where(valid[k][:, None], (skew[k] + pred) & 255, 0)
  rows = np.arange(n)[:, None]
  return rec[np.arange(w)[None, :] + rows + 2, rows + 1].astype(np.uint8)


def _png_unfilter(raw: np.ndarray, filters: np.ndarray, path: PathLike,
                  band: int = 512) -> np.ndarray:
  """Undoes the PNG row filters of one (sub-)image, in bands of rows.

  Bands with only None/Sub/Up rows are reconstructed row by row; bands with Average or Paeth
  rows diagonal by diagonal (about band + W vectorised steps per band).

  Args:
    raw: uint8 `[h, w, bpp]` filtered bytes, bpp bytes per pixel.
    filters: uint8 `[h]` filter type of each row (0 None, 1 Sub, 2 Up, 3 Average, 4 Paeth).
    path: for error messages.
    band: rows per band (bounds the memory of the skewed copies).

  Returns:
    uint8 `[h, w, bpp]` reconstructed bytes.
  """
  if filters.size and filters.max() > 4:
    raise _fail(path, f"corrupt PNG (unknown row filter type {int(filters.max())})")
  out = np.empty_like(raw)
  prev = np.zeros(raw.shape[1:], np.uint8)
  for r0 in range(0, raw.shape[0], band):
    rows = slice(r0, r0 + band)
    simple = filters[rows].max() <= 2
    unfilter = _unfilter_rows if simple else _unfilter_diagonals
    out[rows] = unfilter(raw[rows], filters[rows], prev)
    prev = out[min(r0 + band, raw.shape[0]) - 1]
  return out


def _read_png16(path: pathlib.Path) -> np.ndarray:
  """Decodes a 16-bit PNG to float32 `[H, W, C]` in [0, 1], C = 1–4 samples (alpha last)."""
  data = path.read_bytes()
  chunks = _png_chunks(data, path)
  if b"IHDR" not in chunks:
    raise _fail(path, "corrupt PNG (no IHDR chunk)")
  width, height, depth, ctype, _, _, interlace = struct.unpack(">IIBBBBB", chunks[b"IHDR"])
  if ctype not in _PNG_CHANNELS or depth != 16 or width == 0 or height == 0:
    raise _fail(path, f"corrupt PNG header (colour type {ctype}, {depth} bits, {width}x{height})")
  channels = _PNG_CHANNELS[ctype]
  try:
    stream = zlib.decompress(chunks[b"IDAT"])
  except zlib.error as e:
    raise _fail(path, f"truncated or corrupt PNG image data ({e})") from None
  passes = _ADAM7 if interlace else ((0, 0, 1, 1),)
  out = np.zeros((height, width, channels), np.uint16)
  pos = 0
  for r0, c0, dr, dc in passes:
    ph, pw = max(0, -(-(height - r0) // dr)), max(0, -(-(width - c0) // dc))
    if ph == 0 or pw == 0:
      continue
    size = ph * (1 + pw * channels * 2)
    block = np.frombuffer(stream, np.uint8, size, pos) if pos + size <= len(stream) else None
    if block is None:
      raise _fail(path, "truncated PNG image data")
    pos += size
    block = block.reshape(ph, -1)
    rec = _png_unfilter(block[:, 1:].reshape(ph, pw, channels * 2), block[:, 0], path)
    out[r0::dr, c0::dc] = rec.reshape(ph, pw, channels, 2).astype(np.uint16) @ np.array(
        [256, 1], np.uint16)
  if b"tRNS" in chunks and ctype in (0, 2):
    key = np.frombuffer(chunks[b"tRNS"][:2 * channels], ">u2")
    alpha = np.where(np.all(out == key, axis=-1), 0, 65535).astype(np.uint16)
    out = np.concatenate([out, alpha[..., None]], axis=-1)
  return out.astype(np.float32) / 65535.0


def _pil_to_float(im: Image.Image) -> np.ndarray:
  """A loaded Pillow image as float32 `[H, W, C]` in [0, 1], C in {1, 3, 4} (alpha last)."""
  if im.mode.startswith("I;16"):
    return np.asarray(im, np.float32)[..., None] / 65535.0
  if im.mode == "I":
    return np.clip(np.asarray(im, np.float32) / 65535.0, 0.0, 1.0)[..., None]
  if im.mode == "F":
    return np.clip(np.asarray(im, np.float32), 0.0, 1.0)[..., None]
  if im.mode in ("1", "L"):
    return np.asarray(im.convert("L"), np.float32)[..., None] / 255.0
  has_alpha = "A" in im.mode or "a" in im.mode or "transparency" in im.info
  return np.asarray(im.convert("RGBA" if has_alpha else "RGB"), np.float32) / 255.0


def _to_rgb(x: np.ndarray) -> np.ndarray:
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


def read_image(path: PathLike) -> np.ndarray:
  """Reads an image file as upright RGB.

  Args:
    path: a PNG (8/16-bit), JPEG, BMP, TIFF or WebP file.

  Returns:
    float32 `[H, W, 3]` in [0, 1]; grayscale repeated over channels, alpha composited on white,
    the EXIF orientation applied (see the module docstring).

  Raises:
    ImageError: the path is missing, a directory, empty, truncated, corrupt or not an image.
  """
  p = pathlib.Path(path)
  if not p.exists():
    raise _fail(path, "no such file")
  if p.is_dir():
    raise _fail(path, "is a directory, not an image file")
  try:
    if p.stat().st_size == 0:
      raise _fail(path, "empty file (0 bytes)")
    header = _png_header(p)
    with Image.open(p) as im:
      orientation = _orientation(im)
      if header is not None and header[0] == 16:
        pixels = _read_png16(p)
      else:
        im.seek(0)
        im.load()
        pixels = _pil_to_float(im)
  except ImageError:
    raise
  except PermissionError:
    raise _fail(path, "cannot open (permission denied)") from None
  except Image.UnidentifiedImageError:
    raise _fail(path, "not a recognised image file (PNG, JPEG, BMP, TIFF or WebP)") from None
  except _PIL_ERRORS as e:
    raise _fail(path, f"truncated or corrupt image ({e})") from None
  return _to_rgb(orient(pixels, orientation))


def image_size(path: PathLike) -> tuple[int, int]:
  """Upright `(H, W)` of an image file from its header (no pixel decoding).

  Raises:
    ImageError: as `read_image`, for files whose header cannot be read.
  """
  p = pathlib.Path(path)
  if not p.is_file():
    raise _fail(path, "is a directory, not an image file" if p.is_dir() else "no such file")
  try:
    with Image.open(p) as im:
      width, height = im.size
      swap = _orientation(im) in (5, 6, 7, 8)
  except Image.UnidentifiedImageError:
    if p.stat().st_size == 0:
      raise _fail(path, "empty file (0 bytes)") from None
    raise _fail(path, "not a recognised image file (PNG, JPEG, BMP, TIFF or WebP)") from None
  except PermissionError:
    raise _fail(path, "cannot open (permission denied)") from None
  except _PIL_ERRORS as e:
    raise _fail(path, f"truncated or corrupt image ({e})") from None
  return (width, height) if swap else (height, width)


def _as_float_image(img: np.ndarray, name: str = "image") -> np.ndarray:
  """float32 `[H, W, 3]` from float [0,1] or uint8, `[H, W]`, `[H, W, 1]` or `[H, W, 3]`."""
  x = np.asarray(img)
  x = x.astype(np.float32) / 255.0 if x.dtype == np.uint8 else x.astype(np.float32)
  if x.ndim == 2:
    x = x[..., None]
  if x.ndim != 3 or x.shape[-1] not in (1, 3) or x.shape[0] == 0 or x.shape[1] == 0:
    raise ValueError(f"{name} must be [H, W, 3] (or [H, W] grayscale), got shape {x.shape}")
  if not np.all(np.isfinite(x)):
    raise ValueError(f"{name} contains NaN or infinite values")
  return np.repeat(x, 3, axis=-1) if x.shape[-1] == 1 else x


def _png16_bytes(rgb16: np.ndarray) -> bytes:
  """A 16-bit RGB PNG file (every row "Up"-filtered) of uint16 `[H, W, 3]`."""
  h, w, _ = rgb16.shape
  rows = rgb16.astype(">u2").view(np.uint8).reshape(h, w * 6)
  up = rows.copy()
  up[1:] -= rows[:-1]  # uint8 arithmetic wraps modulo 256, as the filter requires
  raw = np.concatenate([np.full((h, 1), 2, np.uint8), up], axis=1).tobytes()

  def chunk(kind: bytes, body: bytes) -> bytes:
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

  ihdr = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
  return (_PNG_SIGNATURE + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(raw, 6)) +
          chunk(b"IEND", b""))


def write_image(path: PathLike, img: np.ndarray, bits: int = 8, quality: int = 95) -> None:
  """Writes an RGB image; the format follows the file suffix.

  Values are clipped to [0, 1] and rounded to the nearest code. The file appears atomically
  (written beside it, then renamed), so an interrupted run never leaves half an image. Parent
  folders are created.

  Args:
    path: .png, .jpg/.jpeg (quality `quality`), .bmp, .tif/.tiff or .webp (lossless).
    img: float `[H, W, 3]` in [0, 1] (or uint8, or `[H, W]` grayscale).
    bits: 8, or 16 for a 16-bit PNG.
    quality: JPEG quality.

  Raises:
    ValueError: unknown suffix, 16 bits for a non-PNG file, or a malformed image array.
  """
  p = pathlib.Path(path)
  fmt = _WRITE_FORMATS.get(p.suffix.lower())
  if fmt is None:
    raise ValueError(f"{p}: unknown image suffix {p.suffix!r}; use one of "
                     f"{', '.join(sorted(_WRITE_FORMATS))}")
  if bits not in (8, 16) or (bits == 16 and fmt != "PNG"):
    raise ValueError(f"{p}: bits={bits} is not supported; 16 bits needs a .png file")
  x = np.clip(_as_float_image(img), 0.0, 1.0)
  p.parent.mkdir(parents=True, exist_ok=True)
  tmp = p.with_name(f".{p.name}.{os.getpid()}.tmp")
  try:
    if bits == 16:
      tmp.write_bytes(_png16_bytes(np.round(x * 65535.0).astype(np.uint16)))
    else:
      options = {"JPEG": {"quality": quality}, "WEBP": {"lossless": True}}.get(fmt, {})
      Image.fromarray(np.round(x * 255.0).astype(np.uint8)).save(tmp, format=fmt, **options)
    os.replace(tmp, p)
  finally:
    tmp.unlink(missing_ok=True)


def _resize(x: np.ndarray, height: int, width: int) -> np.ndarray:
  """Bicubic resize of float `[H, W, C]` (antialiased when shrinking), clipped to [0, 1]."""
  if x.shape[:2] == (height, width):
    return x.astype(np.float32)
  chans = [np.asarray(Image.fromarray(np.ascontiguousarray(x[..., c], np.float32)).resize(
      (width, height), Image.Resampling.BICUBIC)) for c in range(x.shape[-1])]
  return np.clip(np.stack(chans, axis=-1), 0.0, 1.0).astype(np.float32)


def grid_shape(height: int, width: int, size: int = 512, mode: str = "resize",
               multiple: int = 64) -> tuple[int, int]:
  """The model-grid `(H', W')` that `to_model_grid` gives an `H x W` image."""
  if mode == "resize":
    return size, size
  if mode == "pad":
    return multiple * math.ceil(height / multiple), multiple * math.ceil(width / multiple)
  raise ValueError(f"grid mode must be 'resize' or 'pad', got {mode!r}")


def to_model_grid(img: np.ndarray, size: int = 512,
                  mode: Literal["resize", "pad"] = "resize",
                  multiple: int = 64) -> tuple[np.ndarray, GridMeta]:
  """Brings an image of any size onto the model's input grid.

  "resize" stretches it to `size x size` (bicubic, antialiased when shrinking), as the original
  method feeds 512 x 512 inputs to SD. "pad" keeps every pixel: reflect padding at the bottom
  and right up to the next multiple of `multiple` (64 = the VAE's 8 x the UNet's 8), repeating
  the reflection for images smaller than the padding; METHOD §3 rescales the guidance weight
  by the grid's pixel count in that mode.

  Args:
    img: float `[H, W, 3]` in [0, 1] (or uint8).
    size: side of the square grid in "resize" mode (unused in "pad" mode).
    mode: "resize" or "pad".
    multiple: grid sizes in "pad" mode are multiples of this.

  Returns:
    (float32 `[H', W', 3]` grid image, GridMeta for `from_model_grid`).
  """
  x = _as_float_image(img)
  h, w, _ = x.shape
  gh, gw = grid_shape(h, w, size, mode, multiple)
  if mode == "resize":
    out = _resize(x, gh, gw)
  else:
    out = np.pad(x, ((0, gh - h), (0, gw - w), (0, 0)), mode="reflect")
  return out, GridMeta(height=h, width=w, mode=mode)


def from_model_grid(out: np.ndarray, meta: GridMeta) -> np.ndarray:
  """Inverse of `to_model_grid`: crops ("pad") or resizes back ("resize") to the original size.

  Args:
    out: float `[H', W', 3]` image on the model grid (numpy or jax).
    meta: the GridMeta `to_model_grid` returned for the input.

  Returns:
    float32 `[meta.height, meta.width, 3]` in [0, 1].
  """
  x = _as_float_image(out, "model output")
  if meta.mode == "pad":
    if x.shape[0] < meta.height or x.shape[1] < meta.width:
      raise ValueError(f"model output {x.shape} is smaller than the original "
                       f"{meta.height}x{meta.width}")
    return np.ascontiguousarray(np.clip(x[:meta.height, :meta.width], 0.0, 1.0))
  return _resize(x, meta.height, meta.width)
