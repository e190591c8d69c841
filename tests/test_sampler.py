"""The guided sampler (docs/method.md §3–§6) with the tiny random Stable Diffusion on a real image.

Runs come from `tiny_runs` (kodim23 at 64×64, darkened, 50 steps): one batched call with the
low-light, dehaze and denoise presets, low light with strong guidance and without guidance.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tiny_runs

from upzeroir_jax import config
from upzeroir_jax.models import pcdm
from upzeroir_jax.sampler import state as state_lib
from upzeroir_jax.sampler import step as step_lib

LOWLIGHT, DEHAZE, DENOISE, STRONG, UNGUIDED = range(5)


@pytest.fixture(scope="module")
def batch(kodak_dir):
  return tiny_runs.batch_run(kodak_dir)


def _row(result, b):
  return jax.tree.map(lambda v: np.asarray(v[b]), (result.image, result.info))


@pytest.mark.slow
def test_pcdm_loss_falls_on_fixed_inputs(kodak_dir):
  """30 Adam steps of docs/method.md §4 Eq. 12 on a fixed (x̂0, y) pair, default PCDM widths."""
  models = tiny_runs.models()
  x, y = (jnp.asarray(a)[None] for a in tiny_runs.pair(kodak_dir))
  cfg = config.preset("lowlight", dqr=False)

  @functools.partial(jax.jit, static_argnums=0)
  def train(cfg, models, st, x):
    theta = pcdm.condition(x, st.obs.y_stats)

    def body(s, _):
      s, terms = step_lib.update_pcdm(s, models, cfg, x, theta, jnp.int32(800))
      return s, terms["pcdm_loss"]

    return jax.lax.scan(body, st, None, length=30)[1]

  losses = np.asarray(train(cfg, models, state_lib.init(models, cfg, y, jax.random.key(2)), x))
  assert np.all(np.isfinite(losses))
  assert losses[-5:].mean() < 0.5 * losses[:3].mean()


@pytest.mark.slow
def test_stage_trace_switches_at_700_and_100(batch):
  _, info = _row(batch, LOWLIGHT)
  t, stage = info["t"], info["stage"]
  assert np.all(np.diff(t) < 0) and t[0] > 700 and t[-1] < 100
  np.testing.assert_array_equal(stage, np.where(t >= 700, 1, np.where(t >= 100, 2, 3)))
  assert set(stage.tolist()) == {1, 2, 3}
  distance, quality = info["distance"], info["quality"]
  assert np.all(distance[t >= 700] == 0) and np.all(distance[t < 700] > 0)
  assert np.all(quality[t >= 100] == 0) and np.all(quality[t < 100] > 0)
  assert np.all(info["grad_norm"][t >= 700] == 0) and np.all(info["grad_norm"][t < 700] > 0)
  assert np.all(info["pcdm_loss"] > 0)


@pytest.mark.slow
def test_guidance_lowers_the_degradation_distance(batch):
  """D(PCDM(x̂0), y) over the last 5 steps: guided (s = 4000 as is) below unguided (s = 0)."""
  on = _row(batch, STRONG)[1]["distance"][-5:].mean()
  off = _row(batch, UNGUIDED)[1]["distance"][-5:].mean()
  assert on < off


@pytest.mark.slow
@pytest.mark.parametrize("b", [LOWLIGHT, DEHAZE, DENOISE, STRONG, UNGUIDED])
def test_fifty_steps_stay_finite_for_every_preset(batch, b):
  image, info = _row(batch, b)
  assert np.all(np.isfinite(image)) and image.min() >= 0.0 and image.max() <= 1.0
  assert image.std() > 0.01
  for name, values in info.items():
    assert np.all(np.isfinite(values)), name


def test_mixed_preset_has_the_low_light_weights():
  """docs/method.md §6: mixed degradations use the low-light row (so they share a compiled run)."""
  low, mixed = config.preset("lowlight"), config.preset("mixed")
  assert state_lib.loss_weights(low, 64) == state_lib.loss_weights(mixed, 64)
  assert state_lib.weightless(low) == state_lib.weightless(mixed)
