"""Measures how well `physics.identify` names the degradations of synthetic inputs.

  python -m eval.identify --input=Kodak24 --input=CBSD68:second --output_dir=runs/identify

Each clean image of the `--input` folders (`DIR`, or `DIR:first` / `DIR:second` for the first
or second half of its files sorted by name) is box-downscaled so its short side is `--size`
and centre-cropped to a square, then degraded with `physics.degrade.apply` for every spec of
`GRID`: clean; low light α 0.1–0.4, haze β 0.04–0.16, noise σ 10–50/255 each alone; the
mixed sets of docs/method.md §1 (low light + noise, low light + light haze + light noise) over
the same α. Degraded images are rounded to 8 bits, as files would be. The identifier runs on
each, and the run folder receives:

- `confusion.csv` / `confusion.png`: true composition (rows) × identified composition;
- `accuracy.json`: exact-composition accuracy per class, per spec, for the single / mixed /
  clean groups, the thresholds, the inputs and the runtimes;
- `features.csv`: the estimates (illumination, haze density, σ) of every image and spec.

The thresholds of `physics.identify.Thresholds` were tuned on `cbsd68:first`; report figures
on `kodak24` + `cbsd68:second`.
"""

import csv
import dataclasses
import json
import pathlib
import sys
import time
from collections.abc import Sequence

import numpy as np
from absl import flags

from upzeroir_jax import cli, io
from upzeroir_jax.physics import identify

PROG = "eval.identify"
USAGE = f"""\
usage: python -m {PROG} --input=DIR[:first|:second] [--input=...] --output_dir=DIR [flags]

Synthesizes degraded copies of clean images over a grid of strengths, identifies their
degradations, and writes confusion.csv/.png, accuracy.json and features.csv.
"""
ALPHAS = (0.1, 0.2, 0.3, 0.4)
# (true composition, spec) of every grid cell.
GRID = (
  (("clean", ""),)
  + tuple(("lowlight", f"lowlight:{a}") for a in ALPHAS)
  + tuple(("haze", f"haze:{b}") for b in (0.04, 0.08, 0.12, 0.16))
  + tuple(("noise", f"noise:{s}/255") for s in (10, 20, 30, 40, 50))
  + tuple(("lowlight+noise", f"lowlight:{a}+noise:{s}/255") for a in ALPHAS for s in (15, 50))
  + tuple(("lowlight+haze+noise", f"lowlight:{a}+haze:light+noise:light") for a in ALPHAS)
)
SINGLE = ("lowlight", "haze", "noise")
MIXED = ("lowlight+noise", "lowlight+haze+noise")
CLASSES = ("clean", "lowlight", "haze", "noise", "lowlight+noise", "lowlight+haze+noise")
PREDICTED = ("clean", "lowlight", "haze", "noise", "lowlight+haze", "lowlight+noise",
             "haze+noise", "lowlight+haze+noise")


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """Defines this binary's flags on `fv`."""
  flags.DEFINE_multi_string("input", None, "Folder of clean images, optionally with ':first' "
                            "or ':second' (that half of its files, sorted by name); "
                            "repeatable.", flag_values=fv, required=True)
  flags.DEFINE_string("output_dir", None, "Folder for the results.", flag_values=fv,
                      required=True)
  flags.DEFINE_integer("size", 256, "Side of the square crop every image is brought to.",
                       flag_values=fv, lower_bound=16)
  flags.DEFINE_integer("seed", 0, "Seed of the synthetic noise.", flag_values=fv)
  flags.DEFINE_integer("max_images", None, "Use at most this many images of each input.",
                       flag_values=fv, lower_bound=1)
  return fv


def input_files(spec: str) -> list[pathlib.Path]:
  """The image files of `DIR`, `DIR:first` or `DIR:second` (halves of the sorted list; the
  first half has the smaller count when it is odd)."""
  folder, _, part = spec.rpartition(":") if spec.endswith((":first", ":second")) else (spec,
                                                                                       "", "")
  path = pathlib.Path(folder)
  if not path.is_dir():
    raise ValueError(f"--input={spec}: no such folder")
  files = sorted(p for p in path.iterdir() if p.suffix.lower() in io.IMAGE_SUFFIXES)
  if not files:
    raise ValueError(f"--input={spec}: no images in {path}")
  half = len(files) // 2
  return {"": files, "first": files[:half], "second": files[half:]}[part]


def square(img: np.ndarray, size: int) -> np.ndarray:
  """`img` `[H, W, 3]` box-downscaled to short side `size` and centre-cropped to `[size, size,
  3]` (never upscaled: smaller images are centre-cropped to their short side)."""
  from PIL import Image

  h, w = img.shape[:2]
  scale = min(1.0, size / min(h, w))
  pil = Image.fromarray(np.round(img * 255).astype(np.uint8))
  if scale < 1.0:
    pil = pil.resize((max(size, round(w * scale)), max(size, round(h * scale))), Image.BOX)
  arr = np.asarray(pil, np.float32) / 255.0
  side = min(arr.shape[:2])
  top, left = (arr.shape[0] - side) // 2, (arr.shape[1] - side) // 2
  return arr[top:top + side, left:left + side]


def confusion(truth: Sequence[str], found: Sequence[str]) -> np.ndarray:
  """Counts `[len(CLASSES), len(PREDICTED)]` of (true, identified) composition pairs."""
  counts = np.zeros((len(CLASSES), len(PREDICTED)), np.int64)
  for t, f in zip(truth, found, strict=True):
    counts[CLASSES.index(t), PREDICTED.index(f)] += 1
  return counts


def _accuracy(truth: Sequence[str], found: Sequence[str], classes: Sequence[str]) -> float:
  hits = [t == f for t, f in zip(truth, found, strict=True) if t in classes]
  return float(np.mean(hits)) if hits else float("nan")


def _plot(counts: np.ndarray, path: pathlib.Path, title: str) -> None:
  import matplotlib

  matplotlib.use("Agg")
  import matplotlib.pyplot as plt

  rates = counts / np.maximum(counts.sum(axis=1, keepdims=True), 1)
  fig, ax = plt.subplots(figsize=(9, 5))
  ax.imshow(rates, cmap="Blues", vmin=0, vmax=1)
  ax.set_xticks(range(len(PREDICTED)), [p.replace("+", "+\n") for p in PREDICTED], fontsize=8)
  ax.set_yticks(range(len(CLASSES)), CLASSES, fontsize=8)
  ax.set_xlabel("identified")
  ax.set_ylabel("true")
  for i in range(counts.shape[0]):
    for j in range(counts.shape[1]):
      if counts[i, j]:
        ax.text(j, i, f"{counts[i, j]}\n{rates[i, j]:.0%}", ha="center", va="center",
                fontsize=7, color="white" if rates[i, j] > 0.5 else "black")
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def _runtime_512(images: Sequence[np.ndarray]) -> float | None:
  """Mean seconds of `identify.identify` on 512×512 crops of those images at least that big."""
  crops = [img[:512, :512] for img in images if min(img.shape[:2]) >= 512]
  if not crops:
    return None
  identify.identify(crops[0])
  start = time.perf_counter()
  for crop in crops:
    identify.identify(crop)
  return (time.perf_counter() - start) / len(crops)


def evaluate(inputs: Sequence[str], output_dir: str, size: int = 256, seed: int = 0,
             max_images: int | None = None) -> dict:
  """Runs the grid over the images of `inputs` and writes the results to `output_dir`.

  Returns the content of accuracy.json.
  """
  import jax

  from upzeroir_jax.physics import degrade

  start = time.perf_counter()
  files = [f for spec in inputs for f in input_files(spec)[:max_images]]
  originals = [io.read_image(f) for f in files]
  clean = np.stack([square(img, size) for img in originals])
  apply = jax.jit(degrade.apply, static_argnames="spec")
  truth, found, rows = [], [], []
  seconds = 0.0
  for k, (label, spec) in enumerate(GRID):
    ys = clean if not spec else np.asarray(apply(clean, spec=spec,
                                                  key=jax.random.key(seed * 1000 + k)))
    ys = np.round(ys * 255.0) / 255.0
    for f, y in zip(files, ys, strict=True):
      t0 = time.perf_counter()
      got = identify.identify(y)
      seconds += time.perf_counter() - t0
      truth.append(label)
      found.append(got.composition)
      rows.append({"file": f"{f.parent.name}/{f.name}", "spec": spec or "clean", "true": label,
                   "identified": got.composition, "illumination": got.illumination,
                   "haze_density": got.haze_density, "sigma_255": got.sigma * 255})
  counts = confusion(truth, found)
  out = pathlib.Path(output_dir)
  out.mkdir(parents=True, exist_ok=True)
  with open(out / "confusion.csv", "w", newline="") as fh:
    writer = csv.writer(fh)
    writer.writerow(["true \\ identified", *PREDICTED])
    for name, row in zip(CLASSES, counts, strict=True):
      writer.writerow([name, *row.tolist()])
  with open(out / "features.csv", "w", newline="") as fh:
    writer = csv.DictWriter(fh, fieldnames=list(rows[0]))
    writer.writeheader()
    writer.writerows(rows)
  per_spec = {}
  for label, spec in GRID:
    hits = [r["identified"] == label for r in rows if r["spec"] == (spec or "clean")]
    per_spec[spec or "clean"] = float(np.mean(hits))
  result = {
    "inputs": list(inputs), "images": len(files), "size": size, "seed": seed,
    "per_class": {c: _accuracy(truth, found, (c,)) for c in CLASSES},
    "single": _accuracy(truth, found, SINGLE),
    "mixed": _accuracy(truth, found, MIXED),
    "clean": _accuracy(truth, found, ("clean",)),
    "per_spec": per_spec,
    "thresholds": dataclasses.asdict(identify.Thresholds()),
    "identify_seconds_per_image": seconds / len(truth),
    "identify_seconds_per_512": _runtime_512(originals),
    "total_seconds": None,
  }
  _plot(counts, out / "confusion.png",
        f"{', '.join(inputs)} at {size}²: single {result['single']:.1%}, mixed "
        f"{result['mixed']:.1%}, clean {result['clean']:.1%}")
  result["total_seconds"] = time.perf_counter() - start
  (out / "accuracy.json").write_text(json.dumps(result, indent=2) + "\n")
  return result


def _main(fv: flags.FlagValues) -> int:
  result = evaluate(fv.input, fv.output_dir, fv.size, fv.seed, fv.max_images)
  print(f"{PROG}: {result['images']} images × {len(GRID)} specs: single {result['single']:.1%}, "
        f"mixed {result['mixed']:.1%}, clean {result['clean']:.1%} "
        f"({result['total_seconds']:.0f} s) -> {fv.output_dir}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs eval.identify with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
