"""Degradations against scikit-image's HSV route, a hand-computed depth map and normal statistics."""

import math

import jax
import numpy as np
import pytest
from scipy import stats
from skimage import color

from upzeroir_jax.physics import degrade


@pytest.fixture(scope="module")
def img():
  return np.random.default_rng(0).uniform(0.0, 1.0, (2, 12, 20, 3)).astype(np.float32)


@pytest.fixture(scope="module")
def apply_jit():
  return jax.jit(degrade.apply, static_argnames="spec")


def _skimage_low_light(x, alpha):
  hsv = color.rgb2hsv(x.astype(np.float64))
  hsv[..., 2] *= alpha
  return np.clip(color.hsv2rgb(hsv), 0.0, 1.0)


def _hand_haze_pixel(x, i, j, beta, rows, cols, airlight=0.5):
  d = -0.04 * math.hypot(i - rows / 2, j - cols / 2) + math.sqrt(max(rows, cols))
  t = math.exp(-beta * d)
  return np.clip(x[..., i, j, :] * t + airlight * (1 - t), 0.0, 1.0)


@pytest.mark.parametrize("alpha", [0.1, 0.3, 1.7])
def test_low_light_matches_skimage_hsv_route(img, alpha):
  out = np.asarray(degrade.low_light(img, alpha))
  for b in range(img.shape[0]):
    np.testing.assert_allclose(out[b], _skimage_low_light(img[b], alpha), atol=1e-5)


def test_low_light_on_a_photo(kodak_dir):
  from upzeroir_jax import io

  x = io.read_image(kodak_dir / "kodim23.png")[100:164, 200:264]
  np.testing.assert_allclose(degrade.low_light(x, 0.3), _skimage_low_light(x, 0.3), atol=1e-5)


def test_haze_matches_hand_computed_depth(img):
  rows, cols = img.shape[1:3]
  out = np.asarray(degrade.haze(img, 0.12))
  for i, j in [(0, 0), (6, 10), (11, 19), (3, 17), (0, 19)]:
    np.testing.assert_allclose(
      out[:, i, j], _hand_haze_pixel(img, i, j, 0.12, rows, cols), atol=1e-6
    )
  # Depth is largest at the centre (6, 10), so the centre is the haziest pixel: closest to A.
  assert np.all(np.abs(out[:, 6, 10] - 0.5) <= np.abs(img[:, 6, 10] - 0.5))


def test_haze_single_image_and_custom_airlight(img):
  x = img[1]
  out = np.asarray(degrade.haze(x, 0.05, airlight=0.9))
  assert out.shape == x.shape
  np.testing.assert_allclose(out[4, 7], _hand_haze_pixel(x, 4, 7, 0.05, 12, 20, 0.9), atol=1e-6)


def test_noise_is_gaussian_with_sigma_and_deterministic():
  x = np.full((1, 64, 64, 3), 0.5, np.float32)
  key = jax.random.key(3)
  y = np.asarray(degrade.noise(x, 0.05, key))
  residual = (y - x).ravel() / 0.05
  assert stats.kstest(residual, "norm").pvalue > 1e-3
  np.testing.assert_array_equal(y, degrade.noise(x, 0.05, key))
  assert not np.array_equal(y, degrade.noise(x, 0.05, jax.random.key(4)))
  heavy = np.asarray(degrade.noise(x, 2.0, key))
  assert heavy.min() == 0.0 and heavy.max() == 1.0


def test_apply_composes_left_to_right(img, apply_jit):
  out = np.asarray(apply_jit(img, spec="lowlight:0.3+haze:0.05"))
  rows, cols = img.shape[1:3]
  for b in range(img.shape[0]):
    dark = _skimage_low_light(img[b], 0.3)
    for i, j in [(0, 0), (5, 9), (11, 3)]:
      expected = _hand_haze_pixel(dark, i, j, 0.05, rows, cols)
      np.testing.assert_allclose(out[b, i, j], expected, atol=1e-5)
  reversed_order = np.asarray(apply_jit(img, spec="haze:0.05+lowlight:0.3"))
  assert np.abs(out - reversed_order).max() > 0.05


def test_apply_with_noise_is_deterministic_and_adds_sigma(apply_jit):
  x = np.full((1, 64, 64, 3), 0.8, np.float32)
  key = jax.random.key(7)
  y = np.asarray(apply_jit(x, spec="lowlight:0.5+noise:light", key=key))
  np.testing.assert_array_equal(y, apply_jit(x, spec="lowlight:0.5+noise:light", key=key))
  residual = (y - 0.4).ravel() / (15 / 255)
  assert stats.kstest(residual, "norm").pvalue > 1e-3


def test_parse_named_intensities_fractions_and_presets():
  steps = degrade.parse("noise:light+haze:heavy+lowlight:heavy+noise:25/255+lowlight:light")
  assert [(s.kind, s.value) for s in steps] == [
    ("noise", 15 / 255),
    ("haze", 0.12),
    ("lowlight", 0.1),
    ("noise", 25 / 255),
    ("lowlight", 0.3),
  ]
  assert degrade.intensity("noise", "heavy") == 50 / 255
  assert degrade.intensity("haze", "light") == 0.05
  assert [(s.kind, s.value) for s in degrade.parse("lol_haze_noise")] == [
    ("haze", 0.05),
    ("noise", 15 / 255),
  ]


@pytest.mark.parametrize(
  "spec, bad",
  [
    ("noise", "noise"),
    ("lowlight:0.3+fog:0.1", "fog:0.1"),
    ("haze:abc", "haze:abc"),
    ("haze:-0.1", "haze:-0.1"),
    ("lowlight:0", "lowlight:0"),
    ("noise:1/0", "noise:1/0"),
    ("noise:0.1+", "''"),
    ("", "empty"),
  ],
)
def test_bad_spec_names_the_bad_part(spec, bad):
  with pytest.raises(ValueError, match=bad):
    degrade.parse(spec)


def test_noise_without_key_and_bad_shape_are_one_line_errors(img):
  with pytest.raises(ValueError, match="PRNG key"):
    degrade.apply(img, "noise:0.1")
  with pytest.raises(ValueError, match="got shape"):
    degrade.haze(img[..., :2], 0.1)
