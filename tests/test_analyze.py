"""eval.analyze_degradations: histograms and latent GGD numbers against independent sums."""

import csv
import math
import sys

import numpy as np
import pytest
from absl import flags
from PIL import Image
from scipy import optimize, special, stats
from skimage import color

from eval import analyze_degradations as ad
from upzeroir_jax import io

SHAPE = (24, 32, 3)
CROP = 16


def _pool_encoder(img):
  """A stand-in encoder: 4×4 mean pooling, centred, [B, h, w, 3] -> [B, h/4, w/4, 3]."""
  b, h, w, c = img.shape
  return img.reshape(b, h // 4, 4, w // 4, 4, c).mean(axis=(2, 4)) - 0.5


def _hand(x, cond):
  """The deterministic conditions written out: skimage HSV route, Eq. 19–20 per pixel."""
  if cond.kind == "clean":
    return x.astype(np.float64)
  if cond.kind == "lowlight":
    hsv = color.rgb2hsv(x.astype(np.float64))
    hsv[..., 2] *= {"light": 0.3, "heavy": 0.1}[cond.level]
    return np.clip(color.hsv2rgb(hsv), 0, 1)
  beta = {"light": 0.05, "heavy": 0.12}[cond.level]
  rows, cols = x.shape[:2]
  i, j = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
  d = -0.04 * np.hypot(i - rows / 2, j - cols / 2) + math.sqrt(max(rows, cols))
  t = np.exp(-beta * d)[..., None]
  return np.clip(x * t + 0.5 * (1 - t), 0, 1)


def _scipy_fit(z):
  """docs/method.md §2 moment matching by brentq; β at 10 where (E|z|)²/E[z²] ≥ ρ(10)
  (near-constant)."""
  m1, m2 = np.mean(np.abs(z)), np.mean(z**2)

  def log_rho(b):
    return 2 * special.gammaln(2 / b) - special.gammaln(1 / b) - special.gammaln(3 / b)

  log_r = 2 * np.log(m1) - np.log(m2)
  if log_r >= log_rho(10.0):
    beta = 10.0
  else:
    beta = optimize.brentq(lambda b: log_rho(b) - log_r, 0.1, 10.0)
  return np.sqrt(m2 * special.gamma(1 / beta) / special.gamma(3 / beta)), beta


@pytest.fixture(scope="module")
def images(tmp_path_factory):
  folder = tmp_path_factory.mktemp("clean")
  rng = np.random.default_rng(0)
  yy, xx = np.mgrid[: SHAPE[0], : SHAPE[1]]
  for k in range(2):
    smooth = 0.5 + 0.35 * np.sin(xx / (3 + k))[..., None] * np.cos(yy / 5)[..., None]
    img = np.clip(smooth + 0.1 * rng.standard_normal(SHAPE), 0, 1)
    io.write_image(folder / f"img{k}.png", img)
  return [folder / "img0.png", folder / "img1.png"]


@pytest.fixture(scope="module")
def analysis(images):
  return ad.analyze(images, _pool_encoder, 4, crop=CROP, bins=16, seed=0, progress=False)


def test_pixel_histograms_of_deterministic_conditions(images, analysis):
  xs = [io.read_image(p) for p in images]
  for cond in ad.CONDITIONS:
    if cond.kind == "noise":
      continue
    expected = sum(np.histogram(_hand(x, cond), bins=analysis.edges)[0] for x in xs)
    # float32 against float64: a value on a bin edge may fall either side.
    assert np.abs(analysis.counts[cond] - expected).sum() <= 4, cond


def test_noise_histogram_matches_gaussian_expectation(images, analysis):
  xs = np.concatenate([io.read_image(p).ravel() for p in images]).astype(np.float64)
  edges = analysis.edges
  for level, sigma in (("light", 15 / 255), ("heavy", 50 / 255)):
    cdf = stats.norm.cdf((edges[None, :] - xs[:, None]) / sigma)
    cdf[:, 0], cdf[:, -1] = 0.0, 1.0  # clipping puts the tails into the end bins
    expected = np.diff(cdf, axis=1).sum(axis=0)
    counts = analysis.counts[ad.Condition("noise", level)]
    assert counts.sum() == xs.size
    np.testing.assert_array_less(np.abs(counts - expected), 5 * np.sqrt(expected) + 3)


def test_latent_ggd_rows_match_scipy_on_the_centre_crop(images, analysis):
  rows = {(r["image"], r["kind"], r["level"], r["channel"]): r for r in analysis.rows}
  assert len(rows) == len(analysis.rows) == 2 * len(ad.CONDITIONS) * 3
  top, left = (SHAPE[0] - CROP) // 2, (SHAPE[1] - CROP) // 2
  for path in images:
    x = io.read_image(path)
    for cond in ad.CONDITIONS:
      if cond.kind == "noise":
        continue
      window = _hand(x, cond)[top : top + CROP, left : left + CROP]
      z = np.asarray(_pool_encoder(window[None]))[0]
      for c in range(3):
        alpha, beta = _scipy_fit(z[..., c])
        r = rows[(path.name, cond.kind, cond.level, c)]
        np.testing.assert_allclose([r["alpha"], r["beta"]], [alpha, beta], rtol=2e-3)


def test_csv_holds_the_numbers(analysis, tmp_path):
  ad.write_csv(analysis, tmp_path)
  with open(tmp_path / "ggd.csv") as f:
    rows = list(csv.DictReader(f))
  assert len(rows) == len(analysis.rows)
  assert float(rows[5]["beta"]) == pytest.approx(analysis.rows[5]["beta"])
  with open(tmp_path / "histograms.csv") as f:
    hist = [r for r in csv.DictReader(f) if r["kind"] == "haze" and r["level"] == "heavy"]
  counts = np.array([int(r["count"]) for r in hist])
  np.testing.assert_array_equal(counts, analysis.counts[ad.Condition("haze", "heavy")])
  density = np.array([float(r["density"]) for r in hist])
  assert np.sum(density / 16) == pytest.approx(1.0, rel=1e-4)


def test_flags_run_writes_figures_and_csv(images, tmp_path, capsys):
  fv = flags.FlagValues()
  ad.define_flags(fv)
  out = tmp_path / "out"
  fv(["analyze", f"--input={images[0].parent}", f"--output={out}", "--crop=16", "--bins=16"])
  seen = []

  def encoder(model, seed):
    seen.append((model, seed))
    return _pool_encoder, 4, "stand-in encoder"

  ad.run(fv, encoder)
  assert seen == [("tiny", 0)]
  assert "figures and CSV files" in capsys.readouterr().out
  for name in ("fig2b_histograms.png", "fig3_ggd_scatter.png"):
    with Image.open(out / name) as im:
      assert im.format == "PNG" and im.width > 600
  with open(out / "ggd.csv") as f:
    assert len(list(csv.DictReader(f))) == 2 * len(ad.CONDITIONS) * 3
  fv.unparse_flags()
  fv(["analyze", f"--input={tmp_path / 'missing'}", f"--output={out}"])
  with pytest.raises(ad.AnalysisError, match="does not exist"):
    ad.run(fv, encoder)


def test_centre_crop_rounds_to_the_encoder_factor():
  x = np.arange(30 * 41 * 3).reshape(30, 41, 3)
  np.testing.assert_array_equal(ad.centre_crop(x, 20, 8), x[7:23, 12:28])
  np.testing.assert_array_equal(ad.centre_crop(x, 0, 8), x[3:27, 0:40])
  with pytest.raises(ValueError, match="smaller than"):
    ad.centre_crop(x[:5], 0, 8)


def test_missing_matplotlib_is_a_one_line_usage_error(monkeypatch):
  monkeypatch.setitem(sys.modules, "matplotlib", None)
  with pytest.raises(ad.AnalysisError, match=r"pip install 'upzeroir-jax\[plots\]'"):
    ad._pyplot()
