"""Natural-scene statistics of NIQE: MSCN coefficients and AGGD features, as pyiqa computes them.

Mittal, Soundararajan and Bovik, "Making a 'completely blind' image quality analyzer", IEEE
SPL 2013 (Eq. 1-8), in the MATLAB-aligned form of pyiqa's `niqe_arch.py`/`func_util.py`.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np

from upzeroir_jax.metrics import common

# pyiqa's AGGD shape grid: torch.arange(0.2, 10 + 0.001, 0.001) in float32 (9801 values).
_SHAPE_GRID = np.float32(0.2 + 0.001 * np.arange(9801, dtype=np.float64))
# Neighbour offsets of the paired products, in pyiqa's (and the pristine model's) order:
# horizontal, vertical, main diagonal, secondary diagonal (`torch.roll` shifts).
_SHIFTS = ((0, 1), (1, 0), (1, 1), (1, -1))
FEATURES_PER_SCALE = 18


def mscn(y: jax.Array) -> jax.Array:
  """Mean-subtracted contrast-normalised coefficients of `[B, H, W]` luma (0..255): same shape.

  `(y − μ) / (σ + 1)` with μ, σ the local mean and standard deviation under MATLAB's 7x7
  Gaussian window (σ = 7/6) and replicate padding, as pyiqa's `normalize_img_with_gauss(img,
  padding='replicate')`. pyiqa's window is rounded to float32 and so sums to 1 + 1.1e-8; that
  offset is kept (`s` below) since it decides the sign of the coefficients of flat blocks,
  which in turn decides whether such a block yields NaN features and is left out.

  pyiqa forms `E[y²] − μ²` in float64. Here every moment is summed from differences to the
  centre pixel, `d_k = y_k − y` (exact for integer luma), which is the same quantity without
  the cancellation, so float32 suffices:
    μ − y = m + (s − 1)·y,   E[y²] − μ² = q − m² − (s − 1)(s·y² + 2·y·m),
  with `m = Σ w_k d_k`, `q = Σ w_k d_k²` and `s = Σ w_k`.
  """
  window = common.gaussian_window(7, 7.0 / 6.0)
  excess = float(np.sum(window, dtype=np.float64)) - 1.0
  height, width = y.shape[-2:]
  padded = jnp.pad(y, ((0, 0), (3, 3), (3, 3)), mode="edge")
  m = jnp.zeros_like(y)
  q = jnp.zeros_like(y)
  for i in range(7):
    for j in range(7):
      d = padded[:, i:i + height, j:j + width] - y
      m = m + window[i, j] * d
      q = q + window[i, j] * d * d
  mean_minus_y = m + excess * y
  variance = q - m * m - excess * ((1.0 + excess) * y * y + 2.0 * y * m)
  return -mean_minus_y / (jnp.sqrt(jnp.abs(variance)) + 1.0)


def _shape_tables() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Over the shape grid α: ρ(α) = Γ(2/α)²/(Γ(1/α)Γ(3/α)), √(Γ(1/α)/Γ(3/α)), Γ(2/α)/Γ(1/α)."""
  grid = _SHAPE_GRID.astype(np.float64)
  lg1 = np.array([math.lgamma(1.0 / a) for a in grid])
  lg2 = np.array([math.lgamma(2.0 / a) for a in grid])
  lg3 = np.array([math.lgamma(3.0 / a) for a in grid])
  return (np.exp(2 * lg2 - lg1 - lg3), np.sqrt(np.exp(lg1 - lg3)), np.exp(lg2 - lg1))


def aggd_fit(samples: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Moment-matching AGGD fit over the last axis of `samples` (pyiqa `estimate_aggd_param`).

  Args:
    samples: `[..., P]`.

  Returns:
    `(alpha, beta_l, beta_r, eta)`, each `samples.shape[:-1]`: the shape α chosen on the grid
    0.2:0.001:10 by the closest generalized-Gaussian ratio, the left/right scales and the mean
    `η = (β_r − β_l)·Γ(2/α)/Γ(1/α)` (SPL 2013 Eq. 8). A side with no samples gives NaN
    scales, as in pyiqa.
  """
  x = samples
  ratio, scale_factor, mean_factor = (jnp.asarray(t, x.dtype) for t in _shape_tables())
  sq = x * x
  left = x < 0
  right = x > 0
  sums = jnp.sum(jnp.stack([
      jnp.where(left, sq, 0.0), left.astype(x.dtype), jnp.where(right, sq, 0.0),
      right.astype(x.dtype), jnp.abs(x), sq], axis=-2), axis=-1)
  left_sq, left_count, right_sq, right_count, abs_sum, sq_sum = (
      sums[..., i] for i in range(6))
  left_std = jnp.sqrt(left_sq / left_count)
  right_std = jnp.sqrt(right_sq / right_count)
  gamma_hat = left_std / right_std
  r_hat = jnp.square(abs_sum) / (sq_sum * x.shape[-1])
  r_hat_norm = r_hat * (gamma_hat**3 + 1) * (gamma_hat + 1) / jnp.square(gamma_hat**2 + 1)
  index = jnp.argmin(jnp.abs(ratio - r_hat_norm[..., None]), axis=-1)
  alpha = jnp.asarray(_SHAPE_GRID)[index]
  beta_l = left_std * scale_factor[index]
  beta_r = right_std * scale_factor[index]
  return alpha, beta_l, beta_r, (beta_r - beta_l) * mean_factor[index]


def tile_samples(coefficients: jax.Array, block: int) -> jax.Array:
  """The samples NIQE fits per `block x block` tile of `[B, H, W]` MSCN coefficients.

  Tiles are taken row by row (H and W multiples of `block`). Per tile (pyiqa's
  `compute_feature`): the coefficients, then their products with each neighbour in
  `_SHIFTS` (circular within the tile, `torch.roll`).

  Returns:
    `[B, N, 5, block²]`, N = (H/block)·(W/block).
  """
  batch, height, width = coefficients.shape
  tiles = coefficients.reshape(batch, height // block, block, width // block, block)
  tiles = tiles.transpose(0, 1, 3, 2, 4).reshape(batch, -1, block, block)
  products = [tiles * jnp.roll(tiles, shift, axis=(-2, -1)) for shift in _SHIFTS]
  stacked = jnp.stack([tiles] + products, axis=2)
  return stacked.reshape(*stacked.shape[:3], block * block)


def features_from_fits(alpha: jax.Array, beta_l: jax.Array, beta_r: jax.Array,
                       eta: jax.Array) -> jax.Array:
  """NIQE's 18 features from the `[..., 5]` AGGD fits of `tile_samples`: `[..., 18]`.

  `[α, (β_l+β_r)/2]` of the coefficients, then `[α, η, β_l, β_r]` per neighbour product.
  """
  features = [alpha[..., 0], 0.5 * (beta_l[..., 0] + beta_r[..., 0])]
  for i in range(1, 1 + len(_SHIFTS)):
    features.extend((alpha[..., i], eta[..., i], beta_l[..., i], beta_r[..., i]))
  return jnp.stack(features, axis=-1)
