"""Peak signal-to-noise ratio as pyiqa's default `psnr` metric computes it."""

import jax
import jax.numpy as jnp

from upzeroir_jax.metrics import common

# pyiqa's `psnr(..., eps=1e-8)`: keeps identical images finite (80 dB).
_EPS = 1e-8


def psnr(a: jax.Array, b: jax.Array) -> jax.Array:
  """PSNR in dB between two images, pyiqa's `create_metric("psnr")` (docs/method.md §9 tables).

  `10 · log10(1 / (MSE + 1e-8))` with the MSE taken over all pixels and the three RGB
  channels of each image: data range 1, RGB (pyiqa's `test_y_channel=False` default), no
  border crop, no rounding of the inputs. Symmetric in `a` and `b`. Jit-able.

  Args:
    a: `[B, H, W, 3]` (or `[H, W, 3]`; 1 channel also accepted) in [0, 1].
    b: the reference, same shape as `a`.

  Returns:
    `[B]` PSNR values (a scalar for unbatched input).
  """
  x, y, batched = common.as_pair(a, b)
  mse = jnp.mean(jnp.square(x - y), axis=(1, 2, 3))
  return common.unbatch(10.0 * jnp.log10(1.0 / (mse + _EPS)), batched)
