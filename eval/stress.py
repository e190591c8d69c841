"""The sampler on hard inputs over the exact Gaussian prior (docs/method.md §10, docs/verification.md).

  python -m eval.stress --input=DIR --output=stress.md [--threshold=off] [--max_images=4]

Each clean image of `--input` gives a 128² centre crop, made harder by a stretch c: the
colours are saturated (`g + c·(x − g)`, g the luma) and the contrast raised
(`0.5 + c·(x − 0.5)`), clipped to [0, 1] and stored in 8 and in 16 bits (as files would be).
Gaussian noise σ = 50/255 is added and the result rounded to the same bits. The analytic prior
is estimated from the noisy crop and `restore` runs the `denoise` preset's losses with 20 DDIM
steps, s = 6400 applied as given, PCDM / discriminator widths 16-32-64 and random VGG16
weights (the setting of tests/test_analytic.py), one batch of `--keys` keys per crop, without
DQR. The table gives per crop the RMS contrast (std of the luma), the share of clipped pixels,
the PSNR of the noisy input, of the Wiener filter and of the single samples (mean over the
keys that did not fail), and what the divergence guard did (recovered steps, failed keys).
"""

import pathlib
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import app, flags

from upzeroir_jax import config, io, restore
from upzeroir_jax.models import analytic, vgg

SIGMA = 50.0 / 255.0
SIDE = 128
STRETCHES = (1.0, 1.5, 2.0, 3.0, 4.0)
FLAGS = flags.FLAGS
flags.DEFINE_string("input", None, "Folder of clean images (PNG).")
flags.DEFINE_string("output", None, "Markdown file for the table.")
flags.DEFINE_enum("threshold", "off", config.THRESHOLDS, "ẑ0 thresholding (docs/method.md §3).")
flags.DEFINE_integer("max_images", 4, "Use the first this many images of --input.")
flags.DEFINE_integer("keys", 4, "Samples (keys) per crop.")


def stressed(x: np.ndarray, stretch: float, bits: int) -> np.ndarray:
  """Saturated, contrast-stretched, clipped copy of x `[H, W, 3]` rounded to `bits`."""
  g = x @ np.asarray([0.299, 0.587, 0.114], np.float32)
  x = g[..., None] + stretch * (x - g[..., None])
  return quantize(0.5 + stretch * (x - 0.5), bits)


def quantize(x: np.ndarray, bits: int) -> np.ndarray:
  top = 2**bits - 1
  return (np.round(np.clip(x, 0.0, 1.0) * top) / top).astype(np.float32)


def psnr(a: np.ndarray, b: np.ndarray) -> float:
  return float(10 * np.log10(1.0 / np.mean((np.asarray(a, np.float64) - b) ** 2)))


def one_crop(x: np.ndarray, bits: int, cfg: config.RestoreConfig, vgg_params, keys: int,
             seed: int) -> dict:
  """Noisy copy of x (rounded to `bits`), restored with `keys` keys: the row of the table."""
  noise = np.random.default_rng(seed).standard_normal(x.shape).astype(np.float32)
  y = quantize(x + SIGMA * noise, bits)
  models = restore.Models(backbone=analytic.from_noisy(jnp.asarray(y), SIGMA),
                          vgg_params=vgg_params)
  batch = jnp.broadcast_to(jnp.asarray(y), (keys,) + y.shape)
  out = restore.restore(models, batch, jax.random.split(jax.random.key(7), keys), cfg)
  image, failed = np.asarray(out.image), np.asarray(out.info["failure"]) != 0
  wiener = np.clip(np.asarray(analytic.wiener(jnp.asarray(y), SIGMA)), 0.0, 1.0)
  singles = [psnr(o, x) for o, f in zip(image, failed) if not f]
  luma = x @ np.asarray([0.299, 0.587, 0.114], np.float32)
  return {"contrast": float(luma.std()), "clipped": float(np.mean((x <= 0) | (x >= 1))),
          "noisy": psnr(y, x), "wiener": psnr(wiener, x),
          "single": float(np.mean(singles)) if singles else float("nan"),
          "recovered": int(np.asarray(out.info["recoveries"]).sum()), "failed": int(failed.sum())}


def main(argv: Sequence[str]) -> None:
  del argv
  cfg = config.preset("denoise", steps=20, dqr=False, guidance_scale=6400.0,
                      guidance_ref_pixels=0, pcdm_features=(16, 32, 64),
                      disc_features=(16, 32, 64), threshold=FLAGS.threshold)
  vgg_params = vgg.init_random(jax.random.key(1))
  files = sorted(pathlib.Path(FLAGS.input).glob("*.png"))[:FLAGS.max_images]
  lines = [f"threshold {FLAGS.threshold}; PSNR in dB; gain = single − noisy", "",
           ("| image | c | bits | contrast | clipped % | noisy | single | gain | Wiener "
            "| recovered steps | failed keys |"), "|" + "---|" * 11]
  for n, path in enumerate(files):
    img = io.read_image(path)
    r, c = img.shape[0] // 2 - SIDE // 2, img.shape[1] // 2 - SIDE // 2
    for stretch in STRETCHES:
      for bits in (8, 16):
        x = stressed(img[r:r + SIDE, c:c + SIDE], stretch, bits)
        row = one_crop(x, bits, cfg, vgg_params, FLAGS.keys, seed=100 + n)
        line = (f"| {path.stem} | {stretch:g} | {bits} | {row['contrast']:.3f} | "
                f"{100 * row['clipped']:.1f} | {row['noisy']:.2f} | {row['single']:.2f} | "
                f"{row['single'] - row['noisy']:+.2f} | {row['wiener']:.2f} | "
                f"{row['recovered']} | {row['failed']} |")
        print(line, flush=True)
        lines.append(line)
  pathlib.Path(FLAGS.output).write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
  flags.mark_flags_as_required(["input", "output"])
  app.run(main)
