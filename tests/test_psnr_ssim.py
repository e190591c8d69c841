"""PSNR and SSIM against scikit-image and a float64 SciPy implementation of pyiqa's definitions.

pyiqa's `psnr`: RGB, data range 1, `10·log10(1/(MSE + 1e-8))`. scikit-image's PSNR has no
1e-8, so its value is corrected by `−10·log10(1 + 1e-8/MSE)` (MSE from scikit-image).

pyiqa's `ssim`: on `round(255·Y)` with Y of YIQ, data range 255, Gaussian 11 / 1.5 window,
'valid' region, population covariances, contrast-structure clipped at 0. scikit-image's
`structural_similarity(gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
data_range=255)` on the same luma computes the same statistics and averages the map after
cropping (11 − 1)/2 pixels per side, i.e. over the 'valid' region, so it equals pyiqa wherever
the clip is inactive; the clip is checked against `_ssim_reference` below.
"""

import jax
import numpy as np
import pytest
import scipy.signal
import skimage.metrics
from PIL import Image

from upzeroir_jax import metrics
from upzeroir_jax.metrics import common

LUMA = np.array([0.299, 0.587, 0.114])
# Jitted once here so that each shape compiles once for the whole module.
PSNR = jax.jit(metrics.psnr)
SSIM = jax.jit(metrics.ssim)


def _luma(rgb):
  return np.round(255 * (rgb.astype(np.float64) @ LUMA))


def _window():
  x = np.arange(11) - 5.0
  g = np.exp(-x * x / (2 * 1.5**2))
  return np.outer(g, g) / np.outer(g, g).sum()


def _ssim_reference(x, y, clip=True):
  """pyiqa's SSIM of two luma images (0..255) in float64 with SciPy 'valid' correlation."""
  def filt(v):
    return scipy.signal.correlate(v, _window(), mode="valid", method="direct")
  c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
  mx, my = filt(x), filt(y)
  vx, vy, cxy = filt(x * x) - mx**2, filt(y * y) - my**2, filt(x * y) - mx * my
  cs = (2 * cxy + c2) / (vx + vy + c2)
  if clip:
    cs = np.maximum(cs, 0)
  return float(np.mean((2 * mx * my + c1) / (mx**2 + my**2 + c1) * cs)), cs.min()


@pytest.fixture(scope="module")
def kodak_pair(kodak_dir):
  """Clean Kodak crops [3, 96, 128, 3] (one from a portrait image) and a noisy, blurred copy."""
  crops = []
  for name in ("kodim01.png", "kodim04.png", "kodim23.png"):
    img = np.asarray(Image.open(kodak_dir / name).convert("RGB"), np.float32) / 255
    crops.append(img[200:296, 150:278])
  clean = np.stack(crops)
  rng = np.random.default_rng(0)
  distorted = 0.5 * clean + 0.25 * (np.roll(clean, 1, 1) + np.roll(clean, 1, 2))
  distorted = np.clip(distorted + rng.normal(0, 0.04, clean.shape), 0, 1)
  return clean, np.round(distorted * 255).astype(np.float32) / 255


@pytest.fixture(scope="module")
def random_pair():
  """Independent uniform images [2, 40, 48, 3]: negative local correlations occur.

  Pixels whose luma lies within 1e-3 of a rounding tie become mid-grey, so that float32 and
  float64 round every luma alike and the comparison can be tight.
  """
  rng = np.random.default_rng(1)
  pair = []
  for _ in range(2):
    img = rng.uniform(0, 1, (2, 40, 48, 3)).astype(np.float32)
    exact = 255 * (img.astype(np.float64) @ LUMA)
    img[np.abs(exact - np.floor(exact) - 0.5) < 1e-3] = 0.25
    pair.append(img)
  return tuple(pair)


def _skimage_psnr_pyiqa(clean, distorted):
  mse = skimage.metrics.mean_squared_error(clean.astype(np.float64), distorted.astype(np.float64))
  ski = skimage.metrics.peak_signal_noise_ratio(
      clean.astype(np.float64), distorted.astype(np.float64), data_range=1.0)
  return ski - 10 * np.log10(1 + 1e-8 / mse)


def test_psnr_matches_skimage_on_kodak_and_random(kodak_pair, random_pair):
  for clean, distorted in (kodak_pair, random_pair):
    expected = [_skimage_psnr_pyiqa(c, d) for c, d in zip(clean, distorted)]
    np.testing.assert_allclose(PSNR(distorted, clean), expected, atol=1e-4)


def test_psnr_of_identical_images_is_80_db(random_pair):
  # 10·log10(1 / 1e-8) = 80: pyiqa's eps keeps the value finite.
  np.testing.assert_allclose(PSNR(random_pair[0], random_pair[0]), [80.0, 80.0], atol=1e-4)


def test_unbatched_images_give_scalars_equal_to_the_batched_values(random_pair):
  a, b = random_pair
  single = PSNR(a[1], b[1])
  assert single.shape == ()
  np.testing.assert_allclose(single, PSNR(a, b)[1], rtol=1e-6)


def test_ssim_matches_skimage_on_kodak_luma(kodak_pair):
  clean, distorted = kodak_pair
  got = np.asarray(SSIM(distorted, clean))
  for value, c, d in zip(got, clean, distorted):
    x, y = _luma(d), _luma(c)
    expected = skimage.metrics.structural_similarity(
        x, y, gaussian_weights=True, sigma=1.5, use_sample_covariance=False, data_range=255)
    assert _ssim_reference(x, y)[1] >= 0  # pyiqa's clip is inactive here, so skimage applies
    # 2e-5: float32 against float64 (below 1e-6 for the same luma) plus the rare luma values on
    # a rounding tie, where float32 and float64 may round apart; measured 7e-6 in all.
    np.testing.assert_allclose(value, expected, atol=2e-5)
  assert np.all(got > 0.3) and np.all(got < 0.95)  # a distortion SSIM notices, not saturated


def test_ssim_clips_negative_contrast_structure_as_pyiqa(random_pair):
  a, b = random_pair
  got = np.asarray(SSIM(a, b))
  for value, x, y in zip(got, a, b):
    expected, min_cs = _ssim_reference(_luma(x), _luma(y))
    unclipped, _ = _ssim_reference(_luma(x), _luma(y), clip=False)
    assert min_cs == 0 and expected - unclipped > 1e-3  # the clip matters on these images
    np.testing.assert_allclose(value, expected, atol=2e-6)  # measured 2e-8


def test_ssim_of_one_channel_images_uses_255_x(random_pair):
  x, y = random_pair[0][:, :, :, :1], random_pair[1][:, :, :, :1]
  # Rounded in float32 as the metric does, then correlated in float64 like the other references.
  expected = [_ssim_reference(np.round(255.0 * u[..., 0]).astype(np.float64),
                              np.round(255.0 * v[..., 0]).astype(np.float64))[0]
              for u, v in zip(x, y)]
  np.testing.assert_allclose(SSIM(x, y), expected, atol=1e-5)


def test_ssim_of_identical_images_is_one(kodak_pair):
  np.testing.assert_allclose(SSIM(kodak_pair[0], kodak_pair[0]), 1.0, atol=1e-6)


def test_luma_is_pyiqas_rounded_yiq_y(kodak_pair):
  rgb = np.concatenate(kodak_pair)
  got = np.asarray(jax.jit(common.luma_255)(rgb))
  exact = 255 * (rgb.astype(np.float64) @ LUMA)
  # Away from a rounding tie both precisions agree exactly; on a tie they may differ by one.
  near_tie = np.abs(exact - np.floor(exact) - 0.5) < 1e-3
  np.testing.assert_array_equal(got[~near_tie], np.round(exact)[~near_tie])
  assert np.all(np.abs(got - np.round(exact)) <= 1)
  assert near_tie.mean() < 0.01


@pytest.mark.parametrize("a_shape, b_shape, fn, message", [
    ((2, 32, 32, 3), (2, 32, 30, 3), metrics.psnr, "differ in shape"),
    ((32, 32, 4), (32, 32, 4), metrics.psnr, r"\[B, H, W, 3\]"),
    ((1, 10, 40, 3), (1, 10, 40, 3), metrics.ssim, "at least 11x11"),
])
def test_bad_input_raises_one_line_value_error(a_shape, b_shape, fn, message):
  with pytest.raises(ValueError, match=message):
    fn(np.zeros(a_shape, np.float32), np.zeros(b_shape, np.float32))


def test_integer_images_are_rejected():
  with pytest.raises(metrics.MetricInputError, match="uint8 / 255"):
    metrics.psnr(np.zeros((8, 8, 3), np.uint8), np.zeros((8, 8, 3), np.uint8))
