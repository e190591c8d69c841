r"""Builds a degraded copy of an image folder for a degradation spec (docs/method.md §1).

Every image of `--input` (PNG, JPEG, BMP, TIFF, WebP; sorted by name, not recursive) is read,
degraded by `upzeroir_jax.physics.degrade.apply` with `--spec`, and written as an 8-bit PNG of
the same stem to `--output`, beside a `manifest.json` recording the spec, its parsed steps, the
seed and, per file, the source, the size and the PRNG key used. The key of a file is
`fold_in(key(seed), crc32(file name) mod 2³¹)`, so it depends on the name only: adding or
removing files never changes the others. Outputs that exist are skipped (resumable) unless
`--overwrite`; a folder made with another spec or seed is refused unless `--overwrite`.

Specs are `kind:value` parts joined by `+`, applied left to right, with kinds `noise` (σ),
`haze` (β), `lowlight` (α); values are numbers, fractions or `light` / `heavy`. Presets:
`kodak24_noise25` (noise:25/255), `lol_noise` (noise:light), `lol_haze_noise`
(haze:light+noise:light).

Examples (from the repository root):
  # Kodak24 with Gaussian noise σ = 25/255 (the denoising benchmark).
  python -m eval.synthesize --input=datasets/kodak24 --output=data/kodak24_noise25 \
      --spec=kodak24_noise25
  # The two mixed sets of Sec. 5.3 from LOLv1's low-light inputs.
  python -m eval.synthesize --input=LOLv1/eval15/low --output=data/lol_noise --spec=lol_noise
  python -m eval.synthesize --input=LOLv1/eval15/low --output=data/lol_haze_noise \
      --spec=lol_haze_noise
  # Without LOLv1: Kodak24 made low-light first, then the same presets on that folder.
  python -m eval.synthesize --input=datasets/kodak24 --output=data/kodak24_low \
      --spec=lowlight:light
"""

import dataclasses
import json
import os
import pathlib
import sys
import zlib
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from absl import flags, logging
from tqdm import tqdm

from upzeroir_jax import cli, io
from upzeroir_jax.physics import degrade

PROG = "eval.synthesize"
MANIFEST = "manifest.json"
USAGE = f"""\
usage: python -m {PROG} --input=DIR --output=DIR --spec=SPEC [--seed=N] [--overwrite]

Writes a degraded 8-bit PNG of every image of DIR, and manifest.json, to --output. SPEC is
kind:value parts joined by '+' (noise, haze, lowlight) or a preset ({", ".join(degrade.PRESETS)}).
"""
_apply = jax.jit(degrade.apply, static_argnames="spec")  # One compile per spec and image size.


class SynthesisError(ValueError):
  """Input or output folders that cannot be used; the message says what to do."""


def image_files(folder: pathlib.Path) -> list[pathlib.Path]:
  """The image files directly inside `folder`, sorted by name."""
  return sorted(
    p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in io.IMAGE_SUFFIXES
  )


def file_key(seed: int, name: str) -> tuple[jax.Array, int]:
  """The PRNG key of file `name` and its fold-in number `crc32(name) mod 2³¹`."""
  fold = zlib.crc32(name.encode()) & 0x7FFFFFFF
  return jax.random.fold_in(jax.random.key(seed), fold), fold


def synthesize(
  input_dir: os.PathLike | str,
  output_dir: os.PathLike | str,
  spec: str,
  seed: int = 0,
  overwrite: bool = False,
  progress: bool = True,
) -> dict[str, Any]:
  """Degrades every image of `input_dir` into `output_dir` and writes the manifest.

  Args:
    input_dir: folder of clean images.
    output_dir: destination folder (created).
    spec: degradation spec or preset name (`degrade.parse`).
    seed: noise seed; each file's key is `file_key(seed, name)`.
    overwrite: rewrite existing outputs (and accept a folder made with another spec or seed).
    progress: show a tqdm progress bar.

  Returns:
    The manifest written to `output_dir/manifest.json`.

  Raises:
    degrade.SpecError: on a malformed spec.
    SynthesisError: missing or empty input folder, or an output folder made differently.
  """
  steps = degrade.parse(spec)
  src, dst = pathlib.Path(input_dir), pathlib.Path(output_dir)
  if not src.is_dir():
    raise SynthesisError(f"input folder {src} does not exist")
  files = image_files(src)
  if not files:
    raise SynthesisError(f"no images ({', '.join(sorted(io.IMAGE_SUFFIXES))}) in {src}")
  manifest_path = dst / MANIFEST
  manifest = {
    "spec": spec,
    "steps": [dataclasses.asdict(s) for s in steps],
    "airlight": degrade.AIRLIGHT,
    "seed": seed,
    "key": f"fold_in(jax.random.key({seed}), crc32(name) & 0x7FFFFFFF)",
    "files": {},
  }
  if manifest_path.exists() and not overwrite:
    old = json.loads(manifest_path.read_text())
    if old.get("steps") != manifest["steps"] or old.get("seed") != seed:
      raise SynthesisError(
        f"{dst} holds images made with spec {old.get('spec')!r} and seed {old.get('seed')}; "
        "use another --output or --overwrite"
      )
    manifest["files"] = old.get("files", {})
  dst.mkdir(parents=True, exist_ok=True)
  written = 0
  for path in tqdm(files, desc=f"{spec} -> {dst.name}", disable=not progress):
    out = dst / f"{path.stem}.png"
    key, fold = file_key(seed, path.name)
    if out.exists() and not overwrite:
      height, width = io.image_size(path)
    else:
      img = io.read_image(path)
      io.write_image(out, np.asarray(_apply(img, spec=spec, key=key)))
      height, width = img.shape[:2]
      written += 1
    manifest["files"][out.name] = {
      "source": path.name,
      "height": height,
      "width": width,
      "fold_in": fold,
    }
  manifest["files"] = dict(sorted(manifest["files"].items()))
  io.write_json(manifest_path, manifest)
  logging.info("%d images written, %d skipped, to %s", written, len(files) - written, dst)
  return manifest


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of eval.synthesize on `fv`."""
  flags.DEFINE_string("input", None, "Folder of clean images.", flag_values=fv, required=True)
  flags.DEFINE_string("output", None, "Folder for the degraded PNGs and manifest.json.",
                      flag_values=fv, required=True)
  flags.DEFINE_string("spec", None, "Degradation spec, e.g. 'lowlight:0.3+haze:0.05+noise:light', "
                      f"or a preset: {', '.join(degrade.PRESETS)}.", flag_values=fv,
                      required=True)
  flags.DEFINE_integer("seed", 0, "Seed of the noise.", flag_values=fv)
  flags.DEFINE_bool("overwrite", False, "Rewrite outputs that exist.", flag_values=fv)
  return fv


def _main(fv: flags.FlagValues) -> int:
  manifest = synthesize(fv.input, fv.output, fv.spec, fv.seed, fv.overwrite)
  print(f"{len(manifest['files'])} images in {fv.output}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs eval.synthesize with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
