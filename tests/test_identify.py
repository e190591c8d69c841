"""`physics.identify` and `auto`: estimators against known σ, closed forms and scipy; decisions
on held-out synthetic cases (Kodak images; the thresholds were tuned on CBSD68's first half);
per-image auto presets in one batch against single calls."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special
import scipy.stats
import tiny_runs
from PIL import Image

from eval import identify as eval_identify
from upzeroir_jax import auto, config, io
from upzeroir_jax.physics import degrade, identify
from upzeroir_jax.sampler import state

KODAK = ("kodim01.png", "kodim05.png", "kodim13.png", "kodim23.png")


def _kodak(kodak_dir, name, size=256):
  """A centre crop [size, size, 3] of a Kodak image at full resolution."""
  img = np.asarray(Image.open(kodak_dir / name).convert("RGB"), np.float32) / 255.0
  top, left = (img.shape[0] - size) // 2, (img.shape[1] - size) // 2
  return img[top:top + size, left:left + size]


def _noisy(x, sigma, seed):
  rng = np.random.default_rng(seed)
  return np.clip(x + sigma * rng.standard_normal(x.shape), 0.0, 1.0).astype(np.float32)


def _degrade(x, spec, seed=0):
  y = np.asarray(degrade.apply(jnp.asarray(x), spec, jax.random.key(seed)))
  return np.round(y * 255.0) / 255.0


def _smooth_image(size):
  """A smooth synthetic colour image [size, size, 3] in [0.2, 0.8] (no texture, no clipping)."""
  u = np.linspace(0.0, 1.0, size, dtype=np.float32)
  yy, xx = np.meshgrid(u, u, indexing="ij")
  return np.stack([0.2 + 0.6 * xx, 0.2 + 0.6 * yy, 0.5 + 0.3 * np.sin(3 * xx * yy)], -1)


def test_chi_quantile_and_erfinv_match_scipy():
  for q in (0.05, 0.1, 0.5, 0.9):
    assert identify._erfinv(2 * q - 1) == pytest.approx(scipy.special.erfinv(2 * q - 1),
                                                         abs=1e-9)
    want = scipy.stats.chi.ppf(q, 64) / math.sqrt(64)
    assert identify._chi_quantile_ratio(64, q) == pytest.approx(want, rel=2e-3)


def test_tail_variance_on_hand_derived_spectra():
  """Sorted 9, 4, 1, 1, 1: the tails from 9 and from 4 have means 3.2 and 1.75 above their
  median 1; the tail 1, 1, 1 is the first with mean ≤ median, so the variance is 1. A noise
  tail that is not flat (1.2, 1.0, 0.8: mean 1 = median) is kept whole; the order of the input
  does not matter."""
  assert identify.tail_variance(np.array([1.0, 9.0, 1.0, 4.0, 1.0])) == pytest.approx(1.0)
  assert identify.tail_variance(np.array([0.8, 16.0, 1.2, 1.0])) == pytest.approx(1.0)
  assert identify.tail_variance(np.array([2.0, 2.0, 2.0])) == pytest.approx(2.0)


def test_noise_sigma_is_not_fooled_by_texture():
  """A fine grating over the whole image (no flat block anywhere) with noise σ = 5/255: the
  grating's 5×5×3 patches span two directions (sine and cosine of one frequency, one colour
  vector), which the PCA estimator sets aside; the flattest-block estimate (the pilot) reads the
  grating as noise, several times σ."""
  u = np.arange(256, dtype=np.float32)
  yy, xx = np.meshgrid(u, u, indexing="ij")
  wave = 0.3 * np.sin(2 * np.pi * (xx / 3.3 + yy / 4.7))
  x = 0.5 + wave[..., None] * np.array([1.0, 0.8, 0.6], np.float32)
  sigma = 5 / 255
  y = _noisy(x, sigma, 6)
  assert identify.noise_sigma(y) == pytest.approx(sigma, rel=0.1)
  assert identify._block_sigma(y) > 3 * sigma


def test_noise_sigma_on_images_too_small_for_the_patch_covariance():
  """16×20 pixels give 192 patches for a 75-dimensional covariance, too few: its smallest
  eigenvalues would be 0 and read no noise at all; the block estimate is used instead."""
  x = _noisy(np.full((16, 20, 3), 0.5, np.float32), 0.1, 7)
  assert identify.noise_sigma(x) == identify._block_sigma(x)
  assert identify.noise_sigma(x) == pytest.approx(0.1, rel=0.3)
  assert identify.identify(x).noise


def test_clean_photos_read_almost_no_noise(kodak_dir):
  """All 24 Kodak photos, box-downscaled to 384×256 as eval/identify.py brings them to 256²:
  clean 8-bit photos carry their quantisation (1/√12 of a level, 0.29/255) and little else,
  where a flattest-block estimate reads texture (kodim13, foliage and rock) as noise."""
  for path in sorted(kodak_dir.glob("*.png")):
    img = Image.open(path).convert("RGB")
    small = img.resize((img.width // 2, img.height // 2), Image.BOX)
    x = np.asarray(small, np.float32) / 255.0
    assert identify.noise_sigma(x) < 2.5 / 255, path.name


@pytest.mark.parametrize("sigma", [5 / 255, 15 / 255, 50 / 255])
def test_noise_sigma_on_a_synthetic_image(sigma):
  est = identify.noise_sigma(_noisy(_smooth_image(256), sigma, 0))
  assert est == pytest.approx(sigma, rel=0.08)


def test_noise_sigma_within_15_percent_on_kodak(kodak_dir):
  """All 24 Kodak images at full size: texture does not bias the PCA estimate upwards as it
  biases a flattest-block one; at σ = 50/255 clipping hides part of the noise (docs/method.md §6
  has the errors measured)."""
  images = [np.asarray(Image.open(p).convert("RGB"), np.float32) / 255.0
            for p in sorted(kodak_dir.glob("*.png"))]
  assert len(images) == 24
  for sigma_255 in (10, 15, 25, 50):
    sigma = sigma_255 / 255
    errors = np.array([identify.noise_sigma(_noisy(x, sigma, k)) / sigma - 1
                       for k, x in enumerate(images)])
    assert np.median(np.abs(errors)) < 0.05, sigma_255
    assert np.max(np.abs(errors)) < 0.15, (sigma_255, errors)


def test_noise_sigma_is_monotone_and_size_invariant(kodak_dir):
  x = _kodak(kodak_dir, "kodim05.png", 512)
  ests = [identify.noise_sigma(_noisy(x, s / 255, 1)) for s in (0, 5, 10, 20, 30, 40, 50)]
  assert np.all(np.diff(ests) > 0), ests
  for s in (10 / 255, 40 / 255):
    big = identify.noise_sigma(_noisy(x, s, 2))
    small = identify.noise_sigma(_noisy(x[192:320, 192:320], s, 3))
    assert small == pytest.approx(big, rel=0.1)


def test_illumination_scales_with_low_light_and_is_size_invariant(kodak_dir):
  x = _kodak(kodak_dir, "kodim23.png", 512)
  base = identify.illumination(x)
  levels = []
  for alpha in (0.4, 0.3, 0.2, 0.1):
    got = identify.illumination(np.asarray(degrade.low_light(jnp.asarray(x), alpha)))
    assert got == pytest.approx(alpha * base, rel=1e-5)  # V ← αV scales every block mean.
    levels.append(got)
  assert np.all(np.diff(levels) < 0)
  half = np.asarray(Image.fromarray(np.round(x * 255).astype(np.uint8)).resize(
    (256, 256), Image.BOX), np.float32) / 255
  assert identify.illumination(half) == pytest.approx(base, rel=0.05)


def test_haze_density_is_one_minus_t_in_closed_form():
  """He's prior in its cleanest form: a white scene with one black 8×8 block in every 5×5
  blocks (so every dark-channel window holds one) under uniform haze t with airlight 1. The
  dark channel is 1 − t everywhere and the white level 1, so the density is 1 − t exactly;
  without the window minimum the 5th percentile would read the white blocks."""
  grid = np.ones((24, 24), np.float32)
  grid[2::5, 2::5] = 0.0  # 4.3 % of the blocks: under the 5th percentile's 5 %
  x = np.repeat(np.repeat(grid, 8, 0), 8, 1)[..., None].repeat(3, -1)
  for t in (1.0, 0.9, 0.6, 0.3):
    y = x * t + (1 - t)
    assert identify.haze_density(y, 0.0) == pytest.approx(1 - t, abs=1e-5)


def test_haze_density_removes_the_clipping_bias_of_noise():
  """Black and white blocks with noise σ: clipping at 0 lifts a black block's mean to
  E[max(0, σZ)] = σ/√(2π) = 0.08 at σ = 0.2, which the estimate subtracts. The minimum over
  colours and windows pulls the measured level a little under that (measured: −0.027 with the
  correction, +0.058 without, white level 0.94)."""
  grid = np.ones((24, 24), np.float32)
  grid[2::5, 2::5] = 0.0  # 4.3 % of the blocks: under the 5th percentile's 5 %
  x = np.repeat(np.repeat(grid, 8, 0), 8, 1)[..., None].repeat(3, -1)
  sigma = 0.2
  y = _noisy(x, sigma, 5)
  assert identify.haze_density(y, sigma) == pytest.approx(0.0, abs=0.035)
  assert identify.haze_density(y, 0.0) > 0.05


def test_haze_density_is_monotone_in_beta_and_unchanged_by_low_light(kodak_dir):
  x = _kodak(kodak_dir, "kodim13.png")
  dense = [identify.haze_density(_degrade(x, f"haze:{b}"), 0.0) for b in (0, 0.04, 0.08, 0.16)]
  assert np.all(np.diff(dense) > 0), dense
  hazy = np.asarray(degrade.haze(jnp.asarray(x), 0.05))
  for alpha in (0.4, 0.1):
    dark = np.asarray(degrade.low_light(jnp.asarray(hazy), alpha))
    assert identify.haze_density(dark, 0.0) == pytest.approx(
      identify.haze_density(hazy, 0.0), rel=1e-4)


@pytest.mark.parametrize("spec,want", [
  ("", "clean"),
  ("lowlight:0.25", "lowlight"),
  ("haze:0.1", "haze"),
  ("noise:30/255", "noise"),
  ("lowlight:0.15+noise:20/255", "lowlight+noise"),
  ("lowlight:0.1+noise:50/255", "lowlight+noise"),
  ("lowlight:0.35+haze:light+noise:light", "lowlight+haze+noise"),
])
def test_decisions_on_held_out_kodak_cases(kodak_dir, spec, want):
  """Whole Kodak photos (768×512), as a user would give them."""
  for k, name in enumerate(("kodim03.png", "kodim08.png", "kodim19.png")):
    x = np.asarray(Image.open(kodak_dir / name).convert("RGB"), np.float32) / 255.0
    y = _degrade(x, spec, k) if spec else x
    assert identify.identify(y).composition == want, name


def test_light_haze_and_clean_at_the_evaluation_size(kodak_dir):
  """Kodak photos brought to 256² as eval/identify.py does: the lightest haze of its grid
  (β = 0.04; density 0.29–0.42 on these) is haze, the clean photo (density up to 0.14) is clean,
  which pins the haze threshold between the two."""
  for k, name in enumerate(("kodim01.png", "kodim03.png", "kodim08.png", "kodim13.png")):
    full = np.asarray(Image.open(kodak_dir / name).convert("RGB"), np.float32) / 255.0
    x = eval_identify.square(full, 256)
    assert identify.identify(x).composition == "clean", name
    assert identify.identify(_degrade(x, "haze:0.04", k)).composition == "haze", name


def test_task_for_maps_compositions_to_presets():
  def found(lowlight, haze, noise):
    return identify.Identification(lowlight, haze, noise, 0.5, 0.1, 0.01)
  assert auto.task_for(found(False, False, False)) == "denoise"
  assert auto.task_for(found(True, False, False)) == "lowlight"
  assert auto.task_for(found(False, True, False)) == "dehaze"
  assert auto.task_for(found(False, False, True)) == "denoise"
  for flags in ((True, False, True), (True, True, True), (False, True, True), (True, True, False)):
    assert auto.task_for(found(*flags)) == "mixed"


def test_bad_input_raises_one_line_error():
  for img, match in ((np.zeros((32, 32)), "shape"), (np.zeros((8, 8, 3)), "16 pixels")):
    with pytest.raises(ValueError, match=match) as err:
      identify.identify(img)
    assert "\n" not in str(err.value)


def test_auto_configs_are_the_presets_of_the_batched_restore_test(kodak_dir):
  """`auto.configs_for` on a dark and a noisy kodim23 (64×64) gives exactly the low-light and
  denoise members of tiny_runs' batch, whose per-image presets in one compiled call
  test_restore checks against single calls (batch member = single call with the same key)."""
  x, dark = tiny_runs.pair(kodak_dir)
  noisy = _noisy(x, 40 / 255, 4)
  configs, records = auto.configs_for([dark, noisy, x], steps=tiny_runs.STEPS, **tiny_runs.NARROW)
  assert [r["detected"] for r in records] == ["lowlight", "noise", "clean"]
  assert [r["task"] for r in records] == ["lowlight", "denoise", auto.CLEAN_TASK]
  assert configs[0] == tiny_runs.BATCH_CONFIGS[0]
  assert configs[1] == tiny_runs.BATCH_CONFIGS[2]
  assert configs[2] == config.preset("denoise", steps=tiny_runs.STEPS, **tiny_runs.NARROW)
  assert len({state.weightless(c) for c in configs}) == 1  # one compiled function for all


@pytest.mark.parametrize("bits", [8, 16])
def test_noise_sigma_of_grey_photos_read_from_files(kodak_dir, tmp_path, bits):
  """A grey photo saved as an 8- or 16-bit grey PNG is read as three equal channels, whose
  5×5×3 patches span 25 of 75 dimensions: without the one-channel estimate σ̂ = 0 at every
  level. Against the known σ (textured kodim05 and kodim13, noise added before quantisation;
  docs/method.md §6 has the errors over all 24 grey Kodak photos), and the clean grey photo
  under the noise threshold (the one-channel PCA alone reads kodim13 at 11/255)."""
  scale = 2**bits - 1
  for name in ("kodim05.png", "kodim13.png"):
    grey = np.asarray(Image.open(kodak_dir / name).convert("L"), np.float32) / 255.0
    for k, (sigma_255, rel) in enumerate(((0, None), (10, 0.25), (25, 0.1), (50, 0.1))):
      noisy = _noisy(grey, sigma_255 / 255, 20 + k)
      path = tmp_path / f"grey{bits}_{sigma_255}.png"
      Image.fromarray(np.round(noisy * scale).astype(np.uint8 if bits == 8 else np.uint16)
                      ).save(path)
      x = io.read_image(path)
      assert identify.is_grey(x)
      found = identify.identify(x)
      if rel is None:
        assert found.sigma < identify.Thresholds().noise_sigma, name
        continue
      assert found.sigma == pytest.approx(sigma_255 / 255, rel=rel), (name, sigma_255)
      assert found.noise, (name, sigma_255)


def test_images_too_small_to_identify_get_the_undetermined_preset():
  """Under 16 pixels a side `configs_for` does not raise: the image gets the documented
  preset and is recorded as undetermined; a 16-pixel image beside it is identified."""
  tiny = np.full((12, 40, 3), 0.5, np.float32)
  small = _noisy(np.full((16, 16, 3), 0.5, np.float32), 0.1, 3)
  configs, records = auto.configs_for([tiny, small], steps=3)
  assert records[0]["detected"] == auto.UNDETERMINED == "undetermined"
  assert records[0]["task"] == auto.UNDETERMINED_TASK == "denoise"
  assert "12x40" in records[0]["note"]
  assert configs[0] == config.preset("denoise", steps=3)
  assert records[1]["detected"] == identify.identify(small).composition != auto.UNDETERMINED
  with pytest.raises(ValueError, match="shape"):
    auto.configs_for([np.zeros((32, 32))])
