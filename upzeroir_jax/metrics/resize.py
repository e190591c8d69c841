"""MATLAB's `imresize(x, 0.5, 'bicubic')` (with antialiasing), as NIQE's second scale uses it."""

import jax
import jax.numpy as jnp
import numpy as np

# At scale 1/2 the antialiased cubic kernel (Keys, a = -0.5) is stretched to a support of
# 8 input pixels; every output pixel i sits at input coordinate 2i + 0.5 and takes the same
# 8 taps 2i-3 .. 2i+4, so the resize is a fixed stride-2 filter.
_PAD = 4


def _cubic(x: np.ndarray) -> np.ndarray:
  ax = np.abs(x)
  return np.where(
      ax <= 1, 1.5 * ax**3 - 2.5 * ax**2 + 1,
      np.where(ax <= 2, -0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2, 0.0))


def _taps() -> np.ndarray:
  """The 8 weights for input offsets -3 .. +4 around 2i, normalised (float32)."""
  distance = 3.5 - np.arange(8.0)
  weights = _cubic(0.5 * distance)
  return (weights / weights.sum()).astype(np.float32)


def _half_along(x: jax.Array, axis: int) -> jax.Array:
  size = x.shape[axis]
  pad = [(0, 0)] * x.ndim
  pad[axis] = (_PAD, _PAD)
  padded = jnp.pad(x, pad, mode="symmetric")
  out = 0.0
  for k, weight in enumerate(_taps()):
    start = 1 + k
    out = out + weight * jax.lax.slice_in_dim(padded, start, start + size - 1, 2, axis)
  return out


def imresize_half(x: jax.Array) -> jax.Array:
  """Halves the last two axes of `[..., H, W]` (H, W even) as MATLAB's bicubic `imresize`.

  MATLAB `imresize(x, 0.5)` (bicubic, antialiasing on, edges extended by mirroring with the
  edge pixel repeated), as pyiqa's `matlab_utils.imresize(x, scale=0.5)`; rows first, then
  columns, in the input's float precision (pyiqa resizes in float32). Returns
  `[..., H/2, W/2]`.
  """
  if x.shape[-1] % 2 or x.shape[-2] % 2:
    raise ValueError(f"imresize_half needs even sizes, got {x.shape[-2:]}")
  return _half_along(_half_along(x, x.ndim - 2), x.ndim - 1)
