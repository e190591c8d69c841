r"""How well `--grid=upsample` carries a perfect grid restoration to full resolution.

  python -m eval.upsample_oracle --dataset_dir=datasets/kodak24 --out=upsample_oracle.json

Each clean photo x of --dataset_dir is degraded at full size by the project's synthesis
(`physics.degrade.apply` with each --spec, the key of `eval.synthesize.file_key`) and rounded to
8 bits, as `eval.synthesize` writes it. The restoration on the --size² grid is replaced by an
oracle: x itself brought to the grid as "resize" does. The oracle is then carried back to the
photo's size two ways: bicubic, as `--grid=resize` does, and by the guided transform of
`--grid=upsample` (`io.upsample.carry`) fitted between the degraded photo on the grid and the
oracle, for each --radius and --eps (with --per_channel also the per-channel guided filter,
each output channel fitted on its own input channel). Reported: the PSNR against x of each, per image and the
mean over images, per spec. Bicubic loses the detail the grid cannot hold; the transform keeps
the detail of the degraded photo, and its noise too (a spec with noise shows it).

With --timing the full-resolution step (`carry` from a --timing_grid² grid) is timed at
768×512 and 4000×3000 (median of 3 runs, this process's threads).
"""

import json
import os
import pathlib
import platform
import statistics
import sys
import time
from collections.abc import Sequence

import jax.numpy as jnp
import numpy as np
from absl import flags

from eval import synthesize
from upzeroir_jax import cli, io
from upzeroir_jax.io import upsample
from upzeroir_jax.metrics.psnr import psnr
from upzeroir_jax.physics import degrade

PROG = "eval.upsample_oracle"
USAGE = f"""\
usage: python -m {PROG} --dataset_dir=DIR --out=FILE [--spec=SPEC ...] [--radius=R ...]
       [--eps=E ...] [--size=256] [--timing]

Full-resolution PSNR of --grid=upsample and of bicubic upsampling, each from an oracle grid
restoration (the clean photo on the grid), per degradation spec; JSON to --out.
"""
SPECS = ("lowlight:light", "lowlight:heavy", "haze:light", "lowlight:light+noise:light")
TIMING_SHAPES = ((512, 768), (3000, 4000))


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of eval.upsample_oracle on `fv`."""
  flags.DEFINE_string("dataset_dir", None, "Folder of clean photos.", flag_values=fv)
  flags.DEFINE_string("out", None, "JSON file for the results.", flag_values=fv)
  flags.DEFINE_multi_string("spec", list(SPECS), "Degradation specs (eval.synthesize's).",
                            flag_values=fv)
  flags.DEFINE_multi_integer("radius", [upsample.RADIUS], "Window radii (grid pixels).",
                             flag_values=fv, lower_bound=0)
  flags.DEFINE_multi_float("eps", [upsample.EPS], "ε values, relative to mean(I)².",
                           flag_values=fv, lower_bound=0.0)
  flags.DEFINE_integer("size", 256, "Grid side of the oracle restoration.", flag_values=fv,
                       lower_bound=8)
  flags.DEFINE_integer("seed", 0, "Noise seed (eval.synthesize's).", flag_values=fv)
  flags.DEFINE_boolean("per_channel", False, "Also the per-channel guided filter (each output "
                       "channel from its own input channel) at each radius and ε.",
                       flag_values=fv)
  flags.DEFINE_boolean("timing", False, "Also time the full-resolution step.", flag_values=fv)
  flags.DEFINE_integer("timing_grid", 512, "Grid side for --timing.", flag_values=fv,
                       lower_bound=8)
  return fv


def _psnr(a: np.ndarray, b: np.ndarray) -> float:
  return round(float(psnr(jnp.asarray(a), jnp.asarray(b))), 3)


def per_channel_coefficients(guide: np.ndarray, target: np.ndarray, radius: int,
                             eps: float) -> tuple[np.ndarray, np.ndarray]:
  """The per-channel guided filter in the form of `upsample.coefficients` (a diagonal Ā):
  a_c = cov(I_c, p_c) / (var(I_c) + ε'), b_c = p̄_c − a_c·Ī_c per window, then window means."""
  guide, target = np.asarray(guide, np.float64), np.asarray(target, np.float64)
  mean_i, mean_p = upsample.box_mean(guide, radius), upsample.box_mean(target, radius)
  var = upsample.box_mean(guide * guide, radius) - mean_i ** 2
  cov = upsample.box_mean(guide * target, radius) - mean_i * mean_p
  a = cov / (var + eps * float(np.mean(guide)) ** 2 + 1e-12)
  b = mean_p - a * mean_i
  diag = np.einsum("...i,ij->...ij", upsample.box_mean(a, radius), np.eye(3))
  return diag, upsample.box_mean(b, radius)


def measure(x: np.ndarray, name: str, spec: str, size: int, seed: int,
            params: Sequence[tuple[int, float]], per_channel: bool = False) -> dict[str, float]:
  """PSNRs against the clean photo `x` `[H, W, 3]` of bicubic and of the guided transform for
  each (radius, ε) of `params` (and of the per-channel filter with `per_channel`), from the
  oracle on the `size`² grid (module doc)."""
  key, _ = synthesize.file_key(seed, name)
  y = np.asarray(degrade.apply(jnp.asarray(x), spec, key))
  y = np.round(np.clip(y, 0, 1) * 255) / 255
  grid_input, _ = io.to_model_grid(y, size, "upsample", 64)
  oracle, meta = io.to_model_grid(x, size, "resize", 64)
  out = {"bicubic": _psnr(io.from_model_grid(oracle, meta), x)}
  for radius, eps in params:
    carried = upsample.carry(y.astype(np.float32), grid_input, oracle, radius, eps)
    out[f"r={radius},eps={eps:g}"] = _psnr(carried, x)
    if per_channel:
      diag, b = per_channel_coefficients(grid_input, oracle, radius, eps)
      out[f"per_channel,r={radius},eps={eps:g}"] = _psnr(
          upsample.apply(y.astype(np.float32), diag, b), x)
  return out


def timing(grid: int) -> dict[str, float]:
  """Median seconds of `upsample.carry` from a `grid`² grid to each of `TIMING_SHAPES`."""
  rng = np.random.default_rng(0)
  small = rng.random((grid, grid, 3)).astype(np.float32)
  out = {}
  for h, w in TIMING_SHAPES:
    full = rng.random((h, w, 3)).astype(np.float32)
    runs = []
    for _ in range(3):
      t0 = time.perf_counter()
      upsample.carry(full, small, small)
      runs.append(time.perf_counter() - t0)
    out[f"{w}x{h}"] = round(statistics.median(runs), 3)
  return out


def _main(fv: flags.FlagValues) -> int:
  if not fv.dataset_dir or not fv.out:
    raise ValueError("--dataset_dir and --out are required")
  files = synthesize.image_files(pathlib.Path(fv.dataset_dir))
  if not files:
    raise ValueError(f"no images in {fv.dataset_dir}")
  params = [(r, e) for r in fv.radius for e in fv.eps]
  report = {"dataset_dir": fv.dataset_dir, "images": len(files), "size": fv.size,
            "seed": fv.seed, "quantized": "8 bits", "machine":
            f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores",
            "specs": {}}
  clean = {f.name: io.read_image(f) for f in files}
  for spec in fv.spec:
    rows = {name: measure(x, name, spec, fv.size, fv.seed, params, fv.per_channel)
            for name, x in clean.items()}
    means = {k: round(statistics.fmean(r[k] for r in rows.values()), 3)
             for k in next(iter(rows.values()))}
    report["specs"][spec] = {"mean": means, "per_image": rows}
    print(f"{spec}: {json.dumps(means)}", flush=True)
  if fv.timing:
    report["timing_s"] = {"grid": fv.timing_grid, **timing(fv.timing_grid)}
    print(f"timing: {json.dumps(report['timing_s'])}", flush=True)
  io.write_json(fv.out, report)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs eval.upsample_oracle with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
