"""DDIM schedule parity with diffusers' PyTorch DDIMScheduler."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from upzeroir_jax.models import schedule

torch = pytest.importorskip("torch")
diffusers = pytest.importorskip("diffusers")

SD_CONFIG = {  # the scheduler_config.json SD 1.x / 2.x checkpoints ship (a PNDM config).
  "_class_name": "PNDMScheduler",
  "beta_end": 0.012,
  "beta_schedule": "scaled_linear",
  "beta_start": 0.00085,
  "clip_sample": False,
  "num_train_timesteps": 1000,
  "set_alpha_to_one": False,
  "skip_prk_steps": True,
  "steps_offset": 1,
  "trained_betas": None,
}
LDRPS = {"thresholding": True, "sample_max_value": 100.0, "dynamic_thresholding_ratio": 0.995}
TOL = 1e-6


def _torch_scheduler(cfg):
  return diffusers.DDIMScheduler.from_config(
    {k: v for k, v in cfg.items() if k not in ("_class_name", "skip_prk_steps")}
  )


@pytest.mark.parity
@pytest.mark.parametrize(
  "cfg",
  [
    SD_CONFIG,
    {"beta_schedule": "linear", "set_alpha_to_one": True},
    {"beta_schedule": "squaredcos_cap_v2", "num_train_timesteps": 500},
    {**SD_CONFIG, "rescale_betas_zero_snr": True, "timestep_spacing": "trailing"},
    {"trained_betas": list(np.linspace(1e-4, 0.03, 100))},
  ],
)
def test_alpha_table_matches_diffusers(cfg):
  ours = schedule.from_config(cfg)
  ref = _torch_scheduler(cfg)
  np.testing.assert_allclose(ours.alphas_cumprod, ref.alphas_cumprod.numpy(), rtol=0, atol=TOL)
  np.testing.assert_allclose(ours.final_alpha_cumprod, float(ref.final_alpha_cumprod), atol=TOL)
  assert ours.num_train_timesteps == len(ref.alphas_cumprod)


def test_sd_default_is_the_sd_checkpoint_schedule():
  ours, ref = schedule.sd_default(), schedule.from_config(SD_CONFIG)
  np.testing.assert_array_equal(ours.alphas_cumprod, ref.alphas_cumprod)
  assert ours.final_alpha_cumprod == ref.final_alpha_cumprod
  assert ours.steps_offset == 1 and not ours.clip_sample and ours.prediction_type == "epsilon"
  assert schedule.sd_default("v_prediction").prediction_type == "v_prediction"


@pytest.mark.parity
@pytest.mark.parametrize("spacing", ["leading", "trailing", "linspace"])
def test_timesteps_match_diffusers(spacing):
  cfg = {**SD_CONFIG, "timestep_spacing": spacing}
  ours = schedule.from_config(cfg)
  ref = _torch_scheduler(cfg)
  for n in (1, 3, 7, 50, 450, 999, 1000):
    ref.set_timesteps(n)
    np.testing.assert_array_equal(schedule.timesteps(ours, n), ref.timesteps.numpy())
    ts = schedule.timesteps(ours, n)
    assert schedule.prev_timestep(ours, int(ts[0]), n) == ts[0] - 1000 // n


@jax.jit
def _jit_step(s, out, t, prev_t, x, eta, noise):
  return schedule.step(s, out, t, prev_t, x, eta, noise=noise)


def _latents(seed, scale):
  rng = np.random.default_rng(seed)
  return (scale * rng.standard_normal((2, 8, 6, 4))).astype(np.float32)


@pytest.mark.parity
@pytest.mark.parametrize(
  "prediction, clipping",
  [
    ("epsilon", LDRPS),
    ("v_prediction", LDRPS),
    ("sample", {"clip_sample": True, "clip_sample_range": 1.5}),
    ("epsilon", {}),
    ("v_prediction", {"clip_sample": True, "clip_sample_range": 1.5}),
  ],
  ids=["eps-ldrps", "v-ldrps", "sample-clip", "eps-none", "v-clip"],
)
def test_step_matches_diffusers(prediction, clipping):
  cfg = {**SD_CONFIG, "prediction_type": prediction, **clipping}
  ours = schedule.from_config(cfg)
  ref = _torch_scheduler(cfg)
  n = 50
  ref.set_timesteps(n)
  x, out, noise = _latents(0, 3.0), _latents(1, 1.0), _latents(2, 1.0)
  for eta in (0.0, 0.7):  # eta > 0: diffusers is given the same noise tensor.
    for t in (981, 501, 21, 1):  # includes the last step, to t = -19 (final ᾱ).
      prev_t = schedule.prev_timestep(ours, t, n)
      got_prev, got_x0 = _jit_step(ours, out, jnp.int32(t), jnp.int32(prev_t), x, eta, noise)
      want = ref.step(
        torch.from_numpy(out.transpose(0, 3, 1, 2)),
        t,
        torch.from_numpy(x.transpose(0, 3, 1, 2)),
        eta=eta,
        variance_noise=torch.from_numpy(noise.transpose(0, 3, 1, 2)),
      )
      want_prev = want.prev_sample.numpy().transpose(0, 2, 3, 1)
      want_x0 = want.pred_original_sample.numpy().transpose(0, 2, 3, 1)
      np.testing.assert_allclose(got_x0, want_x0, rtol=TOL, atol=TOL)
      np.testing.assert_allclose(got_prev, want_prev, rtol=TOL, atol=TOL)


def test_step_noise_comes_from_the_key():
  s = schedule.sd_default()
  x, out = _latents(3, 1.0), _latents(4, 1.0)
  key = jax.random.key(7, impl="rbg")  # any key type; rbg compiles faster than threefry.
  noise = jax.random.normal(key, x.shape)
  with_key, _ = schedule.step(s, out, 501, 481, x, 0.5, key)
  with_noise, _ = schedule.step(s, out, 501, 481, x, 0.5, noise=noise)
  without, _ = schedule.step(s, out, 501, 481, x, 0.0)
  np.testing.assert_array_equal(with_key, with_noise)
  a_t, a_prev = float(s.alphas_cumprod[501]), float(s.alphas_cumprod[481])
  sigma = 0.5 * np.sqrt((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev))
  deterministic_part = np.asarray(without) - np.sqrt(1 - a_prev) * out
  deterministic_part += np.sqrt(1 - a_prev - sigma**2) * out
  np.testing.assert_allclose(with_key, deterministic_part + sigma * np.asarray(noise), atol=1e-5)


def test_thresholding_matches_numpy_quantile_and_clamps_to_unit_range():
  s = schedule.from_config({**SD_CONFIG, **LDRPS})
  x0 = _latents(5, 4.0)
  x0[1] *= 1e-3  # a quiet sample: its threshold is clamped up to 1 (plain clipping to ±1).
  r = np.clip(np.quantile(np.abs(x0.reshape(2, -1)), 0.995, axis=1), 1.0, 100.0)
  want = np.clip(x0, -r[:, None, None, None], r[:, None, None, None]) / r[:, None, None, None]
  got = schedule.threshold(s, jnp.asarray(x0))
  np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
  assert r[0] > 1.0 and r[1] == 1.0


@pytest.mark.parity
def test_divide_thresholding_matches_diffusers_threshold_sample():
  s = schedule.from_config({**SD_CONFIG, **LDRPS})
  x0 = _latents(5, 40.0)
  x0[1] *= 1e-3  # a quiet sample: its threshold is clamped up to 1.
  ref = _torch_scheduler({**SD_CONFIG, **LDRPS})
  want = ref._threshold_sample(torch.from_numpy(x0.transpose(0, 3, 1, 2))).numpy()
  got = schedule.threshold(s, jnp.asarray(x0))
  np.testing.assert_allclose(got, want.transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-7)


def test_clamp_thresholding_clips_without_dividing():
  """LD-RPS's scheduler: ẑ0 clipped to ±s per sample, s = clip(quantile_0.995(|ẑ0|), 1, 100)."""
  s = schedule.from_config({**SD_CONFIG, **LDRPS}).replace(threshold_divide=False)
  x0 = (20.0 * np.random.default_rng(6).standard_normal((2, 32, 32, 4))).astype(np.float32)
  x0[0, 0, 0, 0] = 1e4  # one outlier: clipped to s (about 56 here), not to 100.
  x0[1] *= 1e-3
  r = np.clip(np.quantile(np.abs(x0.reshape(2, -1)), 0.995, axis=1), 1.0, 100.0)
  want = np.clip(x0, -r[:, None, None, None], r[:, None, None, None])
  got = schedule.threshold(s, jnp.asarray(x0))
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)  # float32 quantile.
  assert 1.0 < r[0] < 100.0 and r[1] == 1.0
  assert np.abs(got[0]).max() == pytest.approx(r[0], rel=1e-5) and np.abs(x0[0]).max() > r[0]


@pytest.mark.parity
def test_add_noise_matches_diffusers_with_per_sample_timesteps():
  s = schedule.from_config(SD_CONFIG)
  ref = _torch_scheduler(SD_CONFIG)
  x0, noise = _latents(2, 1.0), _latents(3, 1.0)
  t = np.array([999, 17], np.int32)
  got = jax.jit(schedule.add_noise)(s, x0, noise, jnp.asarray(t))
  want = ref.add_noise(
    torch.from_numpy(x0.transpose(0, 3, 1, 2)),
    torch.from_numpy(noise.transpose(0, 3, 1, 2)),
    torch.from_numpy(t.astype(np.int64)),
  )
  np.testing.assert_allclose(got, want.numpy().transpose(0, 2, 3, 1), rtol=TOL, atol=TOL)


def test_predict_inverts_add_noise_for_each_prediction_type():
  x0, noise = _latents(6, 1.0), _latents(7, 1.0)
  t = jnp.array([900, 40])
  for prediction in ("epsilon", "v_prediction", "sample"):
    s = schedule.sd_default(prediction)
    xt = schedule.add_noise(s, x0, noise, t)
    a = np.asarray(schedule.alpha_at(s, t))[:, None, None, None]
    target = {  # what a perfect network outputs, by definition of each parametrisation.
      "epsilon": noise,
      "v_prediction": np.sqrt(a) * noise - np.sqrt(1 - a) * x0,
      "sample": x0,
    }[prediction]
    got_x0, got_eps = schedule.predict(s, xt, jnp.asarray(target, jnp.float32), t)
    np.testing.assert_allclose(got_x0, x0, atol=2e-4)
    np.testing.assert_allclose(got_eps, noise, atol=2e-4)


def test_alpha_at_uses_final_alpha_before_zero():
  s = schedule.from_config({**SD_CONFIG, "set_alpha_to_one": True})
  got = schedule.alpha_at(s, jnp.array([-5, 0, 999]))
  np.testing.assert_array_equal(got, [1.0, s.alphas_cumprod[0], s.alphas_cumprod[999]])


def test_bad_settings_raise_one_line_errors():
  s = schedule.sd_default()
  with pytest.raises(schedule.ScheduleError, match="needs noise"):
    schedule.step(s, jnp.zeros((1, 2, 2, 4)), 10, 0, jnp.zeros((1, 2, 2, 4)), eta=0.5)
  with pytest.raises(schedule.ScheduleError, match="num_steps"):
    schedule.timesteps(s, 1001)
  with pytest.raises(schedule.ScheduleError, match="timestep_spacing"):
    schedule.from_config({"timestep_spacing": "karras"})
  with pytest.raises(schedule.ScheduleError, match="beta_schedule"):
    schedule.from_config({"beta_schedule": "sigmoid"})
  assert issubclass(schedule.ScheduleError, ValueError)
