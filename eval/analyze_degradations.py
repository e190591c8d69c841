r"""Degradation statistics in pixel and latent space (the paper's Fig. 2(b) and Fig. 3).

For every clean image of `--input` it synthesises each degradation of docs/method.md §1 (noise,
haze, low light) at the light and heavy intensity, and records

- (a) the histogram of pixel values (all channels pooled) per degradation and intensity, over
  whole images at their full resolution: `histograms.csv`, `fig2b_histograms.png`;
- (b) the per-channel GGD parameters (α, β) of the SD VAE latents of each degraded image
  (`physics.ggd.fit` over the spatial axes, docs/method.md §2): `ggd.csv`, `fig3_ggd_scatter.png`.

Degradations run at each image's full resolution (the haze depth map of Eq. 20 depends on the
image size). For the encoder, the degraded image is centre-cropped to `--crop` × `--crop`
pixels (rounded down to the VAE's factor; 0 keeps the whole image, rounded down likewise); a
crop, unlike a resize, keeps the per-pixel noise statistics. Noise for image k uses
`fold_in(key(seed), k)`.

`--model` is any source `upzeroir_jax.models.sd.load` accepts (a converted checkpoint, a
diffusers folder, a hub id), or `tiny`: the randomly initialised tiny VAE of `sd.tiny(key)`
(the same VAE weights, initialised alone), which the latent plot's title says. Plots need
matplotlib (`pip install 'upzeroir-jax[plots]'`).

Example (the figures in docs/: 24 Kodak images, 256-pixel crops; minutes on a 2-core CPU):
  python -m eval.analyze_degradations --input=datasets/kodak24 \
      --output=/tmp/degradation_analysis --model=tiny --crop=256
"""

import csv
import dataclasses
import pathlib
import sys
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags, logging
from tqdm import tqdm

from upzeroir_jax import cli, io
from upzeroir_jax.physics import degrade, ggd

PROG = "eval.analyze_degradations"
USAGE = f"""\
usage: python -m {PROG} --input=DIR --output=DIR [--model=tiny] [--crop=256] [flags]

Writes the pixel histograms and latent GGD parameters of light and heavy noise, haze and low
light on the images of DIR (CSV files and the figures of the paper's Fig. 2(b) and Fig. 3).
"""
KINDS = ("noise", "haze", "lowlight")
LEVELS = ("light", "heavy")
KIND_LABELS = {"clean": "clean", "noise": "noise", "haze": "haze", "lowlight": "low light"}
KIND_COLORS = {"clean": "black", "noise": "tab:blue", "haze": "tab:orange", "lowlight": "tab:green"}
LEVEL_MARKERS = {"none": "x", "light": "o", "heavy": "^"}
_degrade = jax.jit(degrade.apply, static_argnames="spec")  # One compile per spec and size.


class AnalysisError(ValueError):
  """Input or settings the analysis cannot use; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Condition:
  """One degradation at one intensity; `kind == "clean"` (level "none") is the reference."""

  kind: str
  level: str

  @property
  def spec(self) -> str:
    return f"{self.kind}:{self.level}"

  @property
  def label(self) -> str:
    return "clean" if self.kind == "clean" else f"{KIND_LABELS[self.kind]}, {self.level}"


CONDITIONS = (Condition("clean", "none"),) + tuple(Condition(k, lv) for k in KINDS for lv in LEVELS)


@dataclasses.dataclass
class Analysis:
  """What `analyze` measured.

  Attributes:
    edges: histogram bin edges over [0, 1], `[bins + 1]`.
    counts: condition -> pixel-value counts `[bins]` summed over images and channels.
    rows: one dict per (image, condition, latent channel) with keys image, kind, level,
      channel, alpha, beta.
  """

  edges: np.ndarray
  counts: dict[Condition, np.ndarray]
  rows: list[dict]


def degraded_versions(img: np.ndarray, key: jax.Array) -> dict[Condition, np.ndarray]:
  """Every condition of CONDITIONS applied to one image `[H, W, 3]` (noise keyed by `key`)."""
  out = {}
  for cond in CONDITIONS:
    out[cond] = img if cond.kind == "clean" else np.asarray(_degrade(img, spec=cond.spec, key=key))
  return out


def centre_crop(img: np.ndarray, crop: int, multiple: int) -> np.ndarray:
  """The centre `crop` × `crop` window (whole image for 0), sides rounded down to `multiple`."""
  h, w = img.shape[:2]
  ch, cw = (min(crop, h), min(crop, w)) if crop else (h, w)
  ch, cw = ch - ch % multiple, cw - cw % multiple
  if ch == 0 or cw == 0:
    raise ValueError(f"an image of {h}×{w} pixels is smaller than the encoder's factor {multiple}")
  top, left = (h - ch) // 2, (w - cw) // 2
  return img[top : top + ch, left : left + cw]


def analyze(
  files: Sequence[pathlib.Path],
  encode: Callable[[jax.Array], jax.Array],
  latent_factor: int,
  crop: int = 256,
  bins: int = 64,
  seed: int = 0,
  progress: bool = True,
) -> Analysis:
  """Pixel histograms and latent GGD parameters of every condition for every image.

  Args:
    files: clean image files.
    encode: images `[B, h, w, 3]` in [0, 1] -> latents `[B, h/f, w/f, C]`.
    latent_factor: f, the encoder's downsampling factor (crops are multiples of it).
    crop: centre crop side for the encoder (0: whole image).
    bins: histogram bins over [0, 1].
    seed: noise seed; image k uses `fold_in(key(seed), k)`.
    progress: show a tqdm progress bar.

  Returns:
    The `Analysis`.
  """
  edges = np.linspace(0.0, 1.0, bins + 1)
  counts = {cond: np.zeros(bins, np.int64) for cond in CONDITIONS}
  rows = []
  fit = jax.jit(lambda z: ggd.fit(z, axis=(1, 2)))
  for k, path in enumerate(tqdm(files, desc="images", disable=not progress)):
    versions = degraded_versions(io.read_image(path), jax.random.fold_in(jax.random.key(seed), k))
    for cond, img in versions.items():
      counts[cond] += np.histogram(img, bins=edges)[0]
    batch = np.stack([centre_crop(versions[c], crop, latent_factor) for c in CONDITIONS])
    alpha, beta = (np.asarray(v) for v in fit(encode(jnp.asarray(batch))))
    for i, cond in enumerate(CONDITIONS):
      for c in range(alpha.shape[1]):
        rows.append(
          {
            "image": path.name,
            "kind": cond.kind,
            "level": cond.level,
            "channel": c,
            "alpha": float(alpha[i, c]),
            "beta": float(beta[i, c]),
          }
        )
  return Analysis(edges, counts, rows)


def write_csv(analysis: Analysis, folder: pathlib.Path) -> None:
  """histograms.csv (kind, level, bin_lo, bin_hi, count, density) and ggd.csv (one row each)."""
  with open(folder / "histograms.csv", "w", newline="") as f:
    w = csv.writer(f)
    w.writerow(["kind", "level", "bin_lo", "bin_hi", "count", "density"])
    widths = np.diff(analysis.edges)
    for cond, counts in analysis.counts.items():
      density = counts / (counts.sum() * widths)
      for i, n in enumerate(counts):
        lo, hi = analysis.edges[i], analysis.edges[i + 1]
        w.writerow([cond.kind, cond.level, f"{lo:.6g}", f"{hi:.6g}", int(n), f"{density[i]:.6g}"])
  with open(folder / "ggd.csv", "w", newline="") as f:
    w = csv.DictWriter(f, fieldnames=["image", "kind", "level", "channel", "alpha", "beta"])
    w.writeheader()
    w.writerows(analysis.rows)


def _pyplot():
  try:
    import matplotlib
  except ImportError:
    raise AnalysisError("the plots need matplotlib: pip install 'upzeroir-jax[plots]'") from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  return plt


def plot_histograms(analysis: Analysis, path: pathlib.Path, images: int) -> None:
  """Fig. 2(b): one panel per degradation, the clean histogram against light and heavy (pixels
  only: no encoder is involved, so the title carries no model note)."""
  plt = _pyplot()
  centres = 0.5 * (analysis.edges[1:] + analysis.edges[:-1])
  widths = np.diff(analysis.edges)
  clean = analysis.counts[CONDITIONS[0]]
  fig, axes = plt.subplots(1, len(KINDS), figsize=(13, 3.6), sharey=True)
  for ax, kind in zip(axes, KINDS):
    ax.plot(centres, clean / (clean.sum() * widths), color="black", lw=1.5, label="clean")
    for cond in CONDITIONS:
      if cond.kind == kind:
        counts = analysis.counts[cond]
        style = "-" if cond.level == "light" else "--"
        ax.plot(
          centres,
          counts / (counts.sum() * widths),
          style,
          color=KIND_COLORS[kind],
          lw=1.5,
          label=cond.level,
        )
    ax.set_yscale("log")
    ax.set_title(KIND_LABELS[kind])
    ax.set_xlabel("pixel value")
    ax.legend(fontsize=8)
  axes[0].set_ylabel("density")
  fig.suptitle(f"Pixel-value histograms per degradation and intensity ({images} images)",
               fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def plot_scatter(analysis: Analysis, path: pathlib.Path, note: str) -> None:
  """Fig. 3: latent GGD (α, β) per channel, coloured by degradation, marked by intensity."""
  plt = _pyplot()
  channels = sorted({r["channel"] for r in analysis.rows})
  fig, axes = plt.subplots(1, len(channels), figsize=(3.4 * len(channels), 3.6))
  axes = np.atleast_1d(axes)
  for ax, c in zip(axes, channels):
    for cond in CONDITIONS:
      pts = [
        (r["alpha"], r["beta"])
        for r in analysis.rows
        if r["channel"] == c and r["kind"] == cond.kind and r["level"] == cond.level
      ]
      a, b = np.array(pts).T
      ax.scatter(
        a,
        b,
        s=14,
        alpha=0.75,
        color=KIND_COLORS[cond.kind],
        marker=LEVEL_MARKERS[cond.level],
        label=cond.label,
      )
    ax.set_title(f"latent channel {c}")
    ax.set_xlabel("GGD scale α")
  axes[0].set_ylabel("GGD shape β")
  axes[-1].legend(fontsize=7, loc="best")
  fig.suptitle(f"Per-channel GGD parameters of the VAE latents ({note})", fontsize=10)
  fig.tight_layout()
  fig.savefig(path, dpi=90)
  plt.close(fig)


def load_encoder(model: str, seed: int) -> tuple[Callable[[jax.Array], jax.Array], int, str]:
  """(encode, latent factor, note for the plot titles) for `--model`."""
  from upzeroir_jax.models import sd

  if model == "tiny":
    vae_only = sd.from_config(sd.TINY, jax.random.key(seed), parts=("vae",))
    note = "random tiny VAE, untrained: illustrates the pipeline, not SD's latents"
  else:
    vae_only = sd.load(model)
    note = f"SD VAE of {model}"
  encode = jax.jit(sd.encode)
  return (lambda img: encode(vae_only, img)), vae_only.latent_factor, note


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of eval.analyze_degradations on `fv`."""
  flags.DEFINE_string("input", None, "Folder of clean images.", flag_values=fv, required=True)
  flags.DEFINE_string("output", None, "Folder for the PNG figures and CSV files.", flag_values=fv,
                      required=True)
  flags.DEFINE_string("model", "tiny", "SD source for sd.load (checkpoint folder, diffusers "
                      "folder, hub id), or 'tiny' for the random tiny VAE.", flag_values=fv)
  flags.DEFINE_integer("crop", 256, "Centre crop side for the encoder (0: whole image).",
                       flag_values=fv, lower_bound=0)
  flags.DEFINE_integer("max_images", 0, "Use at most this many images (0: all).", flag_values=fv)
  flags.DEFINE_integer("bins", 64, "Histogram bins over [0, 1].", flag_values=fv, lower_bound=1)
  flags.DEFINE_integer("seed", 0, "Seed of the noise and of the tiny VAE.", flag_values=fv)
  return fv


def run(
  fv: flags.FlagValues,
  encoder: Callable[[str, int], tuple[Callable[[jax.Array], jax.Array], int, str]] | None = None,
) -> None:
  """Runs the analysis with parsed flags `fv`; bad input raises a `ValueError` (one line).

  `encoder(model, seed) -> (encode, latent factor, note)` defaults to `load_encoder`.
  """
  _pyplot()
  src = pathlib.Path(fv.input)
  if not src.is_dir():
    raise AnalysisError(f"input folder {src} does not exist")
  files = sorted(p for p in src.iterdir() if p.suffix.lower() in io.IMAGE_SUFFIXES)
  files = files[: fv.max_images] if fv.max_images else files
  if not files:
    raise AnalysisError(f"no images in {src}")
  encode, factor, note = (encoder or load_encoder)(fv.model, fv.seed)
  analysis = analyze(files, encode, factor, fv.crop, fv.bins, fv.seed)
  out = pathlib.Path(fv.output)
  out.mkdir(parents=True, exist_ok=True)
  write_csv(analysis, out)
  plot_histograms(analysis, out / "fig2b_histograms.png", len(files))
  plot_scatter(analysis, out / "fig3_ggd_scatter.png", f"{len(files)} images; {note}")
  logging.info("wrote figures and CSV files to %s", out)
  print(f"figures and CSV files in {out}")


def _main(fv: flags.FlagValues) -> int:
  run(fv)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs eval.analyze_degradations with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
