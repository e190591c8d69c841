"""RestoreConfig: defaults from docs/method.md, presets from Supp. Tab. 6, validation."""

import jax
import pytest

from upzeroir_jax import config


def test_defaults_follow_method():
  cfg = config.RestoreConfig()
  assert (cfg.steps, cfg.guidance_scale, cfg.guidance_ref_pixels) == (450, 4000.0, 512 * 512)
  assert (cfg.stage2_t, cfg.stage3_t, cfg.cfg_scale) == (700, 100, 8.0)
  assert (cfg.pcdm_lr, cfg.disc_lr) == (5e-4, 1e-3)
  assert (cfg.dqr, cfg.dqr_every, cfg.dqr_tau, cfg.dqr_t_restart) == (True, 10, 0.01, 500)
  assert (cfg.dqr_max_restarts, cfg.dqr_gamma, cfg.dqr_output) == (2, 1.0, "last")
  assert (cfg.threshold, cfg.threshold_ratio, cfg.threshold_max) == ("clamp", 0.995, 100.0)
  assert (cfg.pcdm_variant, cfg.deg_loss, cfg.dtype) == ("pcdm", "kl", "float32")


@pytest.mark.parametrize("task,pcdm,guid", [
  ("lowlight", (0.02, 0.3, 0.8), (1e-5, 1.0, 2e-3, 5e-5, 1e-2, 1e-2)),
  ("dehaze", (0.2, 0.5, 0.2), (1e-3, 1.0, 5e-3, 5e-5, 1e-2, 1e-3)),
  ("denoise", (3.0, 0.002, 0.001), (1e-3, 1.0, 5e-4, 5e-5, 1e-5, 1e-5)),
  ("mixed", (0.02, 0.3, 0.8), (1e-5, 1.0, 2e-3, 5e-5, 1e-2, 1e-2)),
])
def test_preset_rows_match_supplementary_table(task, pcdm, guid):
  cfg = config.preset(task)
  assert cfg.task == task
  assert (cfg.pcdm_w_mse, cfg.pcdm_w_per, cfg.pcdm_w_adv) == pcdm
  assert (cfg.lambda_deg, cfg.lambda_mse, cfg.lambda_per, cfg.lambda_adv,
          cfg.w_exp, cfg.w_col) == guid


@pytest.mark.parametrize("task,lrs,patch,stage3", [
  ("lowlight", (1e-3, 4e-5), 32, 100),
  ("dehaze", (2e-5, 2e-5), 64, 150),
  ("denoise", (1e-4, 1e-3), 64, 100),
  ("mixed", (1e-3, 4e-5), 32, 100),
])
def test_preset_ldrps_task_settings(task, lrs, patch, stage3):
  """docs/method.md §4, §6 [LD-RPS]: discriminator lrs, exposure patch, stage-3 boundary;
  thresholding on (clamp) for every task."""
  cfg = config.preset(task)
  assert (cfg.disc_lr, cfg.adv_disc_lr) == lrs
  assert (cfg.exp_patch, cfg.stage3_t, cfg.stage2_t) == (patch, stage3, 700)
  assert cfg.threshold == "clamp" and cfg.pcdm_lr == 5e-4


def test_config_is_hashable_and_usable_as_static_jit_argument():
  cfg = config.preset("denoise", steps=7)
  assert hash(cfg) == hash(config.preset("denoise", steps=7))
  f = jax.jit(lambda x, c: x * c.steps, static_argnums=1)
  assert float(f(2.0, cfg)) == 14.0


@pytest.mark.parametrize("field,value", [
  ("steps", 0), ("steps", 2.5), ("guidance_scale", -1.0), ("stage3_t", 800),
  ("pcdm_variant", "unet"), ("deg_loss", "l2"), ("dtype", "float16"), ("pcdm_lr", 0.0),
  ("dqr", 1), ("task", "deblur"), ("eta", 2.0), ("exp_target", 1.5),
  ("pcdm_features", [64, 128]), ("disc_features", (64, 0)), ("threshold", "on"),
  ("threshold_ratio", 0.0), ("threshold_max", 0.5), ("dqr_output", "first"), ("adv_disc_lr", 0),
])
def test_invalid_value_names_the_field(field, value):
  with pytest.raises(ValueError, match=field):
    config.RestoreConfig(**{field: value})


def test_unknown_preset_and_unknown_override_raise_value_error():
  with pytest.raises(ValueError, match="deblur"):
    config.preset("deblur")
  with pytest.raises(ValueError, match="no_such_field"):
    config.preset("denoise", no_such_field=1)
