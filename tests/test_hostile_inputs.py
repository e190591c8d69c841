"""Hostile and careless inputs to the image reader and writer: every failure is an `ImageError`
naming the file, every image read is finite and in [0, 1], reads take time linear in the file
size, and writes never follow planted files, never leave temporary files, and name the target."""

import json
import math
import os
import pathlib
import shutil
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from io import BytesIO

import numpy as np
import pytest
import tifffile
from PIL import Image
from skimage.util import img_as_float

from upzeroir_jax import io

SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _chunk(kind: bytes, body: bytes) -> bytes:
  return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))


def _chunks(data: bytes) -> list[bytes]:
  """The raw chunks (length, type, body, CRC) of a PNG byte string, in order."""
  out, pos = [], len(SIGNATURE)
  while pos < len(data):
    length = struct.unpack(">I", data[pos:pos + 4])[0]
    out.append(data[pos:pos + 12 + length])
    pos += 12 + length
  return out


def _png16(v: np.ndarray, idat_size: int | None = None) -> bytes:
  """A 16-bit RGB PNG of uint16 `v` written with zlib alone (filter None), IDAT split in
  pieces of `idat_size` bytes (one piece when None)."""
  h, w, _ = v.shape
  raw = b"".join(b"\x00" + v[r].astype(">u2").tobytes() for r in range(h))
  stream = zlib.compress(raw, 1)
  step = idat_size or len(stream)
  idats = b"".join(_chunk(b"IDAT", stream[i:i + step]) for i in range(0, len(stream), step))
  ihdr = _chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0))
  return SIGNATURE + ihdr + idats + _chunk(b"IEND", b"")


def _png8(v: np.ndarray) -> bytes:
  buf = BytesIO()
  Image.fromarray(v).save(buf, format="PNG")
  return buf.getvalue()


def _assert_image_error(path, fn=io.read_image, match: str = ""):
  with pytest.raises(io.ImageError) as err:
    fn(path)
  msg = str(err.value)
  assert msg.startswith(f"{path}: ") and "\n" not in msg, msg
  assert match in msg, msg


# ---- reader: values ----------------------------------------------------------------------------

@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_float_tiff_with_non_finite_samples_is_an_image_error(tmp_path, bad):
  x = np.full((4, 5), 0.5, np.float32)
  x[2, 3] = bad
  tifffile.imwrite(tmp_path / "f.tif", x)
  _assert_image_error(tmp_path / "f.tif", match="NaN or infinite")


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
@pytest.mark.parametrize("channels", [1, 3])
def test_float_tiff_is_clipped_to_unit_range(tmp_path, dtype, channels):
  x = np.random.default_rng(2).uniform(-0.5, 1.5, (4, 5, channels)).astype(dtype)
  tifffile.imwrite(tmp_path / "f.tif", x[..., 0] if channels == 1 else x)
  got = io.read_image(tmp_path / "f.tif")
  want = np.clip(x.astype(np.float64), 0, 1).astype(np.float32)
  np.testing.assert_array_equal(got, np.broadcast_to(want, (4, 5, 3)))
  assert io.image_size(tmp_path / "f.tif") == (4, 5)


@pytest.mark.parametrize("dtype", [np.int32, np.int16, np.uint32])
def test_integer_tiffs_are_scaled_by_their_type_range(tmp_path, dtype):
  info = np.iinfo(dtype)
  rng = np.random.default_rng(0)
  x = rng.integers(max(info.min, -2**31), info.max, (6, 7), dtype=np.int64, endpoint=True)
  x[0, :3] = [max(info.min, -2**31), 0, info.max]
  x = x.astype(dtype)
  tifffile.imwrite(tmp_path / "i.tif", x)
  got = io.read_image(tmp_path / "i.tif")
  want = np.clip(img_as_float(x), 0, 1)  # skimage: x / max of the type; negatives clipped
  np.testing.assert_allclose(got, np.repeat(want[..., None], 3, -1), rtol=0, atol=1e-6)
  assert 0.0 < got.mean() < 1.0  # neither all black nor all white


def test_palette_la_and_rgba_images_are_composited_on_white(tmp_path):
  rng = np.random.default_rng(1)
  la = rng.integers(0, 256, (5, 6, 2), dtype=np.uint8)
  Image.fromarray(la, mode="LA").save(tmp_path / "la.png")
  a = la[..., 1:] / 255.0
  np.testing.assert_allclose(io.read_image(tmp_path / "la.png"),
                             np.repeat(la[..., :1] / 255.0 * a + 1 - a, 3, -1), atol=1e-6)
  pal = Image.fromarray(rng.integers(0, 4, (5, 6), dtype=np.uint8), mode="P")
  pal.putpalette([255, 0, 0, 0, 255, 0, 0, 0, 255, 10, 20, 30])
  pal.info["transparency"] = 3
  pal.save(tmp_path / "p.png", transparency=3)
  idx = np.asarray(pal)
  colours = np.array([[1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1]], np.float32)  # 3: on white
  np.testing.assert_allclose(io.read_image(tmp_path / "p.png"), colours[idx], atol=1e-6)


# ---- reader: files that cannot be opened -------------------------------------------------------

_AS_NOBODY = """
import os, sys
from upzeroir_jax import io
io.read_image(sys.argv[1])  # loads the lazily imported decoders while the interpreter can
if os.geteuid() == 0:  # root reads anything: drop to nobody once the imports are done
  os.setgid(65534)
  os.setuid(65534)
for path in sys.argv[1:]:
  for fn in (io.read_image, io.image_size):
    try:
      print("ok", fn(path).shape if fn is io.read_image else fn(path))
    except io.ImageError as e:
      print("ImageError", e)
    except Exception as e:
      print("other", type(e).__name__, e)
"""


@pytest.mark.parametrize("where", ["file", "folder"])
def test_unreadable_file_or_unsearchable_folder_is_an_image_error(where):
  root = pathlib.Path(tempfile.mkdtemp(prefix="upzeroir-perm-"))  # outside pytest's 0700 root
  try:
    root.chmod(0o755)
    (root / "locked").mkdir()
    readable, locked = root / "ok.png", root / "locked" / "a.png"
    for path in (readable, locked):
      path.write_bytes(_png8(np.zeros((3, 4, 3), np.uint8)))
    (locked if where == "file" else locked.parent).chmod(0o000)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    run = subprocess.run([sys.executable, "-c", _AS_NOBODY, str(readable), str(locked)],
                         capture_output=True, text=True, env=env, timeout=120, check=False)
  finally:
    (root / "locked").chmod(0o755)
    (root / "locked" / "a.png").chmod(0o644)
    shutil.rmtree(root)
  denied = f"ImageError {locked}: cannot open (permission denied)"
  assert run.stdout.splitlines() == ["ok (3, 4, 3)", "ok (3, 4)", denied, denied], (
      run.stdout + run.stderr)


def _read_in_thread(fn, path):
  """(outcome of `fn(path)` in a thread, whether it returned within 10 s); a reader blocked on
  a FIFO is released by opening its other end."""
  outcome = []

  def target():
    try:
      outcome.append(fn(path))
    except Exception as e:  # noqa: BLE001 (the outcome under test)
      outcome.append(e)

  thread = threading.Thread(target=target, daemon=True)
  thread.start()
  thread.join(10)
  blocked = thread.is_alive()
  if blocked:
    os.close(os.open(path, os.O_WRONLY | os.O_NONBLOCK))
    thread.join(10)
  return outcome[0] if outcome else None, not blocked


@pytest.mark.parametrize("fn", [io.read_image, io.image_size], ids=["read", "size"])
def test_a_fifo_is_refused_at_once_not_waited_on(tmp_path, fn):
  fifo = tmp_path / "pipe.png"
  os.mkfifo(fifo)
  outcome, returned = _read_in_thread(fn, fifo)
  assert returned, "the reader waited for a writer"
  assert isinstance(outcome, io.ImageError)
  assert str(outcome) == f"{fifo}: is a FIFO (named pipe), not a regular file"


def test_a_name_with_non_utf8_bytes_is_shown_escaped(tmp_path):
  path = pathlib.Path(os.fsdecode(bytes(tmp_path) + b"/caf\xe9.png"))
  path.write_bytes(b"not an image")
  with pytest.raises(io.ImageError) as err:
    io.read_image(path)
  assert str(err.value) == f"{tmp_path}/caf\\xe9.png: {io.files._NOT_AN_IMAGE}"
  str(err.value).encode("utf-8")  # printable as it is


# ---- reader: PNG structure, the same rules for 8 and 16 bits ------------------------------------

def _image(bits: int) -> bytes:
  rng = np.random.default_rng(bits)
  if bits == 16:
    return _png16(rng.integers(0, 65536, (6, 7, 3), dtype=np.uint16))
  return _png8(rng.integers(0, 256, (6, 7, 3), dtype=np.uint8))


def _bad_idat_crc(data: bytes) -> bytes:
  parts = _chunks(data)
  i = next(i for i, c in enumerate(parts) if c[4:8] == b"IDAT")
  parts[i] = parts[i][:-1] + bytes([parts[i][-1] ^ 0xFF])
  return SIGNATURE + b"".join(parts)


def _second_ihdr(data: bytes) -> bytes:
  parts = _chunks(data)
  huge = _chunk(b"IHDR", struct.pack(">IIBBBBB", 200_000, 200_000, 16, 2, 0, 0, 0))
  return SIGNATURE + b"".join(parts[:-1]) + huge + parts[-1]


@pytest.mark.parametrize("bits", [8, 16])
@pytest.mark.parametrize("damage,match", [
    (_bad_idat_crc, "CRC mismatch in a 'IDAT' chunk"),
    (lambda d: d[:-12], "no IEND"),
    (_second_ihdr, "IHDR is not the first chunk, or appears twice"),
])
def test_png_structure_rules_are_the_same_for_8_and_16_bits(tmp_path, bits, damage, match):
  path = tmp_path / "x.png"
  path.write_bytes(damage(_image(bits)))
  _assert_image_error(path, match=match)


@pytest.mark.parametrize("bits", [8, 16])
def test_png_over_the_pixel_limit_is_refused_before_decoding(tmp_path, monkeypatch, bits):
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10)  # the error threshold is 2 x 10 pixels
  path = tmp_path / "big.png"
  path.write_bytes(_image(bits))  # 6 x 7 = 42 pixels
  with pytest.raises(io.ImageError, match=f"^{path}: ") as err:
    io.read_image(path)
  assert "decompression bomb" in str(err.value)


def test_malformed_text_chunks_print_nothing_on_stderr(tmp_path):
  """20,000 malformed zTXt chunks in a 16-bit PNG: libpng would warn once for each."""
  good = _png16(np.full((2, 3, 3), 40000, np.uint16))
  parts = _chunks(good)
  bad_text = _chunk(b"zTXt", b"k\x00\x00")  # keyword, method, no compressed text
  path = tmp_path / "texts.png"
  path.write_bytes(SIGNATURE + parts[0] + bad_text * 20000 + b"".join(parts[1:]))
  env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
  run = subprocess.run([sys.executable, "-c", ("import sys; from upzeroir_jax import io; "
                        "print(io.read_image(sys.argv[1]).mean())"), str(path)],
                       capture_output=True, text=True, env=env, timeout=120, check=False)
  assert run.returncode == 0 and float(run.stdout) == pytest.approx(40000 / 65535, abs=1e-7)
  assert run.stderr == ""


def _best_time(fn, repeats: int = 3) -> float:
  best = math.inf
  for _ in range(repeats):
    start = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - start)
  return best


def test_png16_read_time_is_linear_in_the_number_of_idat_chunks(tmp_path):
  """64-byte IDAT chunks (~7,000 and ~29,000 of them): time per byte must not grow with size
  (the per-byte time of the 4x larger file, as a ratio to the smaller one's, stays below 2)."""
  per_byte = []
  for side in (256, 512):
    v = np.random.default_rng(side).integers(0, 65536, (side, side, 3), dtype=np.uint16)
    path = tmp_path / f"many{side}.png"
    path.write_bytes(_png16(v, idat_size=64))
    np.testing.assert_array_equal(np.round(io.read_image(path) * 65535), v)
    per_byte.append(_best_time(lambda p=path: io.read_image(p)) / path.stat().st_size)
  assert per_byte[1] / per_byte[0] < 2, f"time per byte grew {per_byte[1] / per_byte[0]:.1f}x"


# ---- writer -------------------------------------------------------------------------------------

def test_write_never_follows_a_planted_symlink(tmp_path):
  victim = tmp_path / "victim.txt"
  victim.write_text("keep me")
  out = tmp_path / "out"
  out.mkdir()
  for name in (f".out.png.{os.getpid()}.tmp", ".out.json.tmp", "out.png"):
    (out / name).symlink_to(victim)
  io.write_image(out / "out.png", np.zeros((2, 2, 3)))
  io.write_json(out / "out.json", {"a": 1})
  assert victim.read_text() == "keep me"
  assert not (out / "out.png").is_symlink()
  assert io.read_image(out / "out.png").shape == (2, 2, 3)


def test_failed_writes_leave_no_temporary_file_and_name_the_target(tmp_path):
  with pytest.raises(TypeError):
    io.write_json(tmp_path / "s.json", {"a": object()})
  (tmp_path / "taken.png").mkdir()  # a folder where the image should go
  with pytest.raises(io.WriteError) as err:
    io.write_image(tmp_path / "taken.png", np.zeros((2, 2, 3)))
  msg = str(err.value)
  assert msg.startswith(f"{tmp_path / 'taken.png'}: cannot write") and "\n" not in msg, msg
  assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.png"]
  assert not any((tmp_path / "taken.png").iterdir())


def test_names_up_to_the_filesystem_limit_can_be_written(tmp_path):
  longest = os.pathconf(tmp_path, "PC_NAME_MAX")
  png = tmp_path / ("p" * (longest - 4) + ".png")
  sidecar = tmp_path / ("s" * (longest - 5) + ".json")
  x = np.random.default_rng(3).random((3, 4, 3))
  io.write_image(png, x, bits=16)
  io.write_json(sidecar, {"ok": True})
  np.testing.assert_allclose(io.read_image(png), x, atol=0.5 / 65535 + 1e-7)
  assert json.loads(sidecar.read_text()) == {"ok": True}


def test_sidecar_json_is_strict_with_null_for_non_finite_numbers(tmp_path):
  io.write_json(tmp_path / "s.json", {"nan": math.nan, "inf": [1.5, math.inf, -math.inf],
                                      "nested": {"x": np.float64("nan")}})
  text = (tmp_path / "s.json").read_text()

  def refuse(name):
    raise ValueError(f"non-standard JSON constant {name}")

  got = json.loads(text, parse_constant=refuse)
  assert got == {"nan": None, "inf": [1.5, None, None], "nested": {"x": None}}


# ---- fuzz ---------------------------------------------------------------------------------------

def _valid_files() -> dict[str, bytes]:
  rng = np.random.default_rng(4)
  u8 = rng.integers(0, 256, (24, 32, 3), dtype=np.uint8)
  files = {"png8": _png8(u8),
           "png16": _png16(rng.integers(0, 65536, (24, 32, 3), dtype=np.uint16), idat_size=300)}
  for name, fmt in (("jpg", "JPEG"), ("tif", "TIFF")):
    buf = BytesIO()
    Image.fromarray(u8).save(buf, format=fmt)
    files[name] = buf.getvalue()
  buf = BytesIO()
  tifffile.imwrite(buf, rng.random((24, 32), np.float32))
  files["ftif"] = buf.getvalue()
  return files


def _mutations(data: bytes, is_png: bool, rng: np.random.Generator, n: int) -> list[bytes]:
  out = []
  for _ in range(n):
    kind = rng.integers(3 if is_png else 2)
    if kind == 0:
      out.append(data[:rng.integers(0, len(data))])
    elif kind == 1:
      b = bytearray(data)
      for pos in rng.integers(0, len(b), rng.integers(1, 9)):
        b[pos] ^= 1 << int(rng.integers(8))
      out.append(bytes(b))
    else:
      parts = _chunks(data)
      i, j = rng.choice(len(parts), 2, replace=False)
      parts[i], parts[j] = parts[j], parts[i]
      out.append(SIGNATURE + b"".join(parts))
  return out


def test_fuzzed_files_give_a_unit_range_image_or_an_image_error_in_linear_time(
    tmp_path, monkeypatch):
  # Header damage may claim a huge image: the pixel limit (here 10x the real one) bounds it.
  monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 10 * 24 * 32)
  rng = np.random.default_rng(5)
  outcomes = {"image": 0, "error": 0}
  for name, data in _valid_files().items():
    base = tmp_path / f"base.{name}"
    base.write_bytes(data)
    baseline = _best_time(lambda p=base: io.read_image(p), 5)
    for k, mutated in enumerate(_mutations(data, name.startswith("png"), rng, 60)):
      path = tmp_path / f"m{k}.{name}"
      path.write_bytes(mutated)
      budget = 50 * baseline * max(1.0, len(mutated) / len(data)) + 0.02
      for fn in (io.read_image, io.image_size):
        try:
          start = time.perf_counter()
          got = fn(path)
          elapsed = time.perf_counter() - start
        except io.ImageError as e:
          elapsed = time.perf_counter() - start
          assert str(e).startswith(f"{path}: ") and "\n" not in str(e)
          outcomes["error"] += 1
        else:
          outcomes["image"] += 1
          if fn is io.read_image:
            assert got.dtype == np.float32 and got.ndim == 3 and got.shape[-1] == 3
            assert np.all(np.isfinite(got)) and got.min() >= 0 and got.max() <= 1
        if elapsed > budget:  # one slow read on a busy machine: time it again before failing
          elapsed = _best_time(lambda f=fn, p=path: _swallow(f, p), 3)
        assert elapsed <= budget, f"{name} mutation {k}: {elapsed:.3f}s > {budget:.3f}s"
  assert outcomes["image"] > 50 and outcomes["error"] > 50, outcomes


def _swallow(fn, path):
  try:
    fn(path)
  except io.ImageError:
    pass
