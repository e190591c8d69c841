"""The divergence guard (docs/method.md §3) and one output definition for the fixed pass and DQR
(docs/method.md §7).

`step.guard` is checked on hand-made states against the rule written out here; then `restore`
runs on the exact Gaussian prior (models.analytic, 32², 10 steps) with a batch of two images,
one at s = 400 (the s = 6400 of 128² for 16× fewer pixels) and one at s = 1e30, whose first
guided pull sends the state to non-finite values: in the fixed pass and in DQR with τ < 0 and no re-initiation, the sane
image's output and trace are the same in both paths and the exploding one fails alone, with
the same record. (At s = 6400 as given this 32² image diverges too: ‖∇‖ 0.011, then 339 and
929 (both recovered), then 2.3 and inf.)
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from upzeroir_jax import config, restore
from upzeroir_jax.models import analytic, vgg
from upzeroir_jax.sampler import dqr
from upzeroir_jax.sampler import state as state_lib
from upzeroir_jax.sampler import step as step_lib


@flax.struct.dataclass
class _Guarded:
  """The fields `step.guard` reads and writes."""

  z: jax.Array
  z0: jax.Array
  x0: jax.Array
  pcdm: jax.Array
  disc: jax.Array
  disc2: jax.Array
  g_min: jax.Array
  recoveries: jax.Array
  failure: jax.Array
  failure_t: jax.Array


def _before(recoveries=0, failure=0):
  return _Guarded(z=jnp.full((1, 2, 2, 3), 0.3), z0=jnp.full((1, 2, 2, 3), -0.5),
                  x0=jnp.full((1, 4, 4, 3), 0.25), pcdm=jnp.ones(3), disc=jnp.ones(2),
                  disc2=jnp.ones(2), g_min=jnp.float32(2.0), recoveries=jnp.int32(recoveries),
                  failure=jnp.int32(failure), failure_t=jnp.int32(-1))


def _after(value=0.7):
  return _Guarded(z=jnp.full((1, 2, 2, 3), value), z0=jnp.full((1, 2, 2, 3), 0.1),
                  x0=jnp.full((1, 4, 4, 3), 0.6), pcdm=jnp.zeros(3), disc=jnp.zeros(2),
                  disc2=jnp.zeros(2), g_min=jnp.float32(1.5), recoveries=jnp.int32(0),
                  failure=jnp.int32(0), failure_t=jnp.int32(-1))


CFG = config.RestoreConfig(guard_ratio=1000.0, guard_recoveries=2)
A_PREV, KEY, T = 0.64, jax.random.key(3), jnp.int32(341)


def _guard(before, after, g_norm):
  return step_lib.guard(before, after, CFG, jnp.float32(g_norm), T, jnp.float32(A_PREV), KEY)


def test_a_fine_step_passes_unchanged():
  after = _after()
  st, code = _guard(_before(), after, 1999.0)  # 999.5 × g_min: below the ratio
  assert int(code) == 0
  for a, b in zip(jax.tree.leaves(st), jax.tree.leaves(after)):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("after,g_norm,failure", [
  (_after(np.nan), 1.0, 1),  # a non-finite latent
  (_after().replace(pcdm=jnp.array([0.0, np.inf, 0.0])), 1.0, 1),  # a non-finite network
  (_after(), 2001.0, 2),  # ‖∇‖ above 1000 × the smallest earlier one
])
def test_a_diverged_step_is_recovered_then_fails_the_image(after, g_norm, failure):
  before = _before()
  st, code = _guard(before, after, g_norm)
  assert int(code) == 1 and int(st.recoveries) == 1 and int(st.failure) == 0
  # Re-initiated from the last finite ẑ0 at the next timestep (Eq. 17, γ = 1); the networks,
  # ẑ0, x̂0 and the smallest norm are those before the step.
  eps = np.asarray(jax.random.normal(KEY, (1, 2, 2, 3)))
  np.testing.assert_allclose(st.z, np.sqrt(A_PREV) * -0.5 + np.sqrt(1 - A_PREV) * eps,
                             rtol=1e-6)
  for name in ("z0", "x0", "pcdm", "disc", "disc2", "g_min"):
    np.testing.assert_array_equal(getattr(st, name), getattr(before, name), err_msg=name)
  # After guard_recoveries recoveries the next diverged step fails the image and freezes it.
  st, code = _guard(_before(recoveries=2), after, g_norm)
  assert int(code) == 2 and int(st.failure) == failure and int(st.failure_t) == 341
  np.testing.assert_array_equal(st.z, _before().z)
  frozen, code = _guard(st, _after(), 1.0)
  assert int(code) == 2
  for a, b in zip(jax.tree.leaves(frozen), jax.tree.leaves(st)):
    np.testing.assert_array_equal(a, b)


SIDE, STEPS, SIGMA = 32, 10, 50 / 255
BASE = config.preset("denoise", steps=STEPS, guidance_ref_pixels=0,
                     pcdm_features=(8, 8, 8), disc_features=(8, 8, 8), threshold="off",
                     dqr_tau=-1.0, dqr_max_restarts=0, dqr_every=3)
SCALES = (400.0, 1e30)


@functools.cache
def _runs():
  """The fixed pass on a batch of the two images (vmap) and DQR with τ < 0 and no
  re-initiation on each image alone, with the same keys (DQR's row b = its b-th call)."""
  rng = np.random.default_rng(0)
  yy, xx = np.meshgrid(np.linspace(0, 1, SIDE), np.linspace(0, 1, SIDE), indexing="ij")
  x = np.stack([yy, xx, (yy + xx) / 2], -1)
  y = np.clip(x + SIGMA * rng.standard_normal(x.shape), 0, 1).astype(np.float32)
  models = restore.Models(backbone=analytic.from_noisy(jnp.asarray(y), SIGMA),
                          vgg_params=vgg.init_random(jax.random.key(1)),
                          scorer=dqr.wrap(lambda img: img.mean(axis=(1, 2, 3))))
  keys = jax.random.split(jax.random.key(4), 2)
  cfgs = [BASE.replace(guidance_scale=s) for s in SCALES]
  fixed = restore.restore(models, jnp.broadcast_to(jnp.asarray(y), (2,) + y.shape), keys,
                          [c.replace(dqr=False) for c in cfgs])
  single = [restore.restore(models, jnp.asarray(y), k, c) for k, c in zip(keys, cfgs)]
  refined = jax.tree.map(lambda *v: np.stack(v), *single)
  return jax.tree.map(np.asarray, fixed), refined


@pytest.mark.slow
def test_dqr_without_settling_equals_the_fixed_pass():
  """The sane image: the same output (x̂0 of the last step) and trace in both paths, no guard
  activity. To float tolerance, not exactly: the fixed pass here is batched (vmap), whose
  convolutions and reductions round differently from the single DQR run (2e-7 measured)."""
  fixed, refined = _runs()
  assert int(refined.info["stop_reason"][0]) == dqr.END_OF_SCHEDULE
  assert int(refined.info["steps"][0]) == STEPS
  np.testing.assert_allclose(refined.image[0], fixed.image[0], atol=1e-5)
  for name in (*state_lib.TRACE_KEYS, "failure", "failure_t", "recoveries"):
    np.testing.assert_allclose(refined.info[name][0], fixed.info[name][0], rtol=1e-4,
                               atol=1e-6, err_msg=name)
  assert not fixed.info["guard"][0].any() and int(fixed.info["failure"][0]) == 0


@pytest.mark.slow
def test_an_exploding_image_fails_alone_in_both_paths():
  """s = 1e30: stage 1 (t ≥ 700) is unguided and fine; from the first guided step on, steps
  are recovered twice and the third diverged one fails the image, whose later steps are
  frozen. DQR stops it at its next check ("diverged"); both return its last finite x̂0."""
  fixed, refined = _runs()
  for run in (fixed, refined):
    assert int(run.info["failure"][1]) != 0 and int(run.info["recoveries"][1]) == 2
    assert np.isfinite(run.image[1]).all()
  assert int(refined.info["stop_reason"][1]) == dqr.DIVERGED
  for name in ("failure", "failure_t"):
    assert int(refined.info[name][1]) == int(fixed.info[name][1]), name
  np.testing.assert_allclose(refined.image[1], fixed.image[1], atol=1e-5)
  # t = 901, 801, 701: stage 1, unguided. Each accepted guided step (601, 401, 201) has a
  # finite gradient but its pull s·∇ sends z to ±inf, so the step after it is non-finite:
  # 501 and 301 are recovered (re-noised from the finite ẑ0 before), 101 fails, 1 is frozen.
  np.testing.assert_array_equal(fixed.info["guard"][1], [0, 0, 0, 0, 1, 0, 1, 0, 2, 2])
  assert int(fixed.info["failure_t"][1]) == 101 and np.isnan(fixed.info["grad_norm"][1][4])
