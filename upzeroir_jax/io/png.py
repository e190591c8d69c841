"""PNG files: one structural check for every bit depth, and 16-bit decoding through libpng.

`check` walks the chunk list once (linear in the file size) and applies the same rules to
8- and 16-bit files, stricter than Pillow alone: the signature, exactly one IHDR and it first,
every chunk's CRC (image data included), at least one IDAT and an IEND. Decoding stays with
well-kept libraries: Pillow for 8-bit files, libpng (through `imagecodecs`) for 16-bit ones,
because Pillow keeps only the high byte of 16-bit colour PNGs; libpng is handed only the
chunks that decoding uses (no text chunks, whose defects it reports on stderr). Both bit depths are opened by
Pillow first, whose decompression-bomb check (more than `2 · PIL.Image.MAX_IMAGE_PIXELS` pixels
is an error) then applies to the one IHDR there is; libpng decodes no more rows than that IHDR
declares, so the limit bounds memory at both depths.
"""

import dataclasses
import os
import struct
import zlib

import imagecodecs
import numpy as np

from upzeroir_jax.io.errors import fail

SIGNATURE = b"\x89PNG\r\n\x1a\n"
_COLOUR_TYPES = (0, 2, 3, 4, 6)
_DECODED = (b"IHDR", b"PLTE", b"tRNS", b"IDAT", b"IEND")  # the chunks `decode16` hands libpng


@dataclasses.dataclass(frozen=True)
class Header:
  """The IHDR facts a reader needs: size, bit depth and PNG colour type."""
  width: int
  height: int
  depth: int
  colour_type: int


def is_png(data: bytes) -> bool:
  """True when `data` starts with the PNG signature."""
  return data[:len(SIGNATURE)] == SIGNATURE


def check(data: bytes, path: str | os.PathLike) -> Header:
  """Validates the chunk structure of a PNG byte string (see the module docstring).

  Args:
    data: the whole file.
    path: named in errors.

  Returns:
    The IHDR header.

  Raises:
    ImageError: a structural problem.
  """
  view = memoryview(data)
  pos, header, idat = len(SIGNATURE), None, False
  while True:
    if pos + 8 > len(data):
      raise fail(path, "truncated PNG (no IEND chunk)")
    length, kind = struct.unpack_from(">I4s", data, pos)
    name = kind.decode("latin-1")
    end = pos + 12 + length
    if end > len(data):
      raise fail(path, f"truncated PNG (inside a {name!r} chunk)")
    body = view[pos + 8:pos + 8 + length]
    if struct.unpack_from(">I", data, end - 4)[0] != zlib.crc32(body, zlib.crc32(kind)):
      raise fail(path, f"corrupt PNG (CRC mismatch in a {name!r} chunk)")
    if (kind == b"IHDR") != (header is None):
      raise fail(path, "corrupt PNG (IHDR is not the first chunk, or appears twice)")
    if kind == b"IHDR":
      header = _header(body, path)
    idat |= kind == b"IDAT"
    if kind == b"IEND":
      break
    pos = end
  if not idat:
    raise fail(path, "corrupt PNG (no image data)")
  return header


def _header(body: memoryview, path: str | os.PathLike) -> Header:
  if len(body) != 13:
    raise fail(path, "corrupt PNG (IHDR of the wrong length)")
  width, height, depth, ctype = struct.unpack_from(">IIBB", body)
  if width == 0 or height == 0 or ctype not in _COLOUR_TYPES or depth not in (1, 2, 4, 8, 16):
    raise fail(path, f"corrupt PNG header ({width}x{height}, colour type {ctype}, {depth} bits)")
  return Header(width, height, depth, ctype)


def _essential(data: bytes) -> bytes:
  """A checked PNG without the chunks decoding does not use (text, EXIF, ...): libpng warns on
  stderr once for every malformed text chunk, and a file may hold a million of them."""
  view = memoryview(data)
  out, pos, kind = [SIGNATURE], len(SIGNATURE), b""
  while kind != b"IEND":
    length, kind = struct.unpack_from(">I4s", data, pos)
    end = pos + 12 + length
    if kind in _DECODED:
      out.append(view[pos:end])
    pos = end
  return b"".join(out)


def decode16(data: bytes, header: Header, path: str | os.PathLike) -> np.ndarray:
  """Decodes a checked 16-bit PNG with libpng.

  Returns:
    float32 `[H, W, C]` in [0, 1], C = 1–4 samples as stored (alpha last); a tRNS key colour
    becomes an alpha channel (0 at the key, 1 elsewhere).
  """
  try:
    pixels = imagecodecs.png_decode(_essential(data))
  except (imagecodecs.PngError, ValueError, MemoryError) as e:
    raise fail(path, f"truncated or corrupt PNG image data ({e})") from None
  if pixels.dtype != np.uint16 or pixels.shape[:2] != (header.height, header.width):
    raise fail(path, f"corrupt PNG (decoded {pixels.dtype} {pixels.shape}, header says "
                     f"{header.height}x{header.width} at 16 bits)")
  return pixels.reshape(header.height, header.width, -1).astype(np.float32) / 65535.0


def encode16(rgb16: np.ndarray) -> bytes:
  """A 16-bit RGB PNG file of uint16 `[H, W, 3]` (libpng)."""
  return imagecodecs.png_encode(np.ascontiguousarray(rgb16, np.uint16))
