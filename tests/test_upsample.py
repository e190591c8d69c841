"""`--grid=upsample`: the guided transform of `io.upsample` against a closed form and against a
direct reading of He et al.'s equations (per-window covariances, scipy's interpolation), the
grid round trip, and the settings it refuses."""

import itertools
import json

import numpy as np
import pytest
from scipy import ndimage

from upzeroir_jax import config, io, pipeline
from upzeroir_jax.errors import RunError
from upzeroir_jax.io import upsample
from upzeroir_jax.jobs import Job

# A colour matrix and offset that keep [0, 1] inside [0, 1] (no clipping): q = I·M + c.
MIX = np.array([[0.5, 0.1, 0.0], [0.05, 0.6, 0.1], [0.0, 0.2, 0.7]])
OFFSET = np.array([0.05, 0.02, 0.1])


def _smooth_image(h, w, seed):
  """A photo-like float image: smooth colour fields plus a sharp edge and fine texture."""
  rng = np.random.default_rng(seed)
  yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
  base = np.stack([np.sin(3 * xx + c) * np.cos(2 * yy - c) for c in range(3)], -1)
  edge = (xx > 0.4)[..., None] * np.array([0.3, -0.2, 0.1])
  return np.clip(0.5 + 0.3 * base + edge + 0.05 * rng.standard_normal((h, w, 3)), 0, 1
                 ).astype(np.float32)


def _reference_coefficients(guide, target, radius, eps):
  """He et al.'s colour guided filter, window by window: for each window ω_k (cut at the
  borders) the 3×3 covariance, a_k = (Σ_k + ε'U)⁻¹ cov(I, p), b_k = p̄_k − a_kᵀ Ī_k; then each
  pixel's mean over the windows that hold it."""
  h, w, _ = guide.shape
  reg = eps * guide.mean() ** 2 + 1e-12
  a = np.zeros((h, w, 3, 3))
  b = np.zeros((h, w, 3))
  for y, x in itertools.product(range(h), range(w)):
    win = (slice(max(y - radius, 0), y + radius + 1), slice(max(x - radius, 0), x + radius + 1))
    gi = guide[win].reshape(-1, 3).astype(np.float64)
    pi = target[win].reshape(-1, 3).astype(np.float64)
    cov = np.cov(np.concatenate([gi, pi], 1).T, bias=True)
    a[y, x] = np.linalg.solve(cov[:3, :3] + reg * np.eye(3), cov[:3, 3:])
    b[y, x] = pi.mean(0) - a[y, x].T @ gi.mean(0)
  # The mean over windows: scipy's uniform filter over zero-padded values, divided by the count.
  size = 2 * radius + 1
  count = ndimage.uniform_filter(np.ones((h, w)), size, mode="constant")

  def mean(v):
    return np.stack([ndimage.uniform_filter(v[..., i], size, mode="constant") / count
                     for i in range(v.shape[-1])], -1)

  return mean(a.reshape(h, w, 9)).reshape(h, w, 3, 3), mean(b)


def _reference_apply(full, a, b):
  """Coefficients interpolated bilinearly with scipy at pixel-centre-aligned coordinates."""
  height, width = full.shape[:2]
  h, w = b.shape[:2]
  ys = (np.arange(height) + 0.5) * h / height - 0.5
  xs = (np.arange(width) + 0.5) * w / width - 0.5
  coords = np.meshgrid(ys, xs, indexing="ij")
  coef = np.concatenate([a.reshape(h, w, 9), b], -1)
  up = np.stack([ndimage.map_coordinates(coef[..., i], coords, order=1, mode="nearest")
                 for i in range(12)], -1)
  q = np.einsum("...ij,...i->...j", up[..., :9].reshape(height, width, 3, 3), full) + up[..., 9:]
  return np.clip(q, 0, 1)


@pytest.mark.parametrize("grid,full,radius,eps", [
    ((9, 11), (20, 31), 1, 1e-3),
    ((8, 13), (27, 50), 2, 0.5),
    ((12, 7), (12, 7), 0, 1e-2),
    ((10, 10), (7, 23), 3, 0.05),
])
def test_matches_he_et_al_window_by_window(grid, full, radius, eps):
  """Odd sizes, other aspect ratios, a full image smaller than the grid on one side."""
  small = _smooth_image(*grid, seed=1)
  target = np.clip(small ** 1.7 + 0.1 * np.roll(small, 1, axis=-1), 0, 1)
  a, b = upsample.coefficients(small, target, radius, eps)
  ra, rb = _reference_coefficients(small, target, radius, eps)
  np.testing.assert_allclose(a, ra, atol=1e-6)
  np.testing.assert_allclose(b, rb, atol=1e-6)
  big = _smooth_image(*full, seed=2)
  np.testing.assert_allclose(upsample.apply(big, a, b), _reference_apply(big, ra, rb),
                             atol=2e-5)


@pytest.mark.parametrize("shape", [(300, 451), (513, 128), (65, 64)])
def test_global_colour_map_is_carried_exactly(shape):
  """A restoration that is a global affine colour map of the grid input comes back as the same
  map applied to the full-resolution input (ε = 0: the local fit is exact)."""
  full = _smooth_image(*shape, seed=3)
  grid, meta = io.to_model_grid(full, 64, "upsample", 64)
  out = upsample.carry(meta.full, grid, grid @ MIX + OFFSET, eps=0.0)
  np.testing.assert_allclose(out, full @ MIX + OFFSET, atol=1e-5)


def test_grid_round_trip_uses_the_transform():
  full = _smooth_image(301, 177, seed=4)
  grid, meta = io.to_model_grid(full, 64, "upsample", 64)
  np.testing.assert_array_equal(grid, io.to_model_grid(full, 64, "resize", 64)[0])
  assert (meta.height, meta.width, meta.mode) == (301, 177, "upsample")
  restored = np.clip(grid * 1.8, 0, 1)
  out = io.from_model_grid(restored, meta)
  np.testing.assert_array_equal(out, upsample.carry(full, grid, restored))
  # Already at the grid's size: the restoration itself.
  _, same_meta = io.to_model_grid(full[:64, :64], 64, "upsample", 64)
  np.testing.assert_array_equal(io.from_model_grid(restored, same_meta), restored)
  with pytest.raises(ValueError, match="does not match the grid input"):
    io.from_model_grid(restored[:32], meta)


def test_settings_and_refusals():
  settings = pipeline.Settings(grid="upsample", size=128)
  pipeline.check_settings(settings, 64)
  with pytest.raises(RunError, match="--size=100 must be a positive multiple of 64"):
    pipeline.check_settings(pipeline.Settings(grid="upsample", size=100), 64)
  key = pipeline.resume_key(config.preset("lowlight"), settings, "tiny", "none")
  assert (key["grid"], key["size"]) == ("upsample", 128)
  pipeline.check_task(settings, "lowlight")
  pipeline.check_task(settings, "dehaze")
  for task in ("denoise", "mixed"):
    with pytest.raises(RunError, match=f"does not apply to --task={task}; use --grid=resize"):
      pipeline.check_task(settings, task)
    pipeline.check_task(pipeline.Settings(grid="resize"), task)
  job = Job(name="a.png", source="in/a.png", output="out/a.png")
  denoise = config.preset("denoise")
  assert "noise found" in pipeline.noise_refusal(job, denoise, settings)
  clean = Job(name="a.png", source="in/a.png", output="out/a.png",
              extra={"auto": {"detected": "clean", "noise": False}})
  assert pipeline.noise_refusal(clean, denoise, settings) is None
  noisy = Job(name="a.png", source="in/a.png", output="out/a.png",
              extra={"auto": {"detected": "lowlight+noise", "noise": True}})
  assert "noise found" in pipeline.noise_refusal(noisy, config.preset("mixed"), settings)
  assert pipeline.noise_refusal(noisy, denoise, pipeline.Settings(grid="pad")) is None


def test_oracle_binary_on_a_kodak_crop(tmp_path, kodak_dir):
  """eval.upsample_oracle on one Kodak24 crop: the transform beats bicubic on low light
  and loses to it with noise (docs/method.md §11)."""
  from eval import upsample_oracle
  crop = io.read_image(kodak_dir / "kodim23.png")[:150, :230]
  io.write_image(tmp_path / "in" / "a.png", crop)
  out = tmp_path / "oracle.json"
  assert upsample_oracle.main([upsample_oracle.PROG, f"--dataset_dir={tmp_path / 'in'}",
                               f"--out={out}", "--size=64", "--spec=lowlight:light",
                               "--spec=lowlight:light+noise:light"]) == 0
  specs = json.loads(out.read_text())["specs"]
  low, noisy = specs["lowlight:light"]["mean"], specs["lowlight:light+noise:light"]["mean"]
  key = f"r={upsample.RADIUS},eps={upsample.EPS:g}"
  clean = io.read_image(tmp_path / "in" / "a.png")
  oracle, meta = io.to_model_grid(clean, 64, "resize", 64)
  mse = np.mean((io.from_model_grid(oracle, meta) - clean) ** 2, dtype=np.float64)
  assert low["bicubic"] == noisy["bicubic"] == pytest.approx(-10 * np.log10(mse), abs=1e-3)
  assert low[key] > low["bicubic"] + 3
  assert noisy[key] < noisy["bicubic"]


def test_oracle_per_channel_filter_matches_he_et_al_grey_guide():
  """The per-channel comparison of eval.upsample_oracle: He et al.'s grey-guide filter on each
  channel, window means by SciPy (cut at the borders), ε' = ε·mean(I)²."""
  from eval import upsample_oracle
  guide = _smooth_image(11, 9, seed=5)
  target = np.clip(guide ** 0.6 - 0.1 * guide[..., ::-1], 0, 1)
  radius, eps = 2, 0.05
  size = 2 * radius + 1
  count = ndimage.uniform_filter(np.ones(guide.shape[:2]), size, mode="constant")

  def mean(v):
    return ndimage.uniform_filter(v.astype(np.float64), size, mode="constant") / count

  reg = eps * guide.mean() ** 2 + 1e-12
  diag, b = upsample_oracle.per_channel_coefficients(guide, target, radius, eps)
  for c in range(3):
    i, p = guide[..., c], target[..., c]
    a_c = (mean(i * p) - mean(i) * mean(p)) / (mean(i * i) - mean(i) ** 2 + reg)
    np.testing.assert_allclose(diag[..., c, c], mean(a_c), atol=1e-6)
    np.testing.assert_allclose(b[..., c], mean(mean(p) - a_c * mean(i)), atol=1e-6)
  assert np.all(diag[..., 0, 1] == 0)


def test_a_noisy_auto_image_fails_alone(tmp_path):
  """With --task=auto, an image found noisy is refused by name; a clean one is grouped."""
  for name in ("clean", "noisy"):
    io.write_image(tmp_path / f"{name}.png", np.zeros((20, 30, 3)))
  jobs = [Job(name=f"{n}.png", source=tmp_path / f"{n}.png", output=tmp_path / "o" / f"{n}.png",
              extra={"auto": {"detected": n, "noise": n == "noisy"}}) for n in ("clean", "noisy")]
  summary = pipeline.Summary()
  groups = pipeline._groups(jobs, lambda job: config.preset("denoise"),
                            pipeline.Settings(grid="upsample", size=64), 64, summary)
  assert [j.name for g in groups.values() for j in g] == ["clean.png"]
  [(name, message)] = summary.failed
  assert name == "noisy.png" and message.endswith("restore it with --grid=resize or --grid=pad")
