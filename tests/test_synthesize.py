"""eval.synthesize on small images in tmp_path, pixel values against independent formulas."""

import json
import math
import zlib

import numpy as np
import pytest
from skimage import color

from eval import synthesize
from upzeroir_jax import io


def _hand_lowlight_haze(x, alpha, beta, airlight=0.5):
  """skimage HSV route for V ← αV, then Eq. 19–20 with the depth map written out per pixel."""
  hsv = color.rgb2hsv(x.astype(np.float64))
  hsv[..., 2] *= alpha
  dark = np.clip(color.hsv2rgb(hsv), 0, 1)
  rows, cols = x.shape[:2]
  d = np.array(
    [
      [
        -0.04 * math.hypot(i - rows / 2, j - cols / 2) + math.sqrt(max(rows, cols))
        for j in range(cols)
      ]
      for i in range(rows)
    ]
  )
  t = np.exp(-beta * d)[..., None]
  return np.clip(dark * t + airlight * (1 - t), 0, 1)


@pytest.fixture
def clean_dir(tmp_path):
  """Three 24×32 images (PNG and BMP) and a text file that must be ignored."""
  rng = np.random.default_rng(0)
  folder = tmp_path / "clean"
  for name in ("a.png", "b.png", "c.bmp"):
    io.write_image(folder / name, rng.integers(0, 256, (24, 32, 3), dtype=np.uint8))
  (folder / "notes.txt").write_text("not an image")
  return folder


def test_deterministic_spec_matches_hand_computation(clean_dir, tmp_path):
  """Two image sizes: the depth map follows each image's own size."""
  io.write_image(
    clean_dir / "d.png", np.random.default_rng(1).integers(0, 256, (16, 20, 3), np.uint8)
  )
  out = tmp_path / "out"
  manifest = synthesize.synthesize(clean_dir, out, "lowlight:0.3+haze:heavy", progress=False)
  assert sorted(manifest["files"]) == ["a.png", "b.png", "c.png", "d.png"]
  assert manifest["steps"] == [{"kind": "lowlight", "value": 0.3}, {"kind": "haze", "value": 0.12}]
  for name, entry in manifest["files"].items():
    x = io.read_image(clean_dir / entry["source"])
    assert (entry["height"], entry["width"]) == x.shape[:2]
    expected = np.round(_hand_lowlight_haze(x, 0.3, 0.12) * 255)
    got = np.round(io.read_image(out / name) * 255)
    assert np.abs(got - expected).max() <= 1  # 8-bit rounding of float32 vs float64 results
  assert json.loads((out / "manifest.json").read_text()) == manifest


def test_noise_statistics_seed_determinism_and_manifest_key(clean_dir, tmp_path):
  sigma = 0.05
  spec = f"lowlight:0.5+noise:{sigma}"
  m0 = synthesize.synthesize(clean_dir, tmp_path / "s0", spec, seed=0, progress=False)
  synthesize.synthesize(clean_dir, tmp_path / "s0_again", spec, seed=0, progress=False)
  synthesize.synthesize(clean_dir, tmp_path / "s1", spec, seed=1, progress=False)
  for name in m0["files"]:
    y0 = io.read_image(tmp_path / "s0" / name)
    np.testing.assert_array_equal(y0, io.read_image(tmp_path / "s0_again" / name))
    assert not np.array_equal(y0, io.read_image(tmp_path / "s1" / name))
  # The darkened input is ≤ 0.5, so noise on a mid-range window is rarely clipped.
  x = io.read_image(clean_dir / "a.png") * 0.5
  residual = (io.read_image(tmp_path / "s0" / "a.png") - x)[(x > 0.15) & (x < 0.35)]
  assert abs(residual.mean()) < 0.01
  assert abs(residual.std() - math.hypot(sigma, 1 / 255 / math.sqrt(12))) < 0.006
  # The manifest records each file's key as the documented fold-in of its name.
  assert m0["seed"] == 0
  for name in ("a.png", "b.png", "c.png"):
    source = m0["files"][name]["source"]
    assert m0["files"][name]["fold_in"] == zlib.crc32(source.encode()) % 2**31


def test_resumes_skipping_existing_outputs_and_refuses_other_spec(clean_dir, tmp_path):
  out = tmp_path / "out"
  synthesize.synthesize(clean_dir, out, "haze:light", progress=False)
  marker = np.zeros((24, 32, 3), np.float32)
  io.write_image(out / "a.png", marker)
  (out / "b.png").unlink()
  manifest = synthesize.synthesize(clean_dir, out, "haze:light", progress=False)
  assert sorted(manifest["files"]) == ["a.png", "b.png", "c.png"]
  np.testing.assert_array_equal(io.read_image(out / "a.png"), marker)  # kept
  assert (out / "b.png").exists()  # rebuilt
  with pytest.raises(synthesize.SynthesisError, match="another --output or --overwrite"):
    synthesize.synthesize(clean_dir, out, "haze:heavy", progress=False)
  synthesize.synthesize(clean_dir, out, "haze:heavy", overwrite=True, progress=False)
  x = io.read_image(clean_dir / "a.png")
  got = np.round(io.read_image(out / "a.png") * 255)
  assert np.abs(got - np.round(_hand_lowlight_haze(x, 1.0, 0.12) * 255)).max() <= 1


def test_flags_turn_bad_input_into_one_line_and_exit_2(clean_dir, tmp_path, capsys):
  cases = [
    (["--spec=fog:1"], "fog:1"),
    (["--spec=noise:light", f"--input={tmp_path / 'missing'}"], "does not exist"),
    ([], "--spec"),
  ]
  for extra, message in cases:
    code = synthesize.main([synthesize.PROG, f"--input={clean_dir}",
                            f"--output={tmp_path / 'o'}", *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith(f"{synthesize.PROG}: error: ")
    assert message in err[0] and "Traceback" not in err[0]


def test_flags_run_the_synthesis(clean_dir, tmp_path, capsys):
  assert synthesize.main([synthesize.PROG, f"--input={clean_dir}", f"--output={tmp_path / 'o'}",
                          "--spec=haze:heavy"]) == 0
  assert "3 images" in capsys.readouterr().out
  x = io.read_image(clean_dir / "b.png")
  got = np.round(io.read_image(tmp_path / "o" / "b.png") * 255)
  assert np.abs(got - np.round(_hand_lowlight_haze(x, 1.0, 0.12) * 255)).max() <= 1


def test_mixed_set_on_low_light_kodak(kodak_dir, tmp_path):
  """Kodak crop made low-light, then the LOL+haze+noise preset: haze first, then σ = 15/255."""
  low = tmp_path / "low"
  io.write_image(low / "k.png", io.read_image(kodak_dir / "kodim05.png")[:48, :64])
  synthesize.synthesize(low, tmp_path / "mixed", "lowlight:light", progress=False)
  manifest = synthesize.synthesize(
    tmp_path / "mixed", tmp_path / "lhn", "lol_haze_noise", progress=False
  )
  assert manifest["spec"] == "lol_haze_noise"
  x = io.read_image(tmp_path / "mixed" / "k.png")
  hazy = _hand_lowlight_haze(x, 1.0, 0.05)
  residual = io.read_image(tmp_path / "lhn" / "k.png") - hazy
  inside = (hazy > 0.2) & (hazy < 0.8)
  assert abs(residual[inside].std() - 15 / 255) < 0.01
