"""`--grid=upsample`: a restoration made on the model grid carried to full resolution by a local
affine colour transform (docs/method.md §11).

The transform is He et al.'s guided filter with a colour guide, fitted on the model grid and
applied at full resolution as in the fast guided filter: on the grid, each window ω_k of radius
r (a (2r+1)² square, cut at the borders) gets the affine colour map q = A_kᵀ·I + b_k that best
takes the grid input I to the restored image p,

  A_k = (Σ_k + ε'·U)⁻¹ · cov_k(I, p),   b_k = mean_k(p) − A_kᵀ·mean_k(I),

Σ_k the 3×3 covariance of I in ω_k, cov_k(I, p) the 3×3 cross-covariance, U the identity and
ε' = ε·mean(I)² (ε relative to the grid input's brightness, so a dark photo is regularised as
a bright one). Each pixel's coefficients are the mean of those of the windows holding it; they
are upsampled bilinearly (pixel centres aligned, edges clamped) and applied to the
full-resolution input: q(x) = Ā(x)ᵀ·I_full(x) + b̄(x). Host-side NumPy; the full-resolution
pass goes in row strips, so memory stays a few coefficient rows above the image itself.
"""

import numpy as np

RADIUS = 2  # window radius on the model grid, in grid pixels
EPS = 1e-4  # ε relative to the squared mean intensity of the grid input
_STRIP = 256  # full-resolution rows per strip


def box_mean(x: np.ndarray, radius: int) -> np.ndarray:
  """Mean of float `[H, W, ...]` over the (2·radius+1)² square around each pixel, the square cut
  at the image's borders (the mean of the pixels inside it), by cumulative sums."""
  x = np.asarray(x, np.float64)

  def along(a: np.ndarray, axis: int) -> np.ndarray:
    n = a.shape[axis]
    c = np.cumsum(a, axis=axis)
    c = np.concatenate([np.zeros_like(np.take(c, [0], axis=axis)), c], axis=axis)
    hi = np.minimum(np.arange(n) + radius + 1, n)
    lo = np.maximum(np.arange(n) - radius, 0)
    count = (hi - lo).reshape([-1 if i == axis else 1 for i in range(a.ndim)])
    return (np.take(c, hi, axis=axis) - np.take(c, lo, axis=axis)) / count

  return along(along(x, 0), 1)


def _outer(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Per-pixel outer products `[..., 3, 3]` of colour vectors `[..., 3]`."""
  return a[..., :, None] * b[..., None, :]


def coefficients(guide: np.ndarray, target: np.ndarray, radius: int = RADIUS,
                 eps: float = EPS) -> tuple[np.ndarray, np.ndarray]:
  """The guided filter's mean coefficients (Ā, b̄) taking `guide` to `target` (module doc).

  Args:
    guide: the grid input I, float `[h, w, 3]`.
    target: the restored image p, float `[h, w, 3]`.
    radius: window radius r in grid pixels (≥ 0).
    eps: ε, relative to mean(I)².

  Returns:
    (Ā float64 `[h, w, 3, 3]`, b̄ float64 `[h, w, 3]`): output channel j is Σ_i Ā[..., i, j]·I_i
    + b̄[..., j].
  """
  guide = np.asarray(guide, np.float64)
  target = np.asarray(target, np.float64)
  if guide.shape != target.shape or guide.ndim != 3 or guide.shape[-1] != 3:
    raise ValueError(f"guide {guide.shape} and target {target.shape} must both be [h, w, 3]")
  mean_i = box_mean(guide, radius)
  mean_p = box_mean(target, radius)
  sigma = box_mean(_outer(guide, guide), radius) - _outer(mean_i, mean_i)
  cross = box_mean(_outer(guide, target), radius) - _outer(mean_i, mean_p)
  reg = eps * float(np.mean(guide)) ** 2 + 1e-12  # keeps a flat black grid invertible
  a = np.linalg.solve(sigma + reg * np.eye(3), cross)
  b = mean_p - np.einsum("...ij,...i->...j", a, mean_i)
  return box_mean(a, radius), box_mean(b, radius)


def _bilinear_taps(n_out: int, n_in: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Source indices (lower, upper) and the upper one's weight of each of `n_out` samples of an
  `n_in` axis, pixel centres aligned (x_in = (x_out + ½)·n_in/n_out − ½), clamped at the edges."""
  src = np.clip((np.arange(n_out) + 0.5) * (n_in / n_out) - 0.5, 0.0, n_in - 1)
  lower = np.floor(src).astype(np.int64)
  return lower, np.minimum(lower + 1, n_in - 1), src - lower


def apply(full: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """q = Āᵀ·I + b̄ at full resolution, (Ā, b̄) from `coefficients` upsampled bilinearly.

  Args:
    full: the full-resolution input I, float `[H, W, 3]`.
    a: Ā `[h, w, 3, 3]`; b: b̄ `[h, w, 3]` (any h, w).

  Returns:
    float32 `[H, W, 3]`, clipped to [0, 1].
  """
  full = np.asarray(full, np.float32)
  height, width = full.shape[:2]
  h, w = b.shape[:2]
  coef = np.concatenate([a.reshape(h, w, 9), b], axis=-1).astype(np.float32)
  x0, x1, fx = _bilinear_taps(width, w)
  fx = fx[None, :, None].astype(np.float32)
  rows = coef[:, x0] * (1 - fx) + coef[:, x1] * fx  # [h, W, 12]
  y0, y1, fy = _bilinear_taps(height, h)
  out = np.empty_like(full)
  for s in range(0, height, _STRIP):
    sl = slice(s, s + _STRIP)
    wy = fy[sl, None, None].astype(np.float32)
    c = rows[y0[sl]] * (1 - wy) + rows[y1[sl]] * wy  # [strip, W, 12]
    img = full[sl]
    out[sl] = np.einsum("...ij,...i->...j", c[..., :9].reshape(*c.shape[:2], 3, 3),
                        img) + c[..., 9:]
  return np.clip(out, 0.0, 1.0, out=out)


def carry(full: np.ndarray, grid_input: np.ndarray, restored: np.ndarray,
          radius: int = RADIUS, eps: float = EPS) -> np.ndarray:
  """The restoration `restored` of `grid_input` (both on the model grid) carried to the
  full-resolution input `full` by the guided transform (module doc).

  Args:
    full: float `[H, W, 3]` input at full resolution.
    grid_input: float `[h, w, 3]`, `full` brought to the model grid.
    restored: float `[h, w, 3]`, the model's output for `grid_input`.
    radius, eps: the transform's window radius (grid pixels) and relative ε.

  Returns:
    float32 `[H, W, 3]` in [0, 1]; `restored` itself when `full` is already `h x w`.
  """
  if full.shape == restored.shape:
    return np.clip(np.asarray(restored, np.float32), 0.0, 1.0)
  a, b = coefficients(grid_input, restored, radius, eps)
  return apply(full, a, b)
