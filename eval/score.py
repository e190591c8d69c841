r"""Scores restored images against ground truth: per-image CSV and mean JSON (docs/method.md §9).

  python -m eval.score --run_dir=runs/lolv1
  python -m eval.score --restored_dir=out/ --gt_dir=LOLv1/eval15/high --output_dir=out/

Metrics (upzeroir_jax.metrics, pyiqa's definitions): PSNR, SSIM, LPIPS (VGG; needs the
converted weights, `--lpips`), NIQE (no weights), ARNIQA (needs the converted weights,
`--arniqa`). A metric that cannot be computed — weights missing, no ground truth for the
full-reference ones, an image too small for it — is reported as missing (empty CSV cell,
`null` in JSON, with the reason under "missing"), never as 0.

With `--run_dir` (an eval.run folder) the restored images are `<run_dir>/restored/*.png`
and each one's ground truth is the one eval.run recorded in its sidecar; otherwise ground
truth is matched by file stem in `--gt_dir`. Writes `scores.csv` and `scores.json` to
`--output_dir` (default: the run folder, or the restored folder).

`--protocol=ldrps` scores as LD-RPS does (`eval/protocol.py`): restored images and references
at 256 × 256, LANCZOS-resized to it where they have another size. Its default is the protocol
run.json records (`native`, each image at its own size, without one); scores.json records it.
"""

import csv
import functools
import io as io_lib
import json
import math
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from absl import flags

from eval import protocol as protocol_lib
from upzeroir_jax import cli, io, loading, records
from upzeroir_jax.io import atomic

PROG = "eval.score"
METRICS = ("psnr", "ssim", "lpips", "niqe", "arniqa")
FULL_REFERENCE = ("psnr", "ssim", "lpips")
USAGE = f"""\
usage: python -m {PROG} --run_dir=DIR | --restored_dir=DIR [--gt_dir=DIR] [flags]

Writes scores.csv (one row per image) and scores.json (means) of {", ".join(METRICS)}.
"""


def _jit(fn: Callable) -> Callable:
  import jax
  return jax.jit(fn)


def metric_functions(lpips_path: str | None, arniqa_dir: str | None
                     ) -> tuple[dict[str, Callable], dict[str, str]]:
  """The available metrics as `fn(restored [H, W, 3], gt [H, W, 3] | None) -> float`, and the
  reason each unavailable one is missing.

  LPIPS and ARNIQA load their converted weights here; absent, truncated or invalid files (a
  `CheckpointError`) make them missing.
  """
  from upzeroir_jax import metrics
  from upzeroir_jax.models import arniqa, flat_checkpoint

  fns: dict[str, Callable] = {
    "psnr": _jit(metrics.psnr),
    "ssim": _jit(metrics.ssim),
    "niqe": _jit(metrics.niqe.niqe),
  }
  missing: dict[str, str] = {}
  try:
    params = metrics.lpips.load(lpips_path or "")
    net = "vgg" if params["lin"]["lin1"].shape == (metrics.lpips.NETS["vgg"][1][1],) else "alex"
    lp = _jit(functools.partial(metrics.lpips.lpips, net=net))
    fns["lpips"] = lambda a, b: lp(params, a[None], b[None])[0]
  except (flat_checkpoint.CheckpointError, ValueError) as e:
    missing["lpips"] = f"LPIPS weights not available ({e})"
  enc, reg = arniqa.checkpoint_files(arniqa_dir or "")
  try:
    model = arniqa.load(enc, reg)
    fns["arniqa"] = _jit(functools.partial(metrics.arniqa_score, model))
  except (flat_checkpoint.CheckpointError, ValueError) as e:
    missing["arniqa"] = f"ARNIQA weights not available ({e})"
  return fns, missing


def _pairs_from_run(run_dir: pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path | None]]:
  restored = run_dir / "restored"
  if not restored.is_dir():
    raise ValueError(f"--run_dir={run_dir}: no restored/ folder (run python -m eval.run first)")
  pairs = []
  for image in sorted(restored.glob("*.png")):
    record = records.read_sidecar(image)
    if record is None:
      continue  # unfinished
    gt = record.get("gt")
    pairs.append((image, pathlib.Path(gt) if gt else None))
  return pairs


def run_gt_dir(run_dir: pathlib.Path,
               pairs: Sequence[tuple[pathlib.Path, pathlib.Path | None]]) -> str | None:
  """The ground-truth folder of an eval.run folder, as scores.json records it: run.json's
  `gt_dir`, else the one folder all per-image ground-truth files are in, else None."""
  run_file = run_dir / "run.json"
  if run_file.is_file():
    recorded = json.loads(run_file.read_text()).get("gt_dir")
    if recorded:
      return str(recorded)
  folders = {str(gt.parent) for _, gt in pairs if gt is not None}
  return folders.pop() if len(folders) == 1 else None


def _pairs_from_dirs(restored_dir: pathlib.Path, gt_dir: pathlib.Path | None
                     ) -> list[tuple[pathlib.Path, pathlib.Path | None]]:
  if not restored_dir.is_dir():
    raise ValueError(f"--restored_dir={restored_dir}: no such folder")
  if gt_dir is not None and not gt_dir.is_dir():
    raise ValueError(f"--gt_dir={gt_dir}: no such folder")
  truth = {} if gt_dir is None else {
    p.stem: p for p in gt_dir.iterdir() if p.suffix.lower() in io.IMAGE_SUFFIXES}
  return [(p, truth.get(p.stem)) for p in sorted(restored_dir.iterdir())
          if p.is_file() and p.suffix.lower() in io.IMAGE_SUFFIXES]


def score_pairs(pairs: Sequence[tuple[pathlib.Path, pathlib.Path | None]],
                fns: dict[str, Callable], missing: dict[str, str],
                protocol: str = protocol_lib.NATIVE
                ) -> tuple[list[dict[str, Any]], dict[str, Any]]:
  """Per-image rows and the summary (means over the images that have each metric), both
  images brought to the size `protocol` scores at (`protocol.reference`).

  A non-finite value (e.g. NIQE of a flat image) counts as missing for that image.

  Returns:
    (rows: dicts with `name`, `restored`, `gt` and one float or None per metric,
     summary: `count`, `means` (None when no image has the metric), `counts`, `missing`).
  """
  missing = dict(missing)
  notes: dict[str, str] = {}
  rows = []
  for restored, gt in pairs:
    row: dict[str, Any] = {"name": restored.stem, "restored": str(restored),
                           "gt": str(gt) if gt else ""}
    x = protocol_lib.reference(io.read_image(restored), protocol)
    y = protocol_lib.reference(io.read_image(gt), protocol) if gt is not None else None
    if y is not None and y.shape != x.shape:
      raise ValueError(f"{restored}: size {x.shape[:2]} differs from its ground truth {gt} "
                       f"{y.shape[:2]}")
    for metric in METRICS:
      row[metric] = None
      if metric not in fns or (metric in FULL_REFERENCE and y is None):
        continue
      try:
        args = (x, y) if metric in FULL_REFERENCE else (x,)
        value = float(fns[metric](*args))
        row[metric] = value if math.isfinite(value) else None
      except ValueError as e:
        notes[metric] = " ".join(str(e).split())
    rows.append(row)
  means, counts = {}, {}
  for metric in METRICS:
    values = [r[metric] for r in rows if r[metric] is not None]
    counts[metric] = len(values)
    means[metric] = sum(values) / len(values) if values else None
    if not values and metric not in missing:
      missing[metric] = notes.get(metric) or (
          "no ground truth" if metric in FULL_REFERENCE else "no image could be scored")
  return rows, {"count": len(rows), "means": means, "counts": counts, "missing": missing}


def write(rows: Sequence[dict[str, Any]], summary: dict[str, Any], output_dir: pathlib.Path,
          extra: dict[str, Any]) -> None:
  """Writes `scores.csv` (empty cells for missing values) and `scores.json`, each atomically
  (`io.atomic`: a planted file or link there is replaced, never followed)."""
  text = io_lib.StringIO(newline="")
  writer = csv.DictWriter(text, fieldnames=["name", *METRICS, "restored", "gt"])
  writer.writeheader()
  for row in rows:
    writer.writerow({k: ("" if v is None else v) for k, v in row.items()})
  atomic.write(output_dir / "scores.csv", lambda f: f.write(text.getvalue().encode("utf-8")))
  io.write_json(output_dir / "scores.json", {**summary, **extra})


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of eval.score on `fv`."""
  flags.DEFINE_string("run_dir", None, "An eval.run folder.", flag_values=fv)
  flags.DEFINE_string("restored_dir", None, "Folder of restored images (instead of "
                      "--run_dir).", flag_values=fv)
  flags.DEFINE_string("gt_dir", None, "Ground truth, matched by file stem (with "
                      "--restored_dir).", flag_values=fv)
  flags.DEFINE_string("output_dir", None, "Where scores.csv/json go (default: the run or "
                      "restored folder).", flag_values=fv)
  flags.DEFINE_enum("protocol", None, list(protocol_lib.PROTOCOLS), "Scoring protocol "
                    "(default: the run's, else native); ldrps: at 256² as LD-RPS.",
                    flag_values=fv)
  flags.DEFINE_string("lpips", loading.DEFAULT_LPIPS, "Converted LPIPS "
                      "checkpoint.", flag_values=fv)
  flags.DEFINE_string("arniqa", loading.DEFAULT_ARNIQA, "Folder of the converted ARNIQA "
                      "checkpoints.", flag_values=fv)
  return fv


def _main(fv: flags.FlagValues) -> int:
  if bool(fv.run_dir) == bool(fv.restored_dir):
    raise ValueError("give exactly one of --run_dir or --restored_dir")
  if fv.run_dir:
    run_dir = pathlib.Path(fv.run_dir)
    pairs = _pairs_from_run(run_dir)
    out = pathlib.Path(fv.output_dir or run_dir)
    gt_dir = run_gt_dir(run_dir, pairs)
    run_file = run_dir / "run.json"
    recorded = json.loads(run_file.read_text()).get("protocol") if run_file.is_file() else None
  else:
    gt_dir = fv.gt_dir
    pairs = _pairs_from_dirs(pathlib.Path(fv.restored_dir),
                             pathlib.Path(fv.gt_dir) if fv.gt_dir else None)
    out = pathlib.Path(fv.output_dir or fv.restored_dir)
    recorded = None
  if not pairs:
    raise ValueError("no restored images to score")
  fns, missing = metric_functions(fv.lpips, fv.arniqa)
  protocol = fv.protocol or recorded or protocol_lib.NATIVE
  rows, summary = score_pairs(pairs, fns, missing, protocol)
  write(rows, summary, out, {"run_dir": fv.run_dir, "restored_dir": fv.restored_dir,
                             "gt_dir": gt_dir, "protocol": protocol})
  means = ", ".join(f"{m} {'missing' if v is None else f'{v:.4f}'}"
                    for m, v in summary["means"].items())
  print(f"{PROG}: {summary['count']} images: {means} -> {out / 'scores.json'}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs eval.score with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
