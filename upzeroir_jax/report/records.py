"""What a run folder holds, read for a report (docs/evaluation.md, "Reports").

Two kinds of folder: an `eval.run` folder (`run.json`, `restored/<stem>.png` with a JSON
sidecar each, and `scores.csv` / `scores.json` once `eval.score` ran) and an `upzeroir
restore` output folder (images with a sidecar each, nothing else). Only files are read: an
image counts when its sidecar names it and both exist (an unfinished image has no sidecar).
"""

from __future__ import annotations

import csv
import dataclasses
import json
import math
import pathlib
from typing import Any

from upzeroir_jax.errors import RunError

RUN_FILE = "run.json"
SCORES_CSV = "scores.csv"
SCORES_JSON = "scores.json"
RESTORED = "restored"
METRICS = ("psnr", "ssim", "lpips", "niqe", "arniqa")


@dataclasses.dataclass(frozen=True)
class Image:
  """One restored image of a run.

  Attributes:
    name: the restored file's stem (the key of its row in scores.csv).
    output: the restored image file.
    input: the degraded input the sidecar names, None when that file is gone.
    reference: the ground truth the sidecar names (eval.run), None when there is none.
    sidecar: the image's JSON sidecar.
    metrics: metric -> value from scores.csv (None where missing; empty before eval.score).
  """

  name: str
  output: pathlib.Path
  input: pathlib.Path | None
  reference: pathlib.Path | None
  sidecar: dict
  metrics: dict


@dataclasses.dataclass(frozen=True)
class Run:
  """A run folder: its settings (run.json, {} for a CLI folder), score summary (scores.json,
  {} before eval.score) and images in name order."""

  folder: pathlib.Path
  settings: dict
  scores: dict
  images: list[Image]


def dqr_record(sidecar: dict) -> dict:
  """An image's DQR record (enabled, steps, restarts, stop reason, scores, score_t, ...): the
  sidecar's "dqr" entry, or "sampling" as older sidecars name it; {} when neither is there."""
  record = sidecar.get("dqr", sidecar.get("sampling"))
  return record if isinstance(record, dict) else {}


def _json(path: pathlib.Path) -> Any:
  try:
    return json.loads(path.read_text())
  except (OSError, ValueError):
    return None


def _file(recorded: Any, folder: pathlib.Path) -> pathlib.Path | None:
  """The file a sidecar names (as written, else relative to the run folder), when it exists."""
  if not recorded:
    return None
  for path in (pathlib.Path(recorded), folder / recorded):
    if path.is_file():
      return path
  return None


def _metrics(folder: pathlib.Path) -> dict[str, dict[str, float | None]]:
  """scores.csv as {name: {metric: value or None}} ({} when eval.score has not run)."""
  path = folder / SCORES_CSV
  if not path.is_file():
    return {}
  out = {}
  with open(path, newline="") as f:
    for row in csv.DictReader(f):
      values = {}
      for metric in METRICS:
        try:
          value = float(row.get(metric) or "nan")
        except ValueError:
          value = math.nan
        values[metric] = value if math.isfinite(value) else None
      out[row.get("name", "")] = values
  return out


def read(folder: str | pathlib.Path) -> Run:
  """The run in `folder` (an eval.run folder or an `upzeroir restore` output folder).

  Raises:
    RunError: no such folder, or no restored image with its sidecar in it.
  """
  folder = pathlib.Path(folder)
  if not folder.is_dir():
    raise RunError(f"--run_dir={folder}: no such folder")
  images_dir = folder / RESTORED if (folder / RESTORED).is_dir() else folder
  metrics = _metrics(folder)
  images = []
  for path in sorted(images_dir.glob("*.json")):
    sidecar = _json(path)
    if not isinstance(sidecar, dict) or "output" not in sidecar:
      continue  # run.json, scores.json, or another file
    output = path.with_name(pathlib.PurePath(str(sidecar["output"])).name)
    if not output.is_file():
      continue
    images.append(Image(name=output.stem, output=output,
                        input=_file(sidecar.get("input"), folder),
                        reference=_file(sidecar.get("gt"), folder), sidecar=sidecar,
                        metrics=metrics.get(output.stem, {})))
  if not images:
    raise RunError(f"{folder}: no restored images with their JSON sidecars (run `upzeroir "
                   "restore` or python -m eval.run into it first)")
  settings = _json(folder / RUN_FILE)
  scores = _json(folder / SCORES_JSON)
  return Run(folder=folder, settings=settings if isinstance(settings, dict) else {},
             scores=scores if isinstance(scores, dict) else {}, images=images)
