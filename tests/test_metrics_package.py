"""The package namespace of `upzeroir_jax.metrics`: public names and the ARNIQA wrapper."""

import jax.numpy as jnp
import numpy as np

from upzeroir_jax import metrics
from upzeroir_jax.models import arniqa


def test_arniqa_score_delegates_to_the_model_and_unbatches(monkeypatch):
  calls = []

  def fake_score(model, img):
    calls.append((model, img.shape))
    return jnp.mean(img, axis=(1, 2, 3)) + 1.0

  monkeypatch.setattr(arniqa, "score", fake_score)
  img = np.random.default_rng(0).uniform(0, 1, (5, 6, 3)).astype(np.float32)
  single = metrics.arniqa_score("model", img)
  assert single.shape == () and calls == [("model", (1, 5, 6, 3))]
  np.testing.assert_allclose(single, img.mean() + 1.0, rtol=1e-6)
  batch = metrics.arniqa_score("model", np.stack([img, 1 - img]))
  np.testing.assert_allclose(batch, [img.mean() + 1.0, 2.0 - img.mean()], rtol=1e-6)


def test_multi_function_metrics_keep_their_modules():
  # `niqe` and `lpips` stay modules (loaders beside the metric); psnr and ssim are functions.
  assert callable(metrics.niqe.niqe) and callable(metrics.lpips.load)
  assert metrics.psnr.__module__ == "upzeroir_jax.metrics.psnr"
  assert metrics.ssim.__module__ == "upzeroir_jax.metrics.ssim"
