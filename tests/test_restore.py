"""`restore`: batches as vmap, one compilation per shape and static config, determinism, checks.

The runs come from `tiny_runs` (tiny random SD, kodim23 at 64×64 darkened, 50 steps).
"""

import jax
import numpy as np
import pytest
import tiny_runs

from upzeroir_jax import config, restore


@pytest.fixture(scope="module")
def singles(kodak_dir):
  return tiny_runs.single_runs(kodak_dir)


@pytest.mark.slow
def test_compiles_once_per_shape_and_static_config(singles):
  _, (first, mixed, denoise) = singles
  assert first >= 1
  assert mixed == 0  # another preset name, same static config and shape
  assert denoise == 0  # other loss weights: traced values


@pytest.mark.slow
def test_same_key_gives_identical_output(singles):
  """The "mixed" call has the low-light weights, the same image and key: bit-identical."""
  (low, mixed, _), _ = singles
  np.testing.assert_array_equal(low.image, mixed.image)
  for name in low.info:
    np.testing.assert_array_equal(low.info[name], mixed.info[name])


@pytest.mark.slow
def test_batch_equals_single_calls_with_the_same_keys(kodak_dir, singles):
  """Batch members 0 (low light) and 2 (denoise) against single calls with the same key.

  Batched and single calls round differently (batched matmuls and convolutions), and 50 steps
  of PCDM/discriminator training and guidance amplify that: measured 1e-5 after 10 steps and
  2e-4 after 50 (max abs pixel difference). The losses of the first 10 steps are held to 1e-3
  (relative), the 50-step image to 1e-3; a separate 10-step run would cost two more
  compilations.
  """
  (low, _, denoise), _ = singles
  batch = tiny_runs.batch_run(kodak_dir)
  for b, single in ((0, low), (2, denoise)):
    np.testing.assert_allclose(batch.image[b], single.image, atol=1e-3)
    for key in ("pcdm_loss", "disc_loss"):
      np.testing.assert_allclose(batch.info[key][b, :10], single.info[key][:10], rtol=1e-3)
  assert float(np.max(np.abs(batch.image[0] - batch.image[2]))) > 1e-2


@pytest.fixture(scope="module")
def models():
  return tiny_runs.models()


@pytest.mark.parametrize("y,match", [
  (np.zeros((64, 64)), "shape"),
  (np.zeros((64, 64, 4), np.float32), "shape"),
  (np.zeros((64, 64, 3), np.uint8), "float"),
  (np.full((64, 64, 3), 1.5, np.float32), "range"),
  (np.zeros((60, 64, 3), np.float32), "multiples of 64"),
  ([[0.0]], "array"),
])
def test_bad_input_raises_one_line_value_error(models, y, match):
  with pytest.raises(ValueError, match=match) as err:
    restore.restore(models, y, jax.random.key(0), config.preset("denoise", dqr=False))
  assert "\n" not in str(err.value)


def test_bad_keys_configs_and_missing_scorer_are_reported(models):
  y = np.zeros((2, 64, 64, 3), np.float32)
  cfg = config.preset("denoise", dqr=False)
  with pytest.raises(ValueError, match="3 keys for 2"):
    restore.restore(models, y, jax.random.split(jax.random.key(0), 3), cfg)
  with pytest.raises(ValueError, match="3 configs for 2"):
    restore.restore(models, y, jax.random.key(0), [cfg] * 3)
  with pytest.raises(ValueError, match="differ only in their per-task settings"):
    restore.restore(models, y, jax.random.key(0), [cfg, cfg.replace(steps=7)])
  with pytest.raises(ValueError, match="scorer"):
    restore.restore(models, y, jax.random.key(0), config.preset("denoise"))
  with pytest.raises(ValueError, match="PRNG key"):
    restore.restore(models, y, 0, cfg)
  with pytest.raises(ValueError, match="RestoreConfig"):
    restore.restore(models, y, jax.random.key(0), {"steps": 3})
