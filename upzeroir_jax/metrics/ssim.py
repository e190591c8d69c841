"""Structural similarity as pyiqa's default `ssim` metric computes it."""

import jax
import jax.numpy as jnp
import numpy as np

from upzeroir_jax.metrics import common

WINDOW_SIZE = 11
SIGMA = 1.5
# pyiqa's SSIM works on 8-bit values: data range 255.
_C1 = (0.01 * 255.0) ** 2
_C2 = (0.03 * 255.0) ** 2


def _filter_valid(maps: jax.Array) -> jax.Array:
  """Correlates `[B, H, W, K]` with the 11x11 Gaussian window: 'valid' region `[B, H-10, W-10, K]`.

  The window is separable (`fspecial`'s 2-D Gaussian is the outer product of its 1-D
  marginals), so it runs as two 11-tap passes of shifted slices: elementwise float arithmetic
  on every backend, no reduced-precision convolution.
  """
  taps = common.gaussian_window(WINDOW_SIZE, SIGMA).astype(np.float64).sum(axis=1)
  for axis in (1, 2):
    size = maps.shape[axis] - WINDOW_SIZE + 1
    maps = sum(float(w) * jax.lax.slice_in_dim(maps, k, k + size, axis=axis)
               for k, w in enumerate(taps))
  return maps


def ssim(a: jax.Array, b: jax.Array) -> jax.Array:
  """SSIM between two images, pyiqa's `create_metric("ssim")` (docs/method.md §9 tables).

  Exactly pyiqa's defaults (`SSIM(downsample=False, test_y_channel=True, color_space="yiq",
  crop_border=0)`):
  1. each image becomes `Y = round(255 · (0.299 R + 0.587 G + 0.114 B))` (the Y of YIQ, not of
     YCbCr; a 1-channel image becomes `round(255 · x)`), so data range 255,
     `C1 = (0.01·255)²`, `C2 = (0.03·255)²`;
  2. no average-pool downsampling (`downsample=False`);
  3. local statistics with MATLAB's `fspecial('gaussian', 11, 1.5)` window over the 'valid'
     region only (no padding): an `[H-10, W-10]` map; biased (population) variances;
  4. the contrast-structure term is clipped at 0 (`relu`, pyiqa's guard against negative
     values), then `SSIM = mean[(2μxμy + C1)/(μx² + μy² + C1) · max(0, (2σxy + C2)/(σx² + σy² + C2))]`.
  pyiqa evaluates step 3-4 in float64. Here they run in the input's float precision; the image
  mean is subtracted before the second moments so that `E[x²] − μ²` keeps its precision
  (docs/metrics.md gives the agreement with float64). Symmetric in `a` and `b`. Jit-able.

  Args:
    a: `[B, H, W, 3]` (or `[H, W, 3]`; 1 channel also accepted) in [0, 1], H, W >= 11.
    b: the reference, same shape as `a`.

  Returns:
    `[B]` SSIM values in [0, 1] (a scalar for unbatched input).

  Raises:
    common.MetricInputError: on mismatched shapes or images smaller than 11x11.
  """
  x, y, batched = common.as_pair(a, b)
  common.check_min_size(x, WINDOW_SIZE, "SSIM")
  x = common.luma_255(x)
  y = common.luma_255(y)
  offset = 0.5 * (jnp.mean(x, axis=(1, 2), keepdims=True) + jnp.mean(y, axis=(1, 2), keepdims=True))
  x = x - offset
  y = y - offset
  stats = _filter_valid(jnp.stack([x, y, x * x, y * y, x * y], axis=-1))
  mu_x, mu_y, xx, yy, xy = (stats[..., i] for i in range(5))
  var_x = xx - mu_x * mu_x
  var_y = yy - mu_y * mu_y
  cov_xy = xy - mu_x * mu_y
  mu_x = mu_x + offset
  mu_y = mu_y + offset
  contrast_structure = jax.nn.relu((2.0 * cov_xy + _C2) / (var_x + var_y + _C2))
  luminance = (2.0 * mu_x * mu_y + _C1) / (mu_x * mu_x + mu_y * mu_y + _C1)
  return common.unbatch(jnp.mean(luminance * contrast_structure, axis=(1, 2)), batched)
