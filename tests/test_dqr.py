"""Dynamic quality refinement (docs/method.md §7): early stop at t <= t_r, re-initiated passes
(Eq. 17), cap, output choice, batching.

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


def toy_state(check_values, seed: int, per_call: bool = False) -> Toy:
  """Initial toy state; the check after steps K·(c+1) of the first pass scores
  check_values[c] (the n-th call writes check_values[n // K]), or with `per_call` the n-th call
  writes check_values[n]."""
  values = np.asarray(check_values, np.float32)
  index = np.arange(S) if per_call else np.arange(S) // K
  script = values[np.minimum(index, len(values) - 1)]
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
def runner(scorer=MEAN_SCORER, batched=False, config=CONFIG):
  """The jitted toy run for one (scorer, batched, config) combination (compiled once)."""

  def fn(s):
    return dqr.run(s, scorer, config, toy_step, TS, jnp.asarray(ALPHAS))

  return jax.jit(jax.vmap(fn) if batched else fn)


def full(value):
  return np.full((1, 4, 4, 3), value, np.float32)


# Pass 1 checks (after 5, 10, … 50 steps) see t = 900, 800 (stage 1: skipped), 700, 600, 500,
# 400, 300, 200, 100, 0. A pass re-initiated at t_r = 500 (TS[24]) runs 26 steps (t = 500 … 0)
# with checks after 5, 10, 15, 20, 25 steps (t = 420, 320, 220, 120, 20) and after its last
# step (t = 0).
#
# Settles above t_r: 700 records 0.6, 600 moves by 0 but is above t_r (continue), 500 moves by
# 0.005 < τ at t <= t_r: stop after 25 steps with that x̂0.
ABOVE_VALUES = [0.3, 0.3, 0.6, 0.6, 0.605, 0.1]
# Settles below t_r: 700 records 0.9; 600, 500, 400, 300 move by ≥ 0.3 (continue, no restart
# at 500); 200 moves by 0.002: stop after 40 steps. Best score: 0.9 at t = 700.
BELOW_VALUES = [0.1, 0.1, 0.9, 0.3, 0.6, 0.2, 0.7, 0.702, 0.1]
# Never settles: call n writes 0.1 + 0.004·n, so checks K apart differ by 0.02 > τ.
NEVER_CALLS = [0.1 + 0.004 * n for n in range(S)]


@pytest.fixture(scope="module")
def above_run():
  return runner()(toy_state(ABOVE_VALUES, 0))


@pytest.fixture(scope="module")
def below_run():
  return runner()(toy_state(BELOW_VALUES, 1))


@pytest.fixture(scope="module")
def never_run():
  return runner()(toy_state(NEVER_CALLS, 3, per_call=True))


def test_settling_above_t_r_continues_until_the_first_check_at_t_r(above_run):
  state, image, info = above_run
  assert int(info["stop_reason"]) == dqr.SETTLED
  assert int(info["steps"]) == 25 and int(state.i) == 25
  assert int(info["restarts"]) == 0 and int(info["passes"]) == 1 and int(info["stop_t"]) == 500
  np.testing.assert_array_equal(info["pass_t"], [980, -1, -1])
  assert int(info["checks"]) == 3
  np.testing.assert_allclose(info["scores"][:3], [0.6, 0.6, 0.605], rtol=1e-6)
  assert np.isnan(info["scores"][3:]).all() and info["scores"].shape == (30,)
  np.testing.assert_array_equal(info["score_t"], [700, 600, 500] + [-1] * 27)
  # Output "last": the x̂0 of the settled check.
  np.testing.assert_allclose(image, full(0.605), rtol=1e-6)
  np.testing.assert_allclose(info["best_score"], 0.605, rtol=1e-6)


def test_unet_counter_matches_calls_and_shows_skipped_steps(above_run):
  state, _, info = above_run
  # The toy step counts its own calls; the early stop ran 25 of the 50 steps.
  assert int(info["unet_evals"]) == int(state.evals) == 25 < N
  np.testing.assert_array_equal(state.i_in[:26], list(range(25)) + [-1])


def test_settling_below_t_r_stops_there_without_restarting(below_run):
  state, image, info = below_run
  assert int(info["stop_reason"]) == dqr.SETTLED and int(info["restarts"]) == 0
  assert int(info["steps"]) == 40 == int(state.evals) and int(info["stop_t"]) == 200
  np.testing.assert_array_equal(info["score_t"][:7], [700, 600, 500, 400, 300, 200, -1])
  np.testing.assert_array_equal(state.i_in[:41], list(range(40)) + [-1])
  np.testing.assert_allclose(image, full(0.702), rtol=1e-6)


def test_best_output_returns_the_best_scored_x0(below_run):
  _, image, info = runner(config=CONFIG.replace(dqr_output="best"))(toy_state(BELOW_VALUES, 1))
  assert int(info["steps"]) == 40
  np.testing.assert_allclose(image, full(0.9), rtol=1e-6)
  np.testing.assert_allclose(info["best_score"], 0.9, rtol=1e-6)
  np.testing.assert_allclose(below_run[2]["best_score"], 0.9, rtol=1e-6)


def test_unsettled_passes_are_reinitiated_from_t_r_until_the_cap(never_run):
  state, image, info = never_run
  assert int(info["stop_reason"]) == dqr.RESTART_CAP
  assert int(info["restarts"]) == 2 and int(info["passes"]) == 3
  assert int(info["steps"]) == 50 + 26 + 26 == int(state.evals)
  np.testing.assert_array_equal(info["pass_t"], [980, 500, 500])
  assert int(state.i) == N and int(info["stop_t"]) == 0 and int(info["checks"]) == 8 + 6 + 6
  second = [420, 320, 220, 120, 20, 0]
  np.testing.assert_array_equal(
    info["score_t"][:21], [700, 600, 500, 400, 300, 200, 100, 0] + second + second + [-1])
  # Each pass sweeps to the last index; the next call re-enters at index 24 (t = 500).
  np.testing.assert_array_equal(state.i_in[48:53], [48, 49, 24, 25, 26])
  np.testing.assert_array_equal(state.i_in[74:78], [48, 49, 24, 25])
  # Output "last": the final x̂0 of the last pass (call 102 writes NEVER_CALLS[101]).
  np.testing.assert_allclose(image, full(NEVER_CALLS[101]), rtol=1e-6)


def test_reinitiation_uses_eq17_on_the_final_z0_of_the_pass(never_run):
  state = never_run[0]
  s, step = toy_state(NEVER_CALLS, 3, per_call=True), jax.jit(toy_step)
  for _ in range(50):
    s = step(s)
  _, sub = jax.random.split(s.key)
  eps = np.asarray(jax.random.normal(sub, (1, 2, 2, 1)))
  a = float(ALPHAS[500])
  want = np.sqrt(a) * np.asarray(s.z0) + 0.5 * np.sqrt(1 - a) * eps
  np.testing.assert_allclose(state.z_in[50], want, rtol=1e-5, atol=1e-6)
  assert not np.allclose(state.z_in[50], s.z, atol=1e-3)


def test_without_reinitiation_one_pass_ends_at_the_last_timestep():
  cfg = CONFIG.replace(dqr_max_restarts=0)
  state, _, info = runner(config=cfg)(toy_state(NEVER_CALLS, 3, per_call=True))
  assert int(info["stop_reason"]) == dqr.END_OF_SCHEDULE
  assert int(info["steps"]) == 50 and int(info["passes"]) == 1 and int(state.i) == N
  np.testing.assert_array_equal(info["pass_t"], [980])


def test_nan_score_counts_as_no_score():
  # t = 700 records 0.4; NaN at 600 decides nothing and clears the history, so 500 (0.4 again)
  # only records; 400 (after 30 steps, t = TS[29]) settles.
  _, image, info = runner()(toy_state([0.1, 0.1, 0.4, np.nan, 0.4, 0.405, 0.9], 5))
  assert int(info["stop_reason"]) == dqr.SETTLED and int(info["steps"]) == 30
  np.testing.assert_array_equal(info["score_t"][:5], [700, 600, 500, 400, -1])
  np.testing.assert_allclose(info["scores"][:4], [0.4, np.nan, 0.4, 0.405], rtol=1e-6)
  np.testing.assert_allclose(image, full(0.405), rtol=1e-6)


def nan_score(img):
  return jnp.full(img.shape[:1], jnp.nan)


def test_nan_at_every_check_never_settles_and_returns_the_last_x0():
  for output in ("last", "best"):
    scorer = dqr.wrap(nan_score)
    state, image, info = runner(scorer=scorer, config=CONFIG.replace(dqr_output=output))(
      toy_state(ABOVE_VALUES, 6))
    assert int(info["stop_reason"]) == dqr.RESTART_CAP and int(info["passes"]) == 3
    assert int(info["steps"]) == 102 and np.isnan(float(info["best_score"]))
    np.testing.assert_allclose(image, full(0.1), rtol=1e-6)
    np.testing.assert_array_equal(image, state.x0)


def test_lower_is_better_scorer_and_unit():
  # Raw scores 0.5, 0.3, 0.3005 at t = 700, 600, 500 with unit 0.1 are qualities −5, −3,
  # −3.005: the check at 500 settles (Δ = 0.005 < τ); the best is the lowest raw score.
  scorer = dqr.wrap(mean_score, higher_is_better=False, unit=0.1)
  cfg = CONFIG.replace(dqr_output="best")
  _, image, info = runner(scorer=scorer, config=cfg)(
    toy_state([0.9, 0.9, 0.5, 0.3, 0.3005, 0.9], 4))
  assert int(info["stop_reason"]) == dqr.SETTLED and int(info["steps"]) == 25
  np.testing.assert_allclose(image, full(0.3), rtol=1e-6)
  np.testing.assert_allclose(info["best_score"], 0.3, rtol=1e-6)


def test_batch_matches_single_runs(above_run, below_run, never_run):
  states = (toy_state(ABOVE_VALUES, 0), toy_state(BELOW_VALUES, 1),
            toy_state(NEVER_CALLS, 3, per_call=True))
  batched = runner(batched=True)(jax.tree.map(lambda *a: jnp.stack(a), *states))
  for n, single in enumerate((above_run, below_run, never_run)):
    got = jax.tree.map(lambda x, n=n: x[n], batched)
    # Early stoppers are frozen: their latent, key, counters equal their own runs.
    for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(single)):
      if jnp.issubdtype(a.dtype, jax.dtypes.prng_key):
        a, b = jax.random.key_data(a), jax.random.key_data(b)
      np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)


def test_rejects_batched_state_and_non_callable_scorer():
  s = toy_state(ABOVE_VALUES, 0)
  s = s.replace(x0=jnp.zeros((2, 4, 4, 3)))
  with pytest.raises(dqr.DQRError, match="vmap"):
    dqr.run(s, mean_score, CONFIG, toy_step, TS, ALPHAS)
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
  """Scorer `p0·mean(img) + p1`: constant for p0 = 0, never settling for a large p0, NaN for a
  NaN p0."""
  return params[0] * img.mean(axis=(1, 2, 3)) + params[1]


@pytest.mark.slow
def test_restore_with_tiny_sd_stops_early_and_reinitiates():
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
  assert int(info["stop_reason"]) == dqr.SETTLED and int(info["passes"]) == 1
  assert int(info["steps"]) == int(info["unet_evals"]) == 6
  np.testing.assert_array_equal(info["t"][:7], [876, 751, 626, 501, 376, 251, -1])
  np.testing.assert_array_equal(info["score_t"][:3], [501, 251, -1])
  # Scores 10⁶·mean(x̂0) never settle, NaN scores never count: each pass runs to t = 1 and is
  # re-initiated at t = 501 (the grid timestep nearest t_r = 500); the third pass ends the run
  # (8 + 5 + 5 steps, same compiled function: the scorer's params are traced).
  for params in ([1e6, 0.0], [np.nan, 0.0]):
    scorer = models.scorer.replace(params=jnp.array(params))
    info = restore_lib.restore(models.replace(scorer=scorer), y, key, cfg).info
    assert int(info["stop_reason"]) == dqr.RESTART_CAP and int(info["passes"]) == 3
    assert int(info["steps"]) == 18
    np.testing.assert_array_equal(info["pass_t"], [876, 501, 501])
    np.testing.assert_array_equal(
      info["t"][:19], [876, 751, 626, 501, 376, 251, 126, 1] + [501, 376, 251, 126, 1] * 2 + [-1])
    np.testing.assert_array_equal(info["score_t"][:10], [501, 251, 1] + [376, 126, 1] * 2 + [-1])


def test_a_score_drifting_by_tau_per_k_steps_never_settles_at_a_short_block():
  """docs/method.md §7: a re-initiated pass has 26 steps, its last check comes 1 step after the
  previous one. A score drifting by 1.2τ per K steps moves 0.24τ in that step; compared with
  the check K + 1 steps back it moves 1.44τ, so no pass settles: the run ends at the cap."""
  drift = [0.1 + 1.2 * CONFIG.dqr_tau / K * n for n in range(S)]
  _, _, info = runner()(toy_state(drift, 7, per_call=True))
  assert int(info["stop_reason"]) == dqr.RESTART_CAP and int(info["steps"]) == 102


def test_reinitiation_starts_a_fresh_score_history():
  """The first check of pass 2 (t = 420, at most t_r) scores what the last check of pass 1
  scored; it only records, since Δ is taken within a pass. Pass 3 likewise. Every other pair of
  checks K or more steps apart differs by 0.02 > τ: the run ends at the cap."""
  script = [0.1 + 0.004 * n for n in range(50)]
  for _ in range(2):  # passes 2 and 3 (calls 50–75, 76–101): first check after their 5th call
    script += [script[-1] + 0.004 * (n - 4) for n in range(26)]
  _, _, info = runner()(toy_state(script, 8, per_call=True))
  np.testing.assert_allclose(info["scores"][8], info["scores"][7], rtol=1e-6)
  assert int(info["stop_reason"]) == dqr.RESTART_CAP and int(info["steps"]) == 102


def test_negative_tau_never_settles():
  cfg = CONFIG.replace(dqr_tau=-1.0, dqr_max_restarts=0)
  _, image, info = runner(config=cfg)(toy_state(ABOVE_VALUES, 0))
  assert int(info["stop_reason"]) == dqr.END_OF_SCHEDULE and int(info["steps"]) == N
  np.testing.assert_allclose(image, full(ABOVE_VALUES[-1]), rtol=1e-6)
