"""The sampling driver (`upzeroir_jax.driver`): each image's output and info are bit-identical to
`restore.restore` of that image alone with the same key, whatever its slot, its neighbours, the
slot count and the chunk size; slots are refilled only after their image is finished.

Tiny random SD, 64×64 images, narrow PCDM. DQR's scorer is scripted per check from x̂0 itself:
a check whose x̂0 has an even "bit" (the 10⁴-th digit of its mean) scores a constant, any other
scores 10⁶·mean(x̂0) (never within τ of anything). A check settles when it and the check before
it are both even and t <= t_r, so each image settles at its own check (or runs to the restart
cap), and any rounding difference from the single-image run changes the outcome.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from upzeroir_jax import config as config_lib
from upzeroir_jax import driver
from upzeroir_jax import restore as restore_lib
from upzeroir_jax.models import analytic, sd, vgg
from upzeroir_jax.sampler import dqr
from upzeroir_jax.sampler import state as state_lib

COUNT = 5
SHAPE = (64, 64)


def scripted(img):
  m = img.mean(axis=(1, 2, 3))
  even = jnp.floor(m * 1e4) % 2 == 0
  return jnp.where(even, 0.5, 1e6 * m)


DQR = config_lib.RestoreConfig(steps=12, dqr_every=2, deg_loss="l1", pcdm_features=(8, 8, 8),
                               disc_features=(8, 8, 8))
FIXED = DQR.replace(dqr=False, steps=7)


@pytest.fixture(scope="module")
def models():
  key = jax.random.key(0)
  return restore_lib.Models(backbone=sd.tiny(key), vgg_params=vgg.init_random(key),
                            scorer=dqr.wrap(scripted))


@pytest.fixture(scope="module")
def items():
  rng = np.random.default_rng(0)
  ys = rng.uniform(size=(COUNT, *SHAPE, 3)).astype(np.float32)
  keys = [np.asarray(jax.random.PRNGKey(100 + i)) for i in range(COUNT)]
  return [driver.Item(y, k, state_lib.loss_weights(DQR, SHAPE[0] * SHAPE[1]))
          for y, k in zip(ys, keys)]


def _singles(models, items, config):
  return [restore_lib.restore(models, jnp.asarray(it.y), jnp.asarray(it.key), config)
          for it in items]


def _queue(models, items, config, **kwargs):
  chunks = []
  out = {r.index: r.result for r in driver.restore_queue(models, items, config,
                                                         on_chunk=chunks.append, **kwargs)}
  return [out[i] for i in range(len(items))], chunks


def _assert_same(got, want):
  np.testing.assert_array_equal(got.image, want.image)
  assert set(got.info) == set(want.info)
  for name in want.info:
    np.testing.assert_array_equal(got.info[name], want.info[name], err_msg=name)


@pytest.fixture(scope="module")
def dqr_singles(models, items):
  return _singles(models, items, DQR)


@pytest.mark.slow
def test_dqr_queue_equals_single_restores(models, items, dqr_singles):
  steps = [int(r.info["steps"]) for r in dqr_singles]
  assert len(set(steps)) >= 2, steps  # the script makes the images settle at different checks
  got, chunks = _queue(models, items, DQR, slots=3)
  for g, w in zip(got, dqr_singles):
    _assert_same(g, w)
  assert sum(chunks) == sum(steps)


@pytest.mark.slow
def test_fixed_schedule_queue_equals_single_restores_for_a_chunk_that_does_not_divide(
    models, items):
  """7 steps in chunks of 3: the last chunk takes one step; nothing is dropped or repeated.
  The programs are compiled ahead of time, as the pipeline does."""
  want = _singles(models, items[:3], FIXED)
  programs = driver.compile_programs(models, FIXED, SHAPE, slots=2, chunk_steps=3)
  got, chunks = _queue(models, items[:3], FIXED, slots=2, chunk_steps=3, programs=programs)
  for g, w in zip(got, want):
    _assert_same(g, w)
  assert sum(chunks) == 3 * FIXED.steps


@pytest.mark.slow
def test_gaussian_prior_queue_is_independent_of_slots_and_neighbours():
  """The exact Gaussian prior (docs/method.md §10), 16×16 images, 30 steps checked every 3:
  each image alone against its place in a queue on 1 and on 4 slots, its neighbours changing
  as images finish at their own checks."""
  rng = np.random.default_rng(1)
  ys = rng.uniform(0.2, 0.8, size=(6, 16, 16, 3)).astype(np.float32)
  config = config_lib.preset("denoise", steps=30, dqr_every=3, pcdm_features=(8, 8, 8),
                             disc_features=(8, 8, 8), guidance_ref_pixels=0)
  models = restore_lib.Models(backbone=analytic.from_noisy(jnp.asarray(ys[0]), 0.1),
                              vgg_params=vgg.init_random(jax.random.key(2)),
                              scorer=dqr.wrap(scripted))
  weights = state_lib.loss_weights(config, 16 * 16)
  items = [driver.Item(y, np.asarray(jax.random.PRNGKey(7 + i)), weights)
           for i, y in enumerate(ys)]
  want = _singles(models, items, config)
  steps = [int(r.info["steps"]) for r in want]
  assert len(set(steps)) >= 3, steps
  for slots in (1, 4):
    got, chunks = _queue(models, items, config, slots=slots)
    for g, w in zip(got, want):
      _assert_same(g, w)
    assert sum(chunks) == sum(steps)
