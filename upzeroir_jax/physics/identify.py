"""Identifies the degradations of a photo from the photo alone (docs/method.md §1, §6).

Three classical statistics, each from an established estimator, decide which of low light, haze
and noise an image shows; no network is trained:

- Noise σ (`noise_sigma`): Donoho's wavelet estimator, `σ = MAD / 0.6745` of the finest diagonal
  (HH) Haar subband, made robust to texture as in block-based noise estimation: the HH
  coefficients are grouped in 8×8 blocks (16×16 pixels) per channel, each block's RMS is an
  estimate, and a low percentile (`SIGMA_QUANTILE`) over the blocks — the flattest ones — is
  divided by the same quantile of the RMS of pure Gaussian noise (chi distribution with 64
  degrees of freedom, Wilson–Hilferty approximation). Blocks with clipped pixels (at 0 or 1) are
  skipped, since clipping shrinks the noise they show; in a dark image, where nearly all blocks
  touch 0, the least-clipped tenth is used (low light before noise darkens the signal, not the
  noise, but clipping at 0 still hides part of it).
- Illumination (`illumination`): the 99th percentile of the luminance (BT.601 weights) of the
  image averaged over 8×8 blocks (averaging removes the noise). Low light scales every value
  by α, so a dark image keeps its white level below α.
- Haze density (`haze_density`): He et al.'s transmission estimate `1 − t = dark(I) / A`, with
  the dark channel (minimum over colours, then over a 5×5 window of 8×8-pixel blocks) at its
  5th percentile and the airlight A taken as the white level above (He et al. take A from the
  brightest pixels). A haze-free scene has dark pixels in nearly every window; haze lifts them
  by A·(1 − t). Noise clipped at 0 lifts dark pixels by `σ/√(2π)` (the mean of max(0, σZ)),
  which is subtracted first. Being a ratio, the density does not change under low light
  (which scales dark channel and white level alike), so haze is found in dark images too.

Decisions are thresholds on these (`Thresholds`; tuned on the first half of CBSD68 only, the
figures of eval/identify.py are measured on Kodak24 and the second half of CBSD68).

Host numpy rather than JAX: the input of `upzeroir restore` arrives at its own size, and a
jitted estimator would compile once per image size (seconds) to save milliseconds; the numpy
version takes about 10 ms per 512² image on one CPU core and runs before the batch is built.
"""

import dataclasses
import math

import numpy as np

BLOCK = 8  # HH coefficients per block side (16×16 pixels) of the noise estimator.
SIGMA_QUANTILE = 0.1  # quantile over blocks of the noise estimator.
SMOOTH = 8  # pixels per side of the averaging blocks of illumination and haze density.
DARK_RADIUS = 2  # half-width, in blocks, of the dark channel's minimum window.
DARK_QUANTILE = 5.0  # percentile of the dark channel that measures haze.
LUMA = (0.299, 0.587, 0.114)
KINDS = ("lowlight", "haze", "noise")


@dataclasses.dataclass(frozen=True)
class Thresholds:
  """Decision thresholds (docs/method.md §6; tuned on CBSD68's first half).

  noise_sigma: noise is present when the estimated σ (on [0, 1]) exceeds this.
  illumination: low light when the luminance white level is below this.
  haze_density: haze when the estimated 1 − t (dark channel over white level) exceeds this.
  """

  noise_sigma: float = 8.0 / 255
  illumination: float = 0.48
  haze_density: float = 0.235


@dataclasses.dataclass(frozen=True)
class Identification:
  """What `identify` found in one image.

  lowlight / haze / noise: whether each degradation is present.
  illumination: luminance white level (99th percentile), in [0, 1].
  haze_density: He et al.'s 1 − t: dark-channel level (less the noise's clipping bias) over
    the white level.
  sigma: estimated noise standard deviation on the [0, 1] scale.
  """

  lowlight: bool
  haze: bool
  noise: bool
  illumination: float
  haze_density: float
  sigma: float

  @property
  def composition(self) -> str:
    """The degradations found, joined by "+" in `KINDS` order, or "clean"."""
    found = [k for k in KINDS if getattr(self, k)]
    return "+".join(found) or "clean"

  def report(self) -> dict:
    """A JSON-ready record: composition, flags and the estimates (σ also in 8-bit units)."""
    return {"detected": self.composition, "lowlight": self.lowlight, "haze": self.haze,
            "noise": self.noise, "illumination": round(self.illumination, 4),
            "haze_density": round(self.haze_density, 4), "sigma": round(self.sigma, 5),
            "sigma_255": round(self.sigma * 255, 2)}


def _as_image(img: np.ndarray) -> np.ndarray:
  img = np.asarray(img, np.float32)
  if img.ndim != 3 or img.shape[-1] != 3:
    raise ValueError(f"expected an image [H, W, 3], got shape {img.shape}")
  if min(img.shape[:2]) < 2 * BLOCK:
    raise ValueError(f"image is {img.shape[0]}x{img.shape[1]}; identification needs at least "
                     f"{2 * BLOCK} pixels a side")
  return img


def _chi_quantile_ratio(dof: int, q: float) -> float:
  """The q-quantile of sqrt(χ²_dof / dof) (Wilson–Hilferty; z from the normal quantile)."""
  z = math.sqrt(2.0) * _erfinv(2.0 * q - 1.0)
  c = 2.0 / (9.0 * dof)
  return math.sqrt((1.0 - c + z * math.sqrt(c)) ** 3)


def _erfinv(x: float) -> float:
  """Inverse error function by Newton's method on math.erf (|x| < 1)."""
  y = 0.0
  for _ in range(50):
    y -= (math.erf(y) - x) / (2.0 / math.sqrt(math.pi) * math.exp(-y * y))
  return y


def noise_sigma(img: np.ndarray) -> float:
  """Noise standard deviation of `img` `[H, W, 3]` in [0, 1] (block-wise Haar-HH estimator).

  Returns σ on the [0, 1] scale; unbiased for white Gaussian noise on flat regions.
  """
  img = _as_image(img)
  side = 2 * BLOCK
  h, w = img.shape[0] // side * side, img.shape[1] // side * side
  crop = img[:h, :w]
  px = crop.reshape(h // 2, 2, w // 2, 2, 3)
  hh = (px[:, 0, :, 0] - px[:, 0, :, 1] - px[:, 1, :, 0] + px[:, 1, :, 1]) / 2.0
  rms = np.sqrt(_block_mean(hh * hh, BLOCK)).reshape(-1)
  clipped = _block_mean(((crop <= 0.0) | (crop >= 1.0)).astype(np.float32), side).reshape(-1)
  keep = clipped == 0.0
  if keep.mean() < 0.1:
    keep = clipped <= np.quantile(clipped, 0.1)
  est = np.quantile(rms[keep], SIGMA_QUANTILE)
  return float(est / _chi_quantile_ratio(BLOCK * BLOCK, SIGMA_QUANTILE))


def _block_mean(img: np.ndarray, k: int) -> np.ndarray:
  """Means over k×k blocks `[H // k, W // k, C]` (a ragged border is dropped)."""
  h, w = max(img.shape[0] // k, 1) * k, max(img.shape[1] // k, 1) * k
  rows = img[:h, :w].reshape(h // k, k, w, -1).sum(axis=1)
  return rows.reshape(h // k, w // k, k, -1).sum(axis=2) / (k * k)


def _min_filter(a: np.ndarray, r: int) -> np.ndarray:
  """Minimum over the (2r+1)² window around each element (edges replicated)."""
  p = np.pad(a, r, mode="edge")
  rows = np.min([p[i:i + a.shape[0]] for i in range(2 * r + 1)], axis=0)
  return np.min([rows[:, j:j + a.shape[1]] for j in range(2 * r + 1)], axis=0)


def _white_level(blocks: np.ndarray) -> float:
  return float(np.percentile(blocks @ np.asarray(LUMA, np.float32), 99))


def _haze_density(blocks: np.ndarray, sigma: float) -> float:
  dark = _min_filter(blocks.min(axis=-1), DARK_RADIUS)
  level = np.percentile(dark, DARK_QUANTILE) - sigma / math.sqrt(2.0 * math.pi)
  return float(level / max(_white_level(blocks), 1.0 / 255))


def illumination(img: np.ndarray) -> float:
  """Luminance white level of `img` `[H, W, 3]`: the 99th percentile over 8×8-block means."""
  return _white_level(_block_mean(_as_image(img), SMOOTH))


def haze_density(img: np.ndarray, sigma: float) -> float:
  """He et al.'s `1 − t = dark(I) / A` of `img` `[H, W, 3]`: the dark channel's 5th percentile
  less the clipping bias `σ/√(2π)` of noise σ, over the white level `illumination(img)`."""
  return _haze_density(_block_mean(_as_image(img), SMOOTH), sigma)


def identify(img: np.ndarray, thresholds: Thresholds = Thresholds()) -> Identification:
  """Which of low light, haze and noise `img` `[H, W, 3]` (float in [0, 1]) shows.

  Raises:
    ValueError: not an RGB image of at least 16 pixels a side.
  """
  img = _as_image(img)
  sigma = noise_sigma(img)
  blocks = _block_mean(img, SMOOTH)
  light = _white_level(blocks)
  dense = _haze_density(blocks, sigma)
  return Identification(lowlight=light < thresholds.illumination,
                        haze=dense > thresholds.haze_density,
                        noise=sigma > thresholds.noise_sigma,
                        illumination=light, haze_density=dense, sigma=sigma)
