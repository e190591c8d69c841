"""Input checks, the luma conversion and the Gaussian window shared by the image metrics.

These follow pyiqa (IQA-PyTorch), whose default settings the evaluation of this line of work
(LD-RPS's `inference_iqa.py`, which calls `pyiqa.create_metric(name)`) reports.
"""

import jax
import jax.numpy as jnp
import numpy as np

# Luma row of pyiqa's RGB -> YIQ matrix (`color_util.rgb2yiq`), the default `color_space`
# of its SSIM and NIQE.
_YIQ_Y = (0.299, 0.587, 0.114)


class MetricInputError(ValueError):
  """An image passed to a metric has the wrong rank, channel count, dtype or size."""


def as_batch(img: jax.Array, name: str = "img") -> tuple[jax.Array, bool]:
  """Validates an image and returns it as a float `[B, H, W, C]` batch.

  Args:
    img: `[B, H, W, C]` or `[H, W, C]` with C in {1, 3}, floating point in [0, 1].
    name: the argument's name, used in the error message.

  Returns:
    `(batch, batched)`: the images as `[B, H, W, C]` (float32, or float64 where given and
    enabled) and whether the input had a batch axis.

  Raises:
    MetricInputError: on a wrong rank, channel count or a non-floating dtype.
  """
  img = jnp.asarray(img)
  if img.ndim not in (3, 4) or img.shape[-1] not in (1, 3):
    raise MetricInputError(
        f"{name} has shape {tuple(img.shape)}; pass [B, H, W, 3] or [H, W, 3] (or 1 channel).")
  if not jnp.issubdtype(img.dtype, jnp.floating):
    raise MetricInputError(
        f"{name} has dtype {img.dtype}; pass float images in [0, 1] (e.g. uint8 / 255).")
  img = img.astype(jnp.promote_types(img.dtype, jnp.float32))
  if img.ndim == 3:
    return img[None], False
  return img, True


def as_pair(a: jax.Array, b: jax.Array) -> tuple[jax.Array, jax.Array, bool]:
  """`as_batch` for two images of identical shape; returns `(a, b, batched)`."""
  x, batched = as_batch(a, "a")
  y, _ = as_batch(b, "b")
  if jnp.shape(a) != jnp.shape(b):
    raise MetricInputError(
        f"the images differ in shape: {tuple(jnp.shape(a))} vs {tuple(jnp.shape(b))}; "
        "pass two images of the same size.")
  return x, y, batched


def check_min_size(img: jax.Array, min_size: int, metric: str) -> None:
  """Raises MetricInputError where `img` ([B, H, W, C]) is smaller than min_size²."""
  height, width = img.shape[1:3]
  if height < min_size or width < min_size:
    raise MetricInputError(
        f"{metric} needs images of at least {min_size}x{min_size} pixels, got {height}x{width}; "
        "pass a larger image.")


def luma_255(img: jax.Array) -> jax.Array:
  """pyiqa's `to_y_channel(img, 255, "yiq")` followed by its rounding: `[B, H, W]`.

  `Y = round(255 · (0.299 R + 0.587 G + 0.114 B))` (round half to even, as `torch.round`),
  integer values in [0, 255] held as floats; a single-channel image gives `round(255 · x)`.
  The weighted sum is elementwise (not a matrix product) so that no backend runs it at
  reduced matmul precision.

  Args:
    img: `[B, H, W, C]`, C in {1, 3}, in [0, 1].
  """
  if img.shape[-1] == 1:
    return jnp.round(img[..., 0] * 255.0)
  luma = img[..., 0] * _YIQ_Y[0] + img[..., 1] * _YIQ_Y[1] + img[..., 2] * _YIQ_Y[2]
  return jnp.round(luma * 255.0)


def gaussian_window(size: int, sigma: float) -> np.ndarray:
  """MATLAB's `fspecial('gaussian', size, sigma)` as pyiqa builds it: `[size, size]` float32.

  The window is normalised in float64 and then rounded to float32, as pyiqa's `fspecial`
  returns a float32 tensor that its SSIM and NIQE cast back to float64.
  """
  half = (size - 1) / 2.0
  y, x = np.ogrid[-half:half + 1, -half:half + 1]
  window = np.exp(-(x * x + y * y) / (2.0 * sigma * sigma))
  window[window < np.finfo(window.dtype).eps * window.max()] = 0
  return (window / window.sum()).astype(np.float32)


def unbatch(values: jax.Array, batched: bool) -> jax.Array:
  """`[B]` -> `[B]` for batched inputs, `[1]` -> scalar for a single `[H, W, C]` image."""
  return values if batched else values[0]
