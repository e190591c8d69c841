"""Loss terms of docs/method.md §4–§6 against hand computations, scipy and PyTorch."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import integrate, optimize, special

from upzeroir_jax import losses
from upzeroir_jax.models import vgg


def _quadrant_image() -> np.ndarray:
  """64×64 RGB image whose four 32×32 quadrants are constant colours."""
  colours = np.array([[0.1, 0.2, 0.3], [0.9, 0.8, 0.7], [0.5, 0.5, 0.5], [0.0, 0.3, 0.9]])
  img = np.zeros((1, 64, 64, 3), np.float32)
  for k, (r, c) in enumerate(itertools.product((0, 32), (0, 32))):
    img[0, r:r + 32, c:c + 32] = colours[k]
  return img


def test_exposure_and_color_match_hand_computation():
  img = _quadrant_image()
  # Quadrant RGB means 0.2, 0.8, 0.5, 0.4 -> squared distances to 0.5: .09, .09, 0, .01.
  assert float(losses.exposure(jnp.asarray(img), 32, 0.5)) == pytest.approx(0.19 / 4, rel=1e-5)
  # Channel means over the image: r = 0.375, g = 0.45, b = 0.6.
  drg, drb, dgb = (0.375 - 0.45) ** 2, (0.375 - 0.6) ** 2, (0.45 - 0.6) ** 2
  expected_col = np.sqrt(drg**2 + drb**2 + dgb**2)
  assert float(losses.color(jnp.asarray(img))) == pytest.approx(expected_col, rel=1e-4)
  q = losses.quality(jnp.asarray(img), 1e-2, 1e-3, 32, 0.5)
  assert float(q) == pytest.approx(1e-2 * 0.19 / 4 + 1e-3 * expected_col, rel=1e-4)


@pytest.mark.parity
def test_exposure_matches_torch_avg_pool_on_uneven_sizes():
  torch = pytest.importorskip("torch")
  img = np.random.default_rng(0).random((2, 70, 45, 3), np.float32)
  x = torch.from_numpy(img).permute(0, 3, 1, 2).mean(1, keepdim=True)
  ref = ((torch.nn.functional.avg_pool2d(x, 16) - 0.6) ** 2).mean().item()
  assert float(losses.exposure(jnp.asarray(img), 16, 0.6)) == pytest.approx(ref, rel=1e-5)


@pytest.mark.parity
def test_exposure_with_a_traced_patch_matches_torch_avg_pool():
  """The per-image patch (docs/method.md §6: 32 or 64 by task) as a traced value under vmap."""
  torch = pytest.importorskip("torch")
  img = np.random.default_rng(2).random((1, 70, 45, 3), np.float32)
  patches = np.array([16, 32, 64, 100], np.int32)
  got = jax.jit(jax.vmap(lambda p: losses.exposure(jnp.asarray(img), p, 0.6)))(patches)
  x = torch.from_numpy(img).permute(0, 3, 1, 2).mean(1, keepdim=True)
  for p, g in zip(patches, np.asarray(got)):
    pool = torch.nn.functional.avg_pool2d(x, (min(p, 70), min(p, 45)))
    assert float(g) == pytest.approx(((pool - 0.6) ** 2).mean().item(), rel=1e-5), p


def test_color_gradient_is_finite_on_grey_image():
  grey = jnp.full((1, 8, 8, 3), 0.4)
  g = jax.grad(lambda x: losses.quality(x, 1.0, 1.0, 4, 0.5))(grey)
  assert bool(jnp.all(jnp.isfinite(g)))
  assert float(losses.color(grey)) == 0.0


@pytest.mark.parity
def test_bce_with_logits_matches_torch_bce_after_sigmoid():
  torch = pytest.importorskip("torch")
  logits = np.random.default_rng(1).normal(0, 3, (2, 4, 4, 1)).astype(np.float32)
  p = torch.sigmoid(torch.from_numpy(logits))
  for real in (True, False):
    ref = torch.nn.functional.binary_cross_entropy(p, torch.full_like(p, float(real))).item()
    assert float(losses.bce_with_logits(jnp.asarray(logits), real)) == pytest.approx(ref, rel=1e-5)


def test_damp_is_identity_below_threshold_and_scaled_above():
  x = jnp.asarray([3.0, 10.0, 12.0, 50.0])
  np.testing.assert_allclose(losses.damp(x, 10.0, 0.2), [3.0, 10.0, 2.4, 10.0], rtol=1e-6)


def test_mse_and_l1_match_numpy():
  rng = np.random.default_rng(2)
  a, b = rng.random((2, 5, 6, 3)), rng.random((2, 5, 6, 3))
  assert float(losses.mse(a, b)) == pytest.approx(np.mean((a - b) ** 2), rel=1e-5)
  assert float(losses.l1(a, b)) == pytest.approx(np.mean(np.abs(a - b)), rel=1e-5)


def test_perceptual_is_feature_mse_of_both_images():
  params = vgg.init_random(jax.random.key(0))
  rng = np.random.default_rng(3)
  a = jnp.asarray(rng.random((1, 16, 16, 3), np.float32))
  b = jnp.asarray(rng.random((1, 16, 16, 3), np.float32))
  fa = np.asarray(vgg.perceptual_features(params, a))
  fb = np.asarray(vgg.perceptual_features(params, b))
  ref = np.mean((fa - fb) ** 2)
  assert float(losses.perceptual(params, a, b)) == pytest.approx(ref, rel=1e-4)
  assert float(losses.perceptual_to(params, a, jnp.asarray(fb))) == pytest.approx(ref, rel=1e-4)
  assert float(losses.perceptual(params, a, a)) == 0.0


def _scipy_fit(x: np.ndarray) -> tuple[float, float]:
  """docs/method.md §2 moment matching, solved with brentq in float64."""
  m1, m2 = np.mean(np.abs(x)), np.mean(x**2)

  def log_rho(b):
    return 2 * special.gammaln(2 / b) - special.gammaln(1 / b) - special.gammaln(3 / b)

  beta = optimize.brentq(lambda b: log_rho(b) - np.log(m1**2 / m2), 0.1, 10.0, xtol=1e-12)
  return np.sqrt(m2 * special.gamma(1 / beta) / special.gamma(3 / beta)), beta


def _scipy_kl(a1, b1, a2, b2) -> float:
  """KL by numerical integration of the GGD densities (Eq. 3)."""

  def logp(x, a, b):
    return np.log(b / (2 * a)) - special.gammaln(1 / b) - (x / a) ** b

  def integrand(x):
    return np.exp(logp(x, a1, b1)) * (logp(x, a1, b1) - logp(x, a2, b2))

  edges = [0.0, a1, 4 * a1, 16 * a1, np.inf]
  return 2 * sum(integrate.quad(integrand, lo, hi, limit=200)[0]
                 for lo, hi in itertools.pairwise(edges))


def test_deg_loss_matches_scipy_fit_and_integrated_kl():
  rng = np.random.default_rng(4)
  z_hat = np.stack([rng.laplace(0, 0.7, (12, 12)), rng.normal(0, 1.3, (12, 12)),
                    rng.laplace(0.1, 0.3, (12, 12)), rng.normal(0.2, 0.5, (12, 12))], -1)[None]
  z_y = np.stack([rng.normal(0, 1.0, (12, 12)), rng.laplace(0, 0.4, (12, 12)),
                  rng.normal(0, 2.0, (12, 12)), rng.standard_t(3, (12, 12))], -1)[None]
  fits_y = [_scipy_fit(z_y[0, :, :, c]) for c in range(4)]
  ref = np.mean([_scipy_kl(*_scipy_fit(z_hat[0, :, :, c]), *fits_y[c]) for c in range(4)])
  a_y = jnp.asarray([[f[0] for f in fits_y]], jnp.float32)
  b_y = jnp.asarray([[f[1] for f in fits_y]], jnp.float32)
  got = float(losses.deg_loss(jnp.asarray(z_hat, jnp.float32), a_y, b_y))
  assert got == pytest.approx(ref, rel=2e-3)
  assert float(losses.deg_loss(jnp.asarray(z_y, jnp.float32), a_y, b_y)) < 1e-4
