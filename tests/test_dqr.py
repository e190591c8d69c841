"""Dynamic quality refinement (METHOD.md §7): early stop, Eq. 17 restarts, cap, batching.

Most tests drive `dqr.run` with a toy sampler whose step writes a scripted value into x̂0; the
scorer is the image mean, so the score of every check is fixed in advance and each branch of
Eq. 16 is forced. Expected step counts, traces and latents are derived by hand below.
"""

import functools

import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from upzeroir_jax import config as config_lib
from upzeroir_jax import restore as restore_lib
from upzeroir_jax.metrics import niqe as niqe_lib
from upzeroir_jax.models import arniqa, sd, vgg
from upzeroir_jax.sampler import dqr, scorers

N = 50  # toy steps: timesteps 980, 960, ..., 0; t_r = 500 is TS[24].
TS = np.arange(980, -1, -20, dtype=np.int32)
K = 5  # checks after steps 5, 10, 15, ... see the x̂0 of t = TS[4] = 900, TS[9] = 800, ...
S = 200  # room for the toy's record of every step (at most 3 passes of 50)
ALPHAS = np.linspace(0.999, 0.01, 1000, dtype=np.float32)
# Stage 2 from t < 750: the checks at t = 900 and 800 are skipped, t = 700 is the first scored.
CONFIG = config_lib.RestoreConfig(
  dqr_every=K, dqr_tau=0.01, dqr_t_restart=500, dqr_max_restarts=2, dqr_gamma=0.5,
  stage2_t=750, stage3_t=100)


@flax.struct.dataclass
class Toy:
  """A sampler state with the fields DQR relies on, plus the toy's own records."""

  z: jax.Array  # [1, 2, 2, 1]
  i: jax.Array
  z0: jax.Array
  x0: jax.Array  # [1, 4, 4, 3]
  key: jax.Array
  evals: jax.Array  # the step's own call count
  z_in: jax.Array  # [S, 1, 2, 2, 1] latent each call received
  i_in: jax.Array  # [S] step index each call ran
  script: jax.Array  # [S] value the n-th call writes into x̂0


def toy_step(s: Toy) -> Toy:
  key, sub = jax.random.split(s.key)
  t = jnp.asarray(TS)[s.i].astype(jnp.float32)
  z0 = 0.5 * s.z + 0.1 * jax.random.normal(sub, s.z.shape) + t / 1000
  return s.replace(
    z=0.9 * s.z + 0.1 * z0, i=s.i + 1, z0=z0, key=key,
    x0=jnp.full_like(s.x0, s.script[s.evals]), evals=s.evals + 1,
    z_in=s.z_in.at[s.evals].set(s.z), i_in=s.i_in.at[s.evals].set(s.i))


def toy_state(check_values, seed: int) -> Toy:
  """Initial toy state; the check after steps K·(c+1) scores check_values[c]."""
  values = np.asarray(check_values, np.float32)
  script = values[np.minimum(np.arange(S) // K, len(values) - 1)]
  key = jax.random.key(seed)
  return Toy(
    z=jax.random.normal(key, (1, 2, 2, 1)), i=jnp.int32(0), z0=jnp.zeros((1, 2, 2, 1)),
    x0=jnp.zeros((1, 4, 4, 3)), key=jax.random.fold_in(key, 1), evals=jnp.int32(0),
    z_in=jnp.zeros((S, 1, 2, 2, 1)), i_in=jnp.full((S,), -1, jnp.int32),
    script=jnp.asarray(script))


def mean_score(img):
  return img.mean(axis=(1, 2, 3))


MEAN_SCORER = dqr.wrap(mean_score)


@functools.cache
def runner(scorer=MEAN_SCORER, batched=False):
  """The jitted toy run for one (scorer, batched) combination (compiled once)."""

  def fn(s):
    return dqr.run(toy_step, scorer, s, TS, jnp.asarray(ALPHAS), CONFIG)

  return jax.jit(jax.vmap(fn) if batched else fn)


# Checks at t = 900, 800 are skipped (stage 1), though their equal scores would settle;
# t = 700 records 0.9, t = 600 moves by 0.4 (above t_r: continue), t = 500 moves by 0.005 < τ:
# stop after 25 steps. The best score is the first one.
STOP_VALUES = [0.3, 0.3, 0.9, 0.5, 0.505, 0.8, 0.1]
# t = 700 records, 600 moves (continue), 500 (≤ t_r) moves by 0.3: restart at TS[24] = 500
# after 25 steps. The next check (30 steps, t = TS[28] = 420) only records (new trajectory);
# the one after (35 steps, t = TS[33] = 320) settles.
RESTART_VALUES = [0.1, 0.1, 0.9, 0.3, 0.6, 0.2, 0.205, 0.7]
# Every check moves by 0.8: it never settles.
NEVER_VALUES = [0.1, 0.9] * 20


@pytest.fixture(scope="module")
def stop_run():
  return runner()(toy_state(STOP_VALUES, 0))


@pytest.fixture(scope="module")
def restart_run():
  return runner()(toy_state(RESTART_VALUES, 1))


def test_stops_when_score_settles_after_stage_one_and_returns_best_x0(stop_run):
  state, image, info = stop_run
  assert int(info["stop_reason"]) == dqr.SETTLED
  assert int(info["steps"]) == 25 and int(state.i) == 25
  assert int(info["restarts"]) == 0 and int(info["stop_t"]) == 500
  assert int(info["checks"]) == 3
  np.testing.assert_allclose(info["scores"][:3], [0.9, 0.5, 0.505], rtol=1e-6)
  assert np.isnan(info["scores"][3:]).all() and info["scores"].shape == (30,)
  np.testing.assert_array_equal(info["score_t"], [700, 600, 500] + [-1] * 27)
  # Output: the best-scored x̂0 (first scored check), not the last one.
  np.testing.assert_allclose(image, np.full((1, 4, 4, 3), 0.9), rtol=1e-6)
  np.testing.assert_allclose(state.x0, np.full((1, 4, 4, 3), 0.505), rtol=1e-6)
  np.testing.assert_allclose(info["best_score"], 0.9, rtol=1e-6)


def test_unet_counter_matches_calls_and_shows_skipped_steps(stop_run):
  state, _, info = stop_run
  # The toy step counts its own calls; the early stop ran 25 of the 50 steps.
  assert int(info["unet_evals"]) == int(state.evals) == 25 < N
  np.testing.assert_array_equal(state.i_in[:26], list(range(25)) + [-1])


def test_restart_reenters_t_r_with_eq17_latent(restart_run):
  state, image, info = restart_run
  assert int(info["restarts"]) == 1 and int(info["stop_reason"]) == dqr.SETTLED
  assert int(info["steps"]) == 35 and int(state.i) == 34
  np.testing.assert_array_equal(info["score_t"][:6], [700, 600, 500, 420, 320, -1])
  np.testing.assert_allclose(image, np.full((1, 4, 4, 3), 0.9), rtol=1e-6)
  # The 26th call runs step index 24 (t = 500) again, from the Eq. 17 latent built from the ẑ0
  # and key after 25 plain steps.
  np.testing.assert_array_equal(state.i_in[23:27], [23, 24, 24, 25])
  s, step = toy_state(RESTART_VALUES, 1), jax.jit(toy_step)
  for _ in range(25):
    s = step(s)
  _, sub = jax.random.split(s.key)
  eps = np.asarray(jax.random.normal(sub, (1, 2, 2, 1)))
  a = float(ALPHAS[500])
  want = np.sqrt(a) * np.asarray(s.z0) + 0.5 * np.sqrt(1 - a) * eps
  np.testing.assert_allclose(state.z_in[25], want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(state.z_in[25], s.z, atol=1e-3)


def test_restart_cap_ends_a_run_that_never_settles():
  # Pass 1: restart after 25 steps (t = 500). Pass 2 (from TS[24]): records at t = 420,
  # restarts at 320 (35 steps). Pass 3: records at 420, then every check wants a restart that
  # the cap refuses; it runs to the last timestep: 35 + 26 = 61 steps, 3 + 2 + 6 checks.
  state, _, info = runner()(toy_state(NEVER_VALUES, 3))
  assert int(info["stop_reason"]) == dqr.RESTART_CAP
  assert int(info["restarts"]) == 2 and int(info["steps"]) == 61 == int(state.evals)
  assert int(state.i) == N and int(info["stop_t"]) == 0 and int(info["checks"]) == 11
  np.testing.assert_array_equal(
    info["score_t"][:12], [700, 600, 500, 420, 320, 420, 320, 220, 120, 20, 0, -1])


def test_nan_score_counts_as_no_score():
  # t = 700 records 0.4; NaN at 600 decides nothing and clears the history, so 500 (0.4 again)
  # only records; 400 (after 30 steps, t = TS[29]) settles.
  _, image, info = runner()(toy_state([0.1, 0.1, 0.4, np.nan, 0.4, 0.405, 0.9], 5))
  assert int(info["stop_reason"]) == dqr.SETTLED and int(info["steps"]) == 30
  np.testing.assert_array_equal(info["score_t"][:5], [700, 600, 500, 400, -1])
  np.testing.assert_allclose(info["scores"][:4], [0.4, np.nan, 0.4, 0.405], rtol=1e-6)
  np.testing.assert_allclose(image, np.full((1, 4, 4, 3), 0.405), rtol=1e-6)


def test_lower_is_better_scorer_and_unit():
  # Raw scores 0.5, 0.3, 0.3005 at t = 700, 600, 500 with unit 0.1 are qualities −5, −3,
  # −3.005: the check at 500 settles (Δ = 0.005 < τ); the best is the lowest raw score.
  scorer = dqr.wrap(mean_score, higher_is_better=False, unit=0.1)
  _, image, info = runner(scorer=scorer)(toy_state([0.9, 0.9, 0.5, 0.3, 0.3005, 0.9], 4))
  assert int(info["stop_reason"]) == dqr.SETTLED and int(info["steps"]) == 25
  np.testing.assert_allclose(image, np.full((1, 4, 4, 3), 0.3), rtol=1e-6)
  np.testing.assert_allclose(info["best_score"], 0.3, rtol=1e-6)


def test_batch_matches_single_runs(stop_run, restart_run):
  both = jax.tree.map(lambda a, b: jnp.stack([a, b]), toy_state(STOP_VALUES, 0),
                      toy_state(RESTART_VALUES, 1))
  batched = runner(batched=True)(both)
  for n, single in enumerate((stop_run, restart_run)):
    got = jax.tree.map(lambda x, n=n: x[n], batched)
    # The early stopper is frozen after 20 steps: its latent, key, counters equal its own run.
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(single)):
      if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        a, b = jax.random.key_data(a), jax.random.key_data(b)
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_rejects_batched_state_and_non_callable_scorer():
  s = toy_state(STOP_VALUES, 0)
  s = s.replace(x0=jnp.zeros((2, 4, 4, 3)))
  with pytest.raises(dqr.DQRError, match="vmap"):
    dqr.run(toy_step, mean_score, s, TS, ALPHAS, CONFIG)
  with pytest.raises(dqr.DQRError, match="callable"):
    dqr.wrap(0.5)


def test_restart_index_snaps_to_nearest_grid_timestep():
  ts = np.array([901, 701, 501, 301, 101, 1], np.int32)
  assert int(dqr.restart_index(ts, 500)) == 2
  assert int(dqr.restart_index(ts, 401)) == 2  # tie 501 / 301: the larger timestep
  assert int(dqr.restart_index(ts, 400)) == 3


def test_scorer_params_are_traced_not_baked_in():
  # A scorer's params are pytree leaves: new values reuse the compiled function.
  scorer = dqr.Scorer(apply=lambda p, img: p["w"] * img.mean(axis=(1, 2, 3)),
                      params={"w": jnp.float32(2.0)})
  img = jnp.full((2, 4, 4, 3), 0.25)
  call = jax.jit(lambda sc, x: sc(x))
  np.testing.assert_allclose(call(scorer, img), [0.5, 0.5])
  np.testing.assert_allclose(call(scorer.replace(params={"w": jnp.float32(-1.0)}), img),
                             [-0.25, -0.25])
  assert call._cache_size() == 1


def test_niqe_and_arniqa_scorer_orientation():
  # NIQE: lower is better, unit 10: NIQE 7 and 9 are qualities −0.7 and −0.9.
  niqe = scorers.niqe()
  assert niqe.apply.fn is niqe_lib.niqe
  np.testing.assert_allclose(niqe.quality(jnp.array([7.0, 9.0])), [-0.7, -0.9], rtol=1e-6)
  # ARNIQA: its [0, 1] score is the quality.
  model = object()
  a = scorers.arniqa(model)
  assert a.apply is arniqa.score and a.params is model
  np.testing.assert_allclose(a.quality(jnp.array([0.3, 0.8])), [0.3, 0.8], rtol=1e-6)


def affine_mean(params, img):
  """Scorer `p0·mean(img) + p1`: constant for p0 = 0, never settling for a large p0."""
  return params[0] * img.mean(axis=(1, 2, 3)) + params[1]


@pytest.mark.slow
def test_restore_with_tiny_sd_stops_early_and_restarts():
  # The real sampler step on a tiny random SD. 8 steps at t = 876, 751, 626, 501, 376, 251, 126,
  # 1; checks every 2 steps; stage 2 from t < 700, so the first check (t = 751) is skipped.
  key = jax.random.key(0)
  models = restore_lib.Models(backbone=sd.tiny(key), vgg_params=vgg.init_random(key),
                              scorer=dqr.Scorer(apply=affine_mean, params=jnp.array([0.0, 0.5])))
  cfg = config_lib.RestoreConfig(steps=8, dqr_every=2, deg_loss="l1", pcdm_features=(8, 8, 8),
                                 disc_features=(8, 8, 8))
  y = jnp.linspace(0.0, 1.0, 64 * 64 * 3).reshape(64, 64, 3)
  # Constant score: t = 501 records, t = 251 settles after 6 of the 8 steps. The sampler's own
  # trace shows no step after the stop.
  info = restore_lib.restore(models, y, key, cfg).info
  assert int(info["stop_reason"]) == dqr.SETTLED and int(info["restarts"]) == 0
  assert int(info["steps"]) == int(info["unet_evals"]) == 6
  np.testing.assert_array_equal(info["t"][:7], [876, 751, 626, 501, 376, 251, -1])
  np.testing.assert_array_equal(info["score_t"][:3], [501, 251, -1])
  # Scores 10⁶·mean(x̂0) never settle: restarts re-enter at t = 501 (the grid timestep nearest
  # t_r = 500) after the checks at 251 and 126; the third pass has no restart left and runs to
  # t = 1 (6 + 4 + 5 steps, same compiled function: the scorer's params are traced).
  scorer = models.scorer.replace(params=jnp.array([1e6, 0.0]))
  info = restore_lib.restore(models.replace(scorer=scorer), y, key, cfg).info
  assert int(info["stop_reason"]) == dqr.RESTART_CAP and int(info["restarts"]) == 2
  assert int(info["steps"]) == 15
  np.testing.assert_array_equal(
    info["t"][:16], [876, 751, 626, 501, 376, 251, 501, 376, 251, 126, 501, 376, 251, 126, 1, -1])
  np.testing.assert_array_equal(info["score_t"][:8], [501, 251, 376, 126, 376, 126, 1, -1])
