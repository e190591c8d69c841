"""Both backbones carry what `restore` and the pipeline need: grid, passes per step, precision."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from upzeroir_jax import config, restore
from upzeroir_jax.models import analytic, sd


@pytest.fixture(scope="module")
def tiny():
  """The tiny SD's VAE only (no text encoder to run for the empty-prompt context)."""
  return sd.from_config(sd.TINY, jax.random.key(0), parts=("vae",))


def test_sd_backbone_protocol(tiny):
  assert tiny.latent_factor == 8 and tiny.grid_multiple == 64
  ctx = np.zeros((1, 77, 32), np.float32)  # a prompt's conditioning
  assert tiny.passes_per_step(None) == 1 and tiny.passes_per_step(ctx) == 2
  fast = tiny.configure(jnp.bfloat16, True)
  assert fast.dtype == jnp.bfloat16 and fast.remat_decode is True
  assert fast.vae_params is tiny.vae_params  # settings only; the weights are shared
  assert tiny.dtype == jnp.float32 and tiny.remat_decode is False


def test_analytic_backbone_protocol():
  y = np.random.default_rng(0).random((16, 16, 3)).astype(np.float32)
  backbone = analytic.from_noisy(y, 0.1)
  assert backbone.grid_multiple == 8 and backbone.passes_per_step("ignored") == 1
  assert backbone.configure(jnp.bfloat16, True) is backbone


def test_restore_checks_the_grid_of_the_backbone():
  y = np.full((24, 24, 3), 0.5, np.float32)
  coarse = analytic.from_noisy(y, 0.1).replace(grid_multiple=16)
  models = restore.Models(backbone=coarse, vgg_params=None)
  cfg = config.preset("denoise", steps=2, dqr=False)
  with pytest.raises(restore.InputError, match="multiples of 16"):
    restore.restore(models, y, jax.random.key(0), cfg)
