"""`restore`: batches as vmap, one compilation per shape and static config, determinism, checks.

The runs come from `tiny_runs.short_runs` (tiny random SD, kodim23 at 64×64, 10 steps).
"""

import jax
import numpy as np
import pytest
import tiny_runs

from upzeroir_jax import config, restore


@pytest.fixture(scope="module")
def short(kodak_dir):
  return tiny_runs.short_runs(kodak_dir)


@pytest.mark.slow
def test_compiles_once_per_shape_and_static_config(short):
  first, other_image_and_key, other_task = short["compiles"]
  assert first >= 1
  assert other_image_and_key == 0
  assert other_task == 0  # "mixed": another preset, same static config and shape


@pytest.mark.slow
def test_same_key_gives_identical_output(short):
  """The "mixed" call has the low-light weights, the same image and key: bit-identical."""
  np.testing.assert_array_equal(short["a"].image, short["a_mixed"].image)
  for name in short["a"].info:
    np.testing.assert_array_equal(short["a"].info[name], short["a_mixed"].info[name])


@pytest.mark.slow
def test_batch_equals_single_calls_with_the_same_keys(short):
  batch = short["batch"]
  assert batch.image.shape == (2, 64, 64, 3)
  for b, name in enumerate(("a", "b")):
    single = short[name]
    np.testing.assert_allclose(batch.image[b], single.image, atol=1e-4)
    for key in ("pcdm_loss", "distance", "grad_norm"):
      np.testing.assert_allclose(batch.info[key][b], single.info[key], rtol=1e-2, atol=1e-7)
  assert float(np.max(np.abs(batch.image[0] - batch.image[1]))) > 0.05


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
  with pytest.raises(ValueError, match="differ only in loss weights"):
    restore.restore(models, y, jax.random.key(0), [cfg, cfg.replace(steps=7)])
  with pytest.raises(ValueError, match="scorer"):
    restore.restore(models, y, jax.random.key(0), config.preset("denoise"))
  with pytest.raises(ValueError, match="PRNG key"):
    restore.restore(models, y, 0, cfg)
  with pytest.raises(ValueError, match="RestoreConfig"):
    restore.restore(models, y, jax.random.key(0), {"steps": 3})
