"""Image I/O: formats, bit depth, orientation, alpha, errors, and the model-grid round trip."""

import struct
import zlib

import numpy as np
import pytest
from PIL import Image, ImageOps

from upzeroir_jax import io

ADAM7 = ((0, 0, 8, 8), (0, 4, 8, 8), (4, 0, 8, 4), (0, 2, 4, 4), (2, 0, 4, 2), (0, 1, 2, 2),
         (1, 0, 2, 1))


def _filter_rows(sub: np.ndarray, cycle: int = 5) -> bytes:
  """PNG-filters a uint16 [h, w, C] image byte by byte, cycling through filter types 0..cycle-1."""
  h = sub.shape[0]
  bpp = sub.shape[2] * 2
  rows = [bytes(sub[r].astype(">u2").tobytes()) for r in range(h)]
  out = bytearray()
  prev = bytes(len(rows[0]))
  for r, row in enumerate(rows):
    ftype = r % cycle
    out.append(ftype)
    for i, x in enumerate(row):
      a = row[i - bpp] if i >= bpp else 0
      b = prev[i]
      c = prev[i - bpp] if i >= bpp else 0
      if ftype == 0:
        pred = 0
      elif ftype == 1:
        pred = a
      elif ftype == 2:
        pred = b
      elif ftype == 3:
        pred = (a + b) // 2
      else:
        p = a + b - c
        pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
        pred = a if pa <= pb and pa <= pc else (b if pb <= pc else c)
      out.append((x - pred) % 256)
    prev = row
  return bytes(out)


def _png16(arr: np.ndarray, ctype: int, interlace: bool = False, trns: bytes = b"",
           cycle: int = 5) -> bytes:
  """A 16-bit PNG written from scratch (independent of the reader under test)."""
  h, w, _ = arr.shape
  if interlace:
    raw = b"".join(_filter_rows(arr[r0::dr, c0::dc], cycle) for r0, c0, dr, dc in ADAM7
                   if arr[r0::dr, c0::dc].size)
  else:
    raw = _filter_rows(arr, cycle)

  def chunk(kind, body):
    return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

  ihdr = struct.pack(">IIBBBBB", w, h, 16, ctype, 0, 0, int(interlace))
  extra = chunk(b"tRNS", trns) if trns else b""
  return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + extra +
          chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _random16(shape, seed=0):
  rng = np.random.default_rng(seed)
  v = rng.integers(0, 65536, size=shape, dtype=np.uint16)
  v[v % 257 == 0] += 1  # no value representable in 8 bits (k * 257)
  return v


def _smooth(h, w):
  """A smooth test image; along a side of a few pixels it changes by 0.02 per pixel at most."""
  yy, xx = (np.linspace(0, min(1, 0.05 * (n - 1)), n) for n in (h, w))
  yy, xx = np.meshgrid(yy, xx, indexing="ij")
  return np.stack([0.5 + 0.4 * np.sin(3 * xx + 2 * yy), 0.3 + 0.5 * yy * xx,
                   0.2 + 0.6 * xx], axis=-1).astype(np.float32)


@pytest.mark.parametrize("interlace,shape,cycle", [
    (False, (13, 11, 3), 5), (True, (13, 11, 3), 5), (False, (10, 9, 3), 3),
    (False, (1030, 2, 3), 5)])  # cycle 3: None/Sub/Up rows only; 1030 rows: 3 bands of 512
def test_png16_rgb_read_exactly(tmp_path, interlace, shape, cycle):
  v = _random16(shape)
  path = tmp_path / "x.png"
  path.write_bytes(_png16(v, 2, interlace, cycle=cycle))
  got = io.read_image(path)
  assert got.dtype == np.float32 and got.shape == shape
  np.testing.assert_array_equal(np.round(got.astype(np.float64) * 65535).astype(np.uint16), v)
  np.testing.assert_allclose(got, v / 65535.0, rtol=0, atol=1e-7)


def test_png16_gray_and_alpha_composited_on_white(tmp_path):
  gray = _random16((6, 9, 1), seed=1)
  (tmp_path / "g.png").write_bytes(_png16(gray, 0))
  np.testing.assert_allclose(io.read_image(tmp_path / "g.png"),
                             np.repeat(gray / 65535.0, 3, axis=-1), atol=1e-7)
  rgba = _random16((5, 7, 4), seed=2)
  (tmp_path / "a.png").write_bytes(_png16(rgba, 6, interlace=True))
  a = rgba[..., 3:] / 65535.0
  want = rgba[..., :3] / 65535.0 * a + (1.0 - a)
  np.testing.assert_allclose(io.read_image(tmp_path / "a.png"), want, atol=1e-6)
  ga = _random16((4, 4, 2), seed=3)
  (tmp_path / "ga.png").write_bytes(_png16(ga, 4))
  a = ga[..., 1:] / 65535.0
  np.testing.assert_allclose(io.read_image(tmp_path / "ga.png"),
                             np.repeat(ga[..., :1] / 65535.0 * a + 1 - a, 3, -1), atol=1e-6)


def test_png16_trns_key_colour_becomes_white(tmp_path):
  v = _random16((4, 5, 3), seed=4)
  v[1, 2] = (1000, 2000, 3001)
  (tmp_path / "t.png").write_bytes(_png16(v, 2, trns=struct.pack(">HHH", 1000, 2000, 3001)))
  want = v / 65535.0
  want[1, 2] = 1.0
  np.testing.assert_allclose(io.read_image(tmp_path / "t.png"), want, atol=1e-7)


def test_write_16bit_png_keeps_precision(tmp_path):
  v = _random16((9, 14, 3), seed=5)
  io.write_image(tmp_path / "o.png", v / 65535.0, bits=16)
  got = io.read_image(tmp_path / "o.png")
  np.testing.assert_array_equal(np.round(got.astype(np.float64) * 65535).astype(np.uint16), v)


def test_write_8bit_png_read_by_pillow(tmp_path):
  x = _smooth(21, 17)
  io.write_image(tmp_path / "sub" / "o.png", x)
  with Image.open(tmp_path / "sub" / "o.png") as im:
    assert im.mode == "RGB"
    np.testing.assert_array_equal(np.asarray(im), np.round(x * 255).astype(np.uint8))
  io.write_image(tmp_path / "o.jpg", x)
  with Image.open(tmp_path / "o.jpg") as im:
    assert im.format == "JPEG"
    assert np.abs(np.asarray(im) / 255.0 - x).mean() < 0.01


def test_write_rejects_bad_requests(tmp_path):
  with pytest.raises(ValueError, match="16 bits"):
    io.write_image(tmp_path / "o.jpg", np.zeros((2, 2, 3)), bits=16)
  with pytest.raises(ValueError, match="suffix"):
    io.write_image(tmp_path / "o.xyz", np.zeros((2, 2, 3)))
  with pytest.raises(ValueError, match="NaN"):
    io.write_image(tmp_path / "o.png", np.full((2, 2, 3), np.nan))


@pytest.mark.parametrize("fmt,suffix,kw,tol", [
    ("BMP", ".bmp", {}, 0), ("TIFF", ".tif", {}, 0), ("WEBP", ".webp", {"lossless": True}, 0),
    ("JPEG", ".jpg", {"quality": 98}, 0.01), ("PNG", ".png", {}, 0)])
def test_read_formats(tmp_path, fmt, suffix, kw, tol):
  u8 = np.round(_smooth(19, 23) * 255).astype(np.uint8)
  path = tmp_path / f"x{suffix}"
  Image.fromarray(u8).save(path, format=fmt, **kw)
  got = io.read_image(path)
  assert got.shape == (19, 23, 3) and got.dtype == np.float32
  assert np.abs(got - u8 / 255.0).mean() <= tol + 1e-7


def test_grayscale_8bit_becomes_three_channels(tmp_path):
  g = np.arange(35, dtype=np.uint8).reshape(5, 7) * 7
  Image.fromarray(g, mode="L").save(tmp_path / "g.png")
  got = io.read_image(tmp_path / "g.png")
  np.testing.assert_allclose(got, np.repeat(g[..., None] / 255.0, 3, -1), atol=1e-7)


def test_rgba_8bit_composited_on_white_by_hand(tmp_path):
  px = np.array([[[200, 100, 50, 64], [10, 20, 30, 255], [0, 0, 0, 0]]], np.uint8)
  Image.fromarray(px, mode="RGBA").save(tmp_path / "a.png")
  got = io.read_image(tmp_path / "a.png")
  a = 64 / 255
  want = np.array([[[200 / 255 * a + 1 - a, 100 / 255 * a + 1 - a, 50 / 255 * a + 1 - a],
                    [10 / 255, 20 / 255, 30 / 255], [1.0, 1.0, 1.0]]])
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_exif_rotated_jpeg_is_read_upright(tmp_path):
  upright = np.zeros((48, 32, 3), np.uint8)  # H=48, W=32; red top half, blue bottom-left
  upright[:24] = (230, 20, 20)
  upright[24:, :16] = (20, 20, 230)
  upright[24:, 16:] = (20, 200, 20)
  stored = np.rot90(upright, 1)  # orientation 6: the viewer turns it 90 degrees clockwise
  exif = Image.Exif()
  exif[0x0112] = 6
  Image.fromarray(np.ascontiguousarray(stored)).save(tmp_path / "r.jpg", quality=100, exif=exif)
  got = io.read_image(tmp_path / "r.jpg")
  assert got.shape == (48, 32, 3) and io.image_size(tmp_path / "r.jpg") == (48, 32)
  assert np.abs(got - upright / 255.0).mean() < 0.02


@pytest.mark.parametrize("orientation", range(1, 9))
def test_orientation_matches_pillow_exif_transpose(tmp_path, orientation):
  u8 = np.random.default_rng(orientation).integers(0, 256, (5, 8, 3), dtype=np.uint8)
  exif = Image.Exif()
  exif[0x0112] = orientation
  Image.fromarray(u8).save(tmp_path / "o.png", exif=exif)
  with Image.open(tmp_path / "o.png") as im:
    want = np.asarray(ImageOps.exif_transpose(im).convert("RGB")) / 255.0
  np.testing.assert_allclose(io.read_image(tmp_path / "o.png"), want, atol=1e-7)
  assert io.image_size(tmp_path / "o.png") == want.shape[:2]


def _truncated(tmp_path, name, fmt):
  path = tmp_path / name
  u8 = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
  Image.fromarray(u8).save(path, format=fmt)
  path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
  return path


def _written(path, data: bytes):
  path.write_bytes(data)
  return path


@pytest.mark.parametrize("make", [
    lambda d: d / "missing.png",
    lambda d: d,
    lambda d: _written(d / "empty.png", b""),
    lambda d: _written(d / "text.jpg", b"hello, not an image\n"),
    lambda d: _truncated(d, "t.png", "PNG"),
    lambda d: _truncated(d, "t.jpg", "JPEG"),
    lambda d: _written(d / "t16.png", _png16(_random16((8, 8, 3)), 2)[:-40]),
], ids=["missing", "directory", "empty", "text", "truncated_png", "truncated_jpeg",
        "truncated_png16"])
def test_unreadable_inputs_raise_one_line_image_error(tmp_path, make):
  path = make(tmp_path)
  with pytest.raises(io.ImageError) as err:
    io.read_image(path)
  assert isinstance(err.value, ValueError)
  msg = str(err.value)
  assert "\n" not in msg and msg.startswith(str(path))
  if path.name not in ("t.png", "t.jpg", "t16.png"):  # truncated files keep a readable header
    with pytest.raises(io.ImageError, match="^" + str(path)):
      io.image_size(path)


@pytest.mark.parametrize("shape", [(601, 399), (1, 1), (4000, 3), (3, 4000)])
def test_pad_grid_round_trip_is_exact(shape):
  x = np.random.default_rng(0).random(shape + (3,), dtype=np.float32)
  grid, meta = io.to_model_grid(x, size=512, mode="pad", multiple=64)
  gh, gw = -(-shape[0] // 64) * 64, -(-shape[1] // 64) * 64
  assert grid.shape == (gh, gw, 3)
  np.testing.assert_array_equal(grid[: shape[0], : shape[1]], x)
  if shape[0] > 2:  # reflection about the last row, without repeating it
    np.testing.assert_array_equal(grid[shape[0], : shape[1]], x[shape[0] - 2])
  if shape == (1, 1):
    np.testing.assert_array_equal(grid, np.broadcast_to(x, grid.shape))
  np.testing.assert_array_equal(io.from_model_grid(grid, meta), x)


@pytest.mark.parametrize("shape", [(601, 399), (1, 1), (4000, 3)])
def test_resize_grid_round_trip_is_close(shape):
  x = _smooth(*shape)
  grid, meta = io.to_model_grid(x, size=512, mode="resize", multiple=64)
  assert grid.shape == (512, 512, 3)
  np.testing.assert_allclose(grid.mean(axis=(0, 1)), x.mean(axis=(0, 1)), atol=0.01)
  back = io.from_model_grid(grid, meta)
  assert back.shape == x.shape
  assert np.abs(back - x).max() < 0.02


def test_grid_accepts_uint8_and_rejects_bad_mode():
  u8 = np.full((5, 6, 3), 51, np.uint8)
  grid, _ = io.to_model_grid(u8, size=512, mode="pad", multiple=8)
  np.testing.assert_allclose(grid, np.full((8, 8, 3), 0.2), atol=1e-7)
  with pytest.raises(ValueError, match="grid mode"):
    io.to_model_grid(u8, size=512, mode="crop", multiple=8)


# The stored pixels of an upright image U under each EXIF orientation, from the tag's meaning
# (where the stored row 0 and column 0 lie in the upright view): 2 mirrored, 3 turned 180°,
# 4 flipped, 5 transposed, 6 turned 90° counter-clockwise (shown turned clockwise), 7 transposed
# and turned 180°, 8 turned 90° clockwise.
STORED = {1: lambda u: u, 2: lambda u: u[:, ::-1], 3: lambda u: u[::-1, ::-1],
          4: lambda u: u[::-1], 5: lambda u: u.transpose(1, 0, 2),
          6: lambda u: np.rot90(u, 1), 7: lambda u: u.transpose(1, 0, 2)[::-1, ::-1],
          8: lambda u: np.rot90(u, -1)}
FORMATS = {"JPEG": (".jpg", {"quality": 100, "subsampling": 0}, 0.03),
           "PNG": (".png", {}, 0.0), "WEBP": (".webp", {"lossless": True}, 0.0),
           "TIFF": (".tif", {}, 0.0)}


@pytest.mark.parametrize("fmt", sorted(FORMATS))
@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_format_is_read_upright_for_every_orientation(tmp_path, fmt, orientation):
  upright = np.zeros((32, 48, 3), np.uint8)  # quadrants of distinct colours, 16-pixel blocks
  upright[:16, :16], upright[:16, 16:] = (230, 20, 20), (20, 200, 20)
  upright[16:, :32], upright[16:, 32:] = (20, 20, 230), (240, 240, 240)
  suffix, options, tol = FORMATS[fmt]
  exif = Image.Exif()
  exif[0x0112] = orientation
  path = tmp_path / f"o{suffix}"
  stored = np.ascontiguousarray(STORED[orientation](upright))
  Image.fromarray(stored).save(path, format=fmt, exif=exif, **options)
  got = io.read_image(path)
  assert got.shape == upright.shape and io.image_size(path) == upright.shape[:2]
  assert np.abs(got - upright / 255.0).max() <= tol + 1e-7
