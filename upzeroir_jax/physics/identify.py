"""Identifies the degradations of a photo from the photo alone (docs/method.md §1, §6).

Three classical statistics, each from an established estimator, decide which of low light, haze
and noise an image shows; no network is trained:

- Noise σ (`noise_sigma`): Chen, Zhu and Heng's patch-PCA estimator (ICCV 2015). The
  covariance of the image's 5×5×3 patches is the signal's, concentrated in a few directions
  (texture and edges are low-rank), plus σ²·I from white noise in every direction; its
  eigenvalues sorted in decreasing order, the first tail whose mean is at most its median is
  noise alone (`tail_variance`), and σ² is that mean. Texture thus does not read as noise, as
  it does for estimators that look for the flattest regions. Clipping at 0 or 1 shrinks the
  noise a patch shows, so only patches whose mean stays 2 pilot σ away from both bounds are
  used (in a dark image where fewer than a quarter do, the quarter farthest from them; an
  image under about 21×21 pixels, with too few patches for a 75-dimensional covariance, gets
  the pilot estimate). A grey photo (three equal channels, as grey files are read) has patches
  in a 25-dimensional subspace of the 75, so two thirds of the eigenvalues are 0 whatever the
  noise; its patches are taken from one channel (5×5×1). With 25 dimensions texture leaks into
  the tail (clean grey photos read up to 11/255), so a grey photo's σ is the smaller of that
  and the pilot, which both only overestimate. The pilot is Donoho's wavelet estimator made block-wise
  (`_block_sigma`): `σ = MAD / 0.6745` of the finest diagonal (HH) Haar subband becomes the
  10th percentile of the HH RMS over 16×16-pixel blocks without clipped pixels, divided by the
  same quantile of a chi distribution with 64 degrees of freedom (Wilson–Hilferty); it reads
  the flattest blocks, so texture can only raise it, which widens the margin (fewer patches,
  no bias).
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

Decisions are thresholds on these (`Thresholds`; chosen on the first half of CBSD68 only, by the
rule of docs/method.md §6; eval/identify.py measures them on other images).

Host numpy rather than JAX: the input of `upzeroir restore` arrives at its own size, and a
jitted estimator would compile once per image size (seconds) to save milliseconds; the numpy
version runs before the batch is built. Its time per 512² image, and why the patch covariance
is an `einsum` rather than a BLAS product, are in docs/method.md §6.
"""

import dataclasses
import math

import numpy as np

BLOCK = 8  # HH coefficients per block side (16×16 pixels) of the pilot noise estimator.
SIGMA_QUANTILE = 0.1  # quantile over blocks of the pilot noise estimator.
PATCH = 5  # pixels per side of the patches of the PCA noise estimator.
PATCHES = 16384  # about this many patches: the grid's step is rounded to give it.
CLIP_MARGIN = 2.0  # a patch's mean must stay this many pilot σ away from 0 and 1.
FALLBACK = 0.25  # share of patches kept, farthest from 0 and 1, when fewer pass the margin.
MIN_PER_DIM = 4  # at least this many patches per patch dimension, or the pilot is returned.
SMOOTH = 8  # pixels per side of the averaging blocks of illumination and haze density.
DARK_RADIUS = 2  # half-width, in blocks, of the dark channel's minimum window.
DARK_QUANTILE = 5.0  # percentile of the dark channel that measures haze.
LUMA = (0.299, 0.587, 0.114)
MIN_SIDE = 2 * BLOCK  # pixels a side below which nothing is identified.
KINDS = ("lowlight", "haze", "noise")


@dataclasses.dataclass(frozen=True)
class Thresholds:
  """Decision thresholds (docs/method.md §6 gives the rule; chosen on CBSD68's first half).

  noise_sigma: noise is present when the estimated σ (on [0, 1]) exceeds this.
  illumination: low light when the luminance white level is below this.
  haze_density: haze when the estimated 1 − t (dark channel over white level) exceeds this.
  """

  noise_sigma: float = 8.0 / 255
  illumination: float = 0.478
  haze_density: float = 0.239


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
  if min(img.shape[:2]) < MIN_SIDE:
    raise ValueError(f"image is {img.shape[0]}x{img.shape[1]}; identification needs at least "
                     f"{MIN_SIDE} pixels a side")
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


def _block_sigma(img: np.ndarray) -> float:
  """The block-wise Haar-HH estimate of σ (module docstring): the pilot of `noise_sigma`."""
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


def tail_variance(eigenvalues: np.ndarray) -> float:
  """Chen et al.'s noise variance from the eigenvalues `[D]` of a patch covariance.

  With the eigenvalues sorted in decreasing order, the first tail `λ_i … λ_D` whose mean is at
  most its median is taken as noise-only (the eigenvalues of pure noise cluster around σ², so
  their mean is close to their median; a texture eigenvalue left in the set pulls the mean
  above the median), and its mean is returned.
  """
  lam = np.sort(np.asarray(eigenvalues, np.float64))[::-1]
  for i in range(lam.size):
    tail = lam[i:]
    if tail.mean() <= np.median(tail):
      return float(max(tail.mean(), 0.0))
  return float(max(lam[-1], 0.0))


def noise_sigma(img: np.ndarray) -> float:
  """Noise standard deviation of `img` `[H, W, 3]` in [0, 1] (Chen et al.'s patch PCA).

  Returns σ on the [0, 1] scale. Patches of PATCH×PATCH pixels and 3 colours (for a grey
  image, `is_grey`, one channel, and the smaller of this and the pilot), on a grid whose step
  gives about PATCHES, whose mean stays CLIP_MARGIN pilot σ away from 0 and 1 are kept (where under a share FALLBACK do, or under
  MIN_PER_DIM per dimension, that many farthest from the bounds); the noise variance is
  `tail_variance` of their covariance's eigenvalues. An image with fewer than MIN_PER_DIM
  patches per dimension (under about 21×21 pixels) gets the pilot.
  """
  img = _as_image(img)
  pilot = _block_sigma(img)
  if is_grey(img):
    return min(pilot, _pca_sigma(img[..., :1], pilot))
  return _pca_sigma(img, pilot)


def _pca_sigma(img: np.ndarray, pilot: float) -> float:
  """The patch-PCA σ of `img` `[H, W, C]` (C = 3, or 1 for a grey photo) given the pilot."""
  channels = img.shape[-1]
  patches = np.lib.stride_tricks.sliding_window_view(img, (PATCH, PATCH, channels))[:, :, 0]
  step = max(1, round(math.sqrt(patches.shape[0] * patches.shape[1] / PATCHES)))
  patches = patches[::step, ::step].reshape(-1, PATCH * PATCH, channels)
  dims = PATCH * PATCH * channels
  if patches.shape[0] < MIN_PER_DIM * dims:
    return pilot
  means = patches.mean(axis=1)
  room = np.minimum(means.min(axis=1), 1.0 - means.max(axis=1))
  keep = room > CLIP_MARGIN * pilot
  least = max(math.ceil(FALLBACK * room.size), MIN_PER_DIM * dims)
  if keep.sum() < least:
    keep = np.argsort(room)[-least:]
  flat = patches[keep].reshape(-1, dims)
  flat = flat - flat.mean(axis=0)
  cov = np.einsum("ni,nj->ij", flat, flat) / flat.shape[0]  # no BLAS threads
  return math.sqrt(tail_variance(np.linalg.eigvalsh(cov)))


def is_grey(img: np.ndarray) -> bool:
  """Whether the three channels of `img` `[H, W, 3]` are equal (a grey photo read as RGB)."""
  return bool(np.array_equal(img[..., 0], img[..., 1])
              and np.array_equal(img[..., 0], img[..., 2]))


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
