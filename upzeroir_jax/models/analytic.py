"""An exact Gaussian prior as a diffusion backbone, for verifying the sampler (docs/method.md §10).

The "autoencoder" is the identity map z = 2·img − 1 (one latent pixel per image pixel, three
latent channels). The prior is a stationary Gaussian image model: per 2-D Fourier frequency f
(orthonormal FFT over the spatial axes) and channel c, Z0(f, c) ~ N(M(f, c), P(f, c)), where M is
the mean colour (nonzero only at f = 0) and P the power spectrum, both given by the caller. The
noise predictor is the exact posterior mean

  E[ε | z_t] = sqrt(1−ᾱ_t)·(Z_t − sqrt(ᾱ_t)·M) / (ᾱ_t·P + 1 − ᾱ_t)    (per f, c),

so a correct posterior sampler must reproduce the Wiener filter's statistics. `from_noisy`
estimates M and P from a noisy image (P = max(|Y − M|² − σ_z², floor), σ_z = 2σ) and `wiener`
is the matching MMSE estimate, the reference for the sampler's mean.
"""

from typing import Any

import flax.struct
import jax
import jax.numpy as jnp

from upzeroir_jax.models import schedule as schedule_lib

POWER_FLOOR = 1e-4


def _fft(z: jax.Array) -> jax.Array:
  return jnp.fft.fft2(z, axes=(-3, -2), norm="ortho")


def _ifft(z: jax.Array) -> jax.Array:
  return jnp.real(jnp.fft.ifft2(z, axes=(-3, -2), norm="ortho"))


@flax.struct.dataclass
class AnalyticBackbone:
  """A Backbone (models/backbone.py) with a closed-form ε for a Gaussian prior (docs/method.md §10).

  Attributes:
    schedule: DDIM schedule (default: Stable Diffusion's).
    mean: `[3]` mean colour of z0 = 2·img − 1.
    power: `[H, W, 3]` variance of Z0 − M at each frequency (orthonormal FFT), > 0.
    grid_multiple: image sides must be multiples of this (8 by default, the grids of the
      verification runs; the closed form itself takes any size).
  """

  schedule: schedule_lib.DDIMSchedule
  mean: jax.Array
  power: jax.Array
  latent_factor: int = flax.struct.field(pytree_node=False, default=1)
  latent_channels: int = flax.struct.field(pytree_node=False, default=3)
  grid_multiple: int = flax.struct.field(pytree_node=False, default=8)

  def passes_per_step(self, ctx: Any) -> int:
    """One closed-form evaluation per step; the context is ignored."""
    del ctx
    return 1

  def configure(self, dtype: Any, remat: bool) -> "AnalyticBackbone":
    """Unchanged: the closed form computes in float32 and has no decoder to rematerialise."""
    del dtype, remat
    return self

  def encode(self, img: jax.Array) -> jax.Array:
    """[B, H, W, 3] in [0, 1] -> z = 2·img − 1."""
    return 2.0 * img - 1.0

  def decode(self, z: jax.Array) -> jax.Array:
    """z [B, H, W, 3] -> (z + 1) / 2."""
    return (z + 1.0) / 2.0

  def _mean_spectrum(self, shape: tuple[int, ...]) -> jax.Array:
    """M(f, c): the constant colour `mean` in the orthonormal Fourier domain (only f = 0)."""
    h, w = shape[-3], shape[-2]
    dc = jnp.zeros((h, w, 1)).at[0, 0, 0].set(jnp.sqrt(h * w))
    return dc * self.mean

  def model_output(
    self, z: jax.Array, t: jax.Array, ctx: Any = None, cfg_scale: float = 1.0
  ) -> jax.Array:
    """E[ε | z_t] for the Gaussian prior (docs/method.md §10); z `[B, H, W, 3]`, ctx ignored."""
    del ctx, cfg_scale
    a = schedule_lib.alpha_at(self.schedule, t)
    zf = _fft(z) - jnp.sqrt(a) * self._mean_spectrum(z.shape)
    return _ifft(jnp.sqrt(1.0 - a) * zf / (a * self.power + 1.0 - a))


def estimate(y: jax.Array, sigma: float, floor: float = POWER_FLOOR) -> tuple[jax.Array, jax.Array]:
  """Mean colour `[3]` and power spectrum `[H, W, 3]` of z0 from a noisy image (docs/method.md §10).

  y: `[H, W, 3]` in [0, 1], the clean image plus N(0, σ²) noise. In z = 2·y − 1 the noise has
  σ_z = 2σ; P = max(|Y − M|² − σ_z², floor), so P(0) = floor (the mean is known).
  """
  z = 2.0 * y - 1.0
  mean = jnp.mean(z, axis=(0, 1))
  zf = _fft(z - mean)
  return mean, jnp.maximum(jnp.square(jnp.abs(zf)) - (2.0 * sigma) ** 2, floor)


def from_noisy(
  y: jax.Array, sigma: float, schedule: schedule_lib.DDIMSchedule | None = None
) -> AnalyticBackbone:
  """The Gaussian prior whose mean and spectrum are estimated from the noisy image y `[H, W, 3]`."""
  mean, power = estimate(y, sigma)
  sched = schedule_lib.sd_default() if schedule is None else schedule
  return AnalyticBackbone(schedule=sched, mean=mean, power=power)


def wiener(y: jax.Array, sigma: float) -> jax.Array:
  """The Wiener filter M + P/(P + σ_z²)·(Y − M) with P from `estimate` (docs/method.md §10), as an
  image `[H, W, 3]` (not clipped); the MMSE estimate under the prior of `from_noisy`."""
  mean, power = estimate(y, sigma)
  z = 2.0 * y - 1.0
  zf = _fft(z - mean)
  return (_ifft(power / (power + (2.0 * sigma) ** 2) * zf) + mean + 1.0) / 2.0
