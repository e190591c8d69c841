"""Benchmark folders: where a dataset's degraded and ground-truth images are, and which
ground-truth file belongs to an input (docs/evaluation.md)."""

import pathlib

from upzeroir_jax import io
from upzeroir_jax.errors import RunError

# (degraded, ground truth) sub-folder names of the benchmarks' own layouts, case-insensitive.
LAYOUTS = (("low", "high"), ("low", "normal"), ("hazy", "gt"), ("hazy", "clear"),
           ("input", "gt"), ("input", "target"), ("lq", "gt"))


def _find_child(folder: pathlib.Path, name: str) -> pathlib.Path | None:
  try:
    children = list(folder.iterdir())
  except OSError as e:
    raise RunError(f"{folder}: cannot list this folder ({e.strerror or e})") from None
  return next((c for c in children if c.is_dir() and c.name.lower() == name), None)


def resolve(dataset_dir: str, gt_dir: str | None) -> tuple[pathlib.Path, pathlib.Path | None]:
  """(folder of degraded inputs, folder of ground truth or None) of a dataset folder: its
  sub-folder pair of `LAYOUTS` if it has one, else the folder itself with `gt_dir`.

  Raises:
    RunError: missing or unlistable folders.
  """
  folder = pathlib.Path(dataset_dir)
  if not folder.is_dir():
    raise RunError(f"--dataset_dir={dataset_dir}: no such folder")
  if gt_dir is not None and not pathlib.Path(gt_dir).is_dir():
    raise RunError(f"--gt_dir={gt_dir}: no such folder")
  for low, high in LAYOUTS:
    inputs, truth = _find_child(folder, low), _find_child(folder, high)
    if inputs is not None and truth is not None:
      return inputs, pathlib.Path(gt_dir) if gt_dir else truth
  return folder, pathlib.Path(gt_dir) if gt_dir else None


def ground_truth(gt_dir: pathlib.Path | None, source: pathlib.Path) -> pathlib.Path | None:
  """The ground-truth file of `source`: same stem, or the stem's part before the first `_`
  (RESIDE names hazy images `<id>_<A>_<beta>`); None when there is none."""
  if gt_dir is None:
    return None
  candidates = {p.stem: p for p in gt_dir.iterdir()
                if p.is_file() and p.suffix.lower() in io.IMAGE_SUFFIXES}
  return candidates.get(source.stem) or candidates.get(source.stem.split("_")[0])
