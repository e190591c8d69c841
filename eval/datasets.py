"""The paper's evaluation sets as tensorflow-datasets builders (docs/evaluation.md, "tfds").

Importing this module registers six builders, so `python -m eval.run --dataset_dir=tfds:NAME`
serves them: `lolv1`, `lolv2`, `hsts`, `kodak24` and the two mixed sets `eval.synthesize`
makes from LOLv1, `lol_noise` and `lol_haze_noise`. None downloads anything: each is prepared
from the files in `<manual_dir>/<NAME>/` (tfds's manual folder, `<data_dir>/downloads/manual/`
unless `DownloadConfig(manual_dir=...)` or eval.run's `--tfds_manual_dir` says otherwise), laid
out as the benchmark ships them or as eval.run reads folders: degraded and clean images in one
of the sub-folder pairs of `eval.folders.LAYOUTS` (`low/` + `high/`, `Low/` + `Normal/`, `hazy/` +
`gt/`, `input/` + `gt/`, ...), matched by file stem as eval.run matches them. One split, `test`;
features `image` (degraded), `gt` (clean), both 8-bit RGB, and `name` (the input's file name).
"""

import pathlib
from typing import Any, ClassVar

import numpy as np
import tensorflow_datasets as tfds

from eval import folders
from upzeroir_jax import io

SPLIT = "test"


def prepare_kwargs(manual_dir: str | None) -> dict[str, Any]:
  """`tfds.load(..., download_and_prepare_kwargs=...)` reading the builders' files from
  `manual_dir` (None: tfds's default manual folder)."""
  if manual_dir is None:
    return {}
  return {"download_config": tfds.download.DownloadConfig(manual_dir=manual_dir)}


def pairs(folder: pathlib.Path) -> list[tuple[pathlib.Path, pathlib.Path]]:
  """(degraded, clean) files of a benchmark folder, sorted by the degraded file's name.

  Raises:
    ValueError: no sub-folder pair of `eval.folders.LAYOUTS`, or a degraded image without its
      clean one.
  """
  inputs, truth = folders.resolve(str(folder), None)
  if truth is None:
    layouts = ", ".join(f"{a}/ + {b}/" for a, b in folders.LAYOUTS)
    raise ValueError(f"{folder}: no degraded and clean sub-folders ({layouts})")
  out = []
  for src in sorted(p for p in inputs.iterdir() if p.suffix.lower() in io.IMAGE_SUFFIXES):
    gt = folders.ground_truth(truth, src)
    if gt is None:
      raise ValueError(f"{src}: no clean image of that stem in {truth}")
    out.append((src, gt))
  return out


def _uint8(path: pathlib.Path) -> np.ndarray:
  return np.round(io.read_image(path) * 255.0).astype(np.uint8)


class _PairedSet(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """A test set of (degraded, clean) image pairs read from `<manual_dir>/<name>/`."""

  VERSION = tfds.core.Version("1.0.0")
  RELEASE_NOTES: ClassVar[dict[str, str]] = {
    "1.0.0": "Paired test images read from the manual folder."}
  DESCRIPTION = ""

  @classmethod
  def manual_instructions(cls) -> str:
    return (f"Put the {cls.DESCRIPTION} into <manual_dir>/{cls.name}/ as two sub-folders of "
            "degraded and clean images with matching file stems, e.g. low/ + high/, hazy/ + "
            "gt/ or input/ + gt/.")

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
      description=self.DESCRIPTION,
      features=tfds.features.FeaturesDict({
        "image": tfds.features.Image(shape=(None, None, 3)),
        "gt": tfds.features.Image(shape=(None, None, 3)),
        "name": tfds.features.Text(),
      }),
      supervised_keys=("image", "gt"))

  def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Any]:
    folder = pathlib.Path(str(dl_manager.manual_dir / self.name))
    return {SPLIT: self._generate_examples(folder)}

  def _generate_examples(self, folder: pathlib.Path):
    for src, gt in pairs(folder):
      yield src.name, {"image": _uint8(src), "gt": _uint8(gt), "name": src.name}


def _paired_set(class_name: str, description: str) -> type:
  """A registered `_PairedSet` named after `class_name` (tfds's snake case of it)."""
  cls = type(class_name, (_PairedSet,), {"DESCRIPTION": description, "__module__": __name__})
  cls.MANUAL_DOWNLOAD_INSTRUCTIONS = cls.manual_instructions()
  return cls


Lolv1 = _paired_set("Lolv1", "LOLv1 evaluation pairs (eval15: low/ + high/)")
Lolv2 = _paired_set("Lolv2", "LOLv2 test pairs (Low/ + Normal/)")
Hsts = _paired_set("Hsts", "HSTS synthetic hazy pairs (hazy/ + gt/)")
Kodak24 = _paired_set("Kodak24", "Kodak24 with its noisy inputs (input/ + gt/; inputs made by "
                      "eval.synthesize --spec=kodak24_noise25)")
LolNoise = _paired_set("LolNoise", "LOL+noise pairs (input/ from eval.synthesize "
                       "--spec=lol_noise of LOLv1's low/, gt/ = LOLv1's high/)")
LolHazeNoise = _paired_set("LolHazeNoise", "LOL+haze+noise pairs (input/ from eval.synthesize "
                           "--spec=lol_haze_noise of LOLv1's low/, gt/ = LOLv1's high/)")
BUILDERS = (Lolv1, Lolv2, Hsts, Kodak24, LolNoise, LolHazeNoise)
