"""The sampler state's initialisation (docs/method.md §3–§5) on the exact Gaussian prior, whose
encoder is the closed form z = 2·y − 1."""

import functools

import jax
import jax.numpy as jnp
import numpy as np

from upzeroir_jax import config
from upzeroir_jax.models import analytic, pcdm, vgg
from upzeroir_jax.physics import ggd
from upzeroir_jax.sampler import models as models_lib
from upzeroir_jax.sampler import state

H, W = 32, 48


@functools.cache
def _setup():
  y = jnp.asarray(np.random.default_rng(0).random((1, H, W, 3)), jnp.float32)
  models = models_lib.Models(backbone=analytic.from_noisy(y[0], 0.1),
                             vgg_params=vgg.init_random(jax.random.key(1)))
  return models, y, jax.jit(state.init, static_argnums=1)


def test_init_takes_the_task_settings_from_the_config_with_s_scaled_to_the_grid():
  models, y, init = _setup()
  cfg = config.preset("dehaze")
  w = init(models, cfg, y, jax.random.key(0)).weights
  # s_eff = s·N/N_ref, N = H·W of the model grid (docs/method.md §3).
  np.testing.assert_allclose(w.guidance_scale, cfg.guidance_scale * H * W / 512**2, rtol=1e-6)
  np.testing.assert_allclose([w.lambda_deg, w.w_col, w.disc_lr, w.adv_disc_lr],
                             [cfg.lambda_deg, cfg.w_col, cfg.disc_lr, cfg.adv_disc_lr], rtol=1e-6)
  assert (int(w.exp_patch), int(w.stage3_t)) == (cfg.exp_patch, cfg.stage3_t) == (64, 150)


def test_given_weights_are_used_as_they_are_and_change_nothing_else():
  models, y, init = _setup()
  cfg = config.preset("dehaze")
  default = init(models, cfg, y, jax.random.key(0))
  given = init(models, cfg, y, jax.random.key(0),
               weights=default.weights.replace(guidance_scale=jnp.float32(7.0)))
  assert float(given.weights.guidance_scale) == 7.0
  for a, b in zip(jax.tree.leaves(default.replace(weights=None, key=None)),
                  jax.tree.leaves(given.replace(weights=None, key=None))):
    np.testing.assert_array_equal(a, b)


def test_observation_holds_y_and_what_is_computed_from_it():
  models, y, init = _setup()
  st = init(models, config.preset("lowlight"), y, jax.random.key(0))
  obs = st.obs
  np.testing.assert_array_equal(obs.y, y)
  np.testing.assert_allclose(obs.zy, 2.0 * y - 1.0, atol=1e-6)
  alpha, beta = ggd.fit(2.0 * y - 1.0, axis=(1, 2))  # the latent's fit, per channel
  np.testing.assert_allclose(obs.zy_alpha, alpha, rtol=1e-5)
  np.testing.assert_allclose(obs.zy_beta, beta, rtol=1e-5)
  np.testing.assert_allclose(obs.y_stats, pcdm.image_stats(y), rtol=1e-5)
  np.testing.assert_allclose(obs.y_feats, vgg.perceptual_features(models.vgg_params, y),
                             rtol=1e-4, atol=1e-5)
  # z_T ~ N(0, I) on the latent grid, nothing decoded yet.
  assert st.z.shape == obs.zy.shape and abs(float(st.z.std()) - 1.0) < 0.05
  assert int(st.i) == int(st.n) == 0 and not np.any(np.asarray(st.x0))
