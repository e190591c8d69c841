"""The sampler on an exact Gaussian prior (docs/method.md §10): posterior sampling on real images.

`models.analytic` gives the exact MMSE noise predictor of a stationary Gaussian image model
whose spectrum is estimated from the noisy image itself; its MMSE estimate is the Wiener
filter. A correct posterior sampler should land a single sample well above the noisy input and
the mean of several samples close to the Wiener filter.

Setting: Kodak centre crops 128×128, σ = 50/255, the `denoise` preset's losses (docs/method.md
§4–§6)
with random VGG16 weights for the perceptual terms, PCDM / discriminator widths (16, 32, 64),
30 DDIM steps, s applied as given (`guidance_ref_pixels=0`).

Guidance-scale sweep (batch of 8 keys per crop; averages over kodim05, kodim23, kodim01,
kodim19; PSNR in dB of noisy input / single sample / mean of 8 / Wiener = 14.78 / … / … / 20.07):

  steps  widths         s       single  mean of 8
  100    64-128-256     400     14.60   17.15
  100    64-128-256     800     16.38   18.87
  100    64-128-256     1600    17.82   19.52
  100    64-128-256     3200    17.16   17.85
  100    16-32-64       1600    17.62   19.63
  50     16-32-64       3200    17.56   19.62
  30     16-32-64       3200    16.81   19.16
  30     16-32-64       6400    17.60   19.50
  30     16-32-64       12800   16.62   18.07
  20     16-32-64       6400    17.17   19.36

Too small an s leaves prior samples (below the noisy input); too large an s collapses onto the
noisy input. The PCDM width barely matters here. The test uses 30 steps with s = 6400 on one
crop, kodim05 (the harder of the two the docs/method.md §10 prototype used), to fit the CPU budget:
one batch of 8 at 128² costs ~2.5 min of this suite's time (compilation included). On CPU this setting gave kodim05
15.25 / 17.12 / 18.78 / 19.63 dB and kodim23 14.68 / 18.18 / 20.23 / 21.02 dB.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from upzeroir_jax import config, restore
from upzeroir_jax.models import analytic, schedule, vgg

SIGMA = 50.0 / 255.0
CROPS = ("kodim05",)
SAMPLES = 8


def _psnr(a, b) -> float:
  return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


def test_eps_is_the_posterior_mean_of_the_noise():
  """Monte Carlo on the prior itself: ε̂ is unbiased and orthogonal to its own error."""
  rng = np.random.default_rng(0)
  h = w = 16
  freq = np.sqrt(np.fft.fftfreq(h)[:, None] ** 2 + np.fft.fftfreq(w)[None] ** 2)
  power = np.repeat((0.05 / (freq + 0.05) ** 2)[..., None], 3, -1).astype(np.float32)
  power[0, 0] = analytic.POWER_FLOOR  # the samples below have exactly the mean colour
  mean = np.asarray([0.1, -0.2, 0.3], np.float32)
  bb = analytic.AnalyticBackbone(schedule=schedule.sd_default(), mean=jnp.asarray(mean),
                                 power=jnp.asarray(power))
  n = 4000
  white = rng.standard_normal((n, h, w, 3)) + 1j * rng.standard_normal((n, h, w, 3))
  # A real field with E|Z(f)|² = P(f): real part of an orthonormal inverse FFT, doubled variance.
  z0 = np.real(np.fft.ifft2(np.sqrt(2 * power) * white / np.sqrt(2), axes=(1, 2), norm="ortho"))
  z0 = z0 - z0.mean(axis=(1, 2), keepdims=True) + mean
  eps = rng.standard_normal(z0.shape)
  t = 500
  a = float(schedule.sd_default().alphas_cumprod[t])
  zt = np.sqrt(a) * z0 + np.sqrt(1 - a) * eps
  eps_hat = np.asarray(bb.model_output(jnp.asarray(zt, jnp.float32), jnp.int32(t)))
  err = eps - eps_hat
  assert abs(np.mean(err * eps_hat)) < 0.01 * np.mean(eps_hat**2)
  # The optimum scale c of c·ε̂ is 1 (an MMSE estimate is orthogonal to its error).
  c = np.sum(eps * eps_hat) / np.sum(eps_hat**2)
  assert c == pytest.approx(1.0, abs=0.02)
  assert np.mean(err**2) < np.mean(eps**2)


@pytest.fixture(scope="module")
def results(kodak_dir):
  """Per crop: PSNR of noisy input, mean single sample, mean of 8 samples, Wiener filter."""
  vgg_params = vgg.init_random(jax.random.key(1))
  cfg = config.preset("denoise", steps=30, dqr=False, guidance_scale=6400.0,
                      guidance_ref_pixels=0, pcdm_features=(16, 32, 64),
                      disc_features=(16, 32, 64))
  rows = []
  for i, name in enumerate(CROPS):
    img = np.asarray(Image.open(kodak_dir / f"{name}.png").convert("RGB"), np.float32) / 255.0
    r, c = img.shape[0] // 2 - 64, img.shape[1] // 2 - 64
    x = img[r:r + 128, c:c + 128]
    noise = np.random.default_rng(100 + i).standard_normal(x.shape)
    y = np.clip(x + SIGMA * noise, 0.0, 1.0).astype(np.float32)
    models = restore.Models(backbone=analytic.from_noisy(jnp.asarray(y), SIGMA),
                            vgg_params=vgg_params)
    batch = jnp.broadcast_to(jnp.asarray(y), (SAMPLES,) + y.shape)
    keys = jax.random.split(jax.random.key(7), SAMPLES)
    out = np.asarray(restore.restore(models, batch, keys, cfg).image)
    wiener = np.clip(np.asarray(analytic.wiener(jnp.asarray(y), SIGMA)), 0.0, 1.0)
    rows.append((_psnr(y, x), np.mean([_psnr(o, x) for o in out]), _psnr(out.mean(0), x),
                 _psnr(wiener, x)))
  rows = np.asarray(rows)
  print("noisy / single / mean of 8 / Wiener PSNR per crop:", np.round(rows, 2).tolist())
  return rows


@pytest.mark.slow
def test_single_sample_beats_the_noisy_input(results):
  noisy, single = results[:, 0], results[:, 1]
  assert np.mean(single - noisy) >= 1.5


@pytest.mark.slow
def test_mean_of_samples_approaches_the_wiener_filter(results):
  mean8, wiener = results[:, 2], results[:, 3]
  assert np.mean(wiener - mean8) <= 1.5
  assert np.all(mean8 > results[:, 1])
