"""Which pre-trained weights a run needs, where each comes from, and one error for all missing.

| weights | official download | converted with |
|---|---|---|
| Stable Diffusion 2.1-base (prior) | hub id `stabilityai/stable-diffusion-2-1-base`, fetched on first use | `python -m weights.convert_sd` (optional: then no torch or network) |
| VGG16 (perceptual loss) | https://download.pytorch.org/models/vgg16-397923af.pth | `python -m weights.convert_vgg` |
| ARNIQA + KADID-10k regressor (DQR scorer) | https://github.com/miccunifi/ARNIQA/releases/download/weights/ARNIQA.pth and .../regressor_kadid10k.pth | `python -m weights.convert_arniqa` |

`check` looks at every file a run needs before any model is loaded and raises ONE
`MissingWeightsError` naming all absent ones, each with its download location and converter
command. `load_checked` turns any failure to read a present file (truncated, not a
checkpoint, wrong model) into `CorruptWeightsError` naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import re
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from upzeroir_jax.errors import RunError
from upzeroir_jax.models import weights_check

T = TypeVar("T")

SD_HUB_ID = "stabilityai/stable-diffusion-2-1-base"
SD_URL = f"https://huggingface.co/{SD_HUB_ID}"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
ARNIQA_URL = "https://github.com/miccunifi/ARNIQA/releases/download/weights/ARNIQA.pth"
ARNIQA_REGRESSOR_URL = (
    "https://github.com/miccunifi/ARNIQA/releases/download/weights/regressor_kadid10k.pth")
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class MissingWeightsError(RunError):
  """Weights files a run needs are absent. `details`: one line per missing file."""

  def __init__(self, missing: Sequence[Missing]):
    self.details = [m.describe() for m in missing]
    head = (f"{len(missing)} weights files are missing" if len(missing) > 1
            else "a weights file is missing")
    super().__init__(f"{head}: " + "; ".join(self.details))
    self.headline = f"{head}; download and convert:" if len(missing) > 1 else head


class CorruptWeightsError(RunError):
  """A weights file exists but cannot be read as the checkpoint it should be."""


@dataclasses.dataclass(frozen=True)
class Missing:
  """One absent weights file: what it is, where it was looked for, how to get it."""

  what: str
  path: str
  download: str
  convert: str

  def describe(self) -> str:
    """"<what> not found at <path>: download <url>, then run `<converter>`"."""
    return (f"{self.what} not found at {self.path}: download {self.download}, then run "
            f"`{self.convert}`")


def sd_converter(source: str, output: str = "checkpoints/sd21_base") -> str:
  """The command that converts a diffusers Stable Diffusion (hub id or folder) to our format."""
  return f"python -m weights.convert_sd --source={source} --output={output}"


def is_hub_id(source: str) -> bool:
  """True for `owner/name` that is not a local path."""
  return bool(_HUB_ID.match(source)) and not pathlib.Path(source).expanduser().exists()


def hub_cached(repo_id: str) -> bool:
  """True when the Hugging Face cache holds `repo_id`'s `model_index.json` (no network)."""
  try:
    from huggingface_hub import try_to_load_from_cache
  except ImportError:
    return False
  found = try_to_load_from_cache(repo_id, "model_index.json")
  return isinstance(found, str) and os.path.isfile(found)


def _offline() -> bool:
  return os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes", "on")


def missing(model: str, vgg_path: str, arniqa_dir: str, scorer: str, *,
            smoke_test_model: str = "tiny",
            sd_cached: Callable[[str], bool] | None = None) -> list[Missing]:
  """Every weights file a run with these settings needs and does not find, in one list.

  With the smoke-test model nothing is missing (absent files become random weights). A hub
  id counts as missing only when it is neither in the local Hugging Face cache nor
  downloadable (HF_HUB_OFFLINE set), or when other files are missing anyway (so that one
  message lists everything still to fetch). `sd_cached(repo_id)` says whether the hub cache
  has it (default `hub_cached`).
  """
  if model == smoke_test_model:
    return []
  from upzeroir_jax.models import arniqa, vgg

  out = []
  if not os.path.isfile(vgg_path):
    out.append(Missing("VGG16 weights (perceptual loss)", vgg_path, VGG16_URL,
                       vgg.converter(vgg_path)))
  if scorer == "arniqa":
    absent = [p for p in arniqa.checkpoint_files(arniqa_dir) if not p.is_file()]
    if absent:
      out.append(Missing(
          "ARNIQA weights (DQR scorer; or pass --scorer=niqe or --scorer=none)",
          " and ".join(str(p) for p in absent), f"{ARNIQA_URL} and {ARNIQA_REGRESSOR_URL}",
          arniqa.converter(arniqa_dir)))
  if is_hub_id(model):
    if not (sd_cached or hub_cached)(model) and (out or _offline()):
      out.insert(0, Missing(f"Stable Diffusion {model} (not in the Hugging Face cache"
                            f"{'; HF_HUB_OFFLINE is set' if _offline() else ''})",
                            "the hub cache", f"https://huggingface.co/{model} (fetched on "
                            "first use when online)", sd_converter(model)))
  elif not pathlib.Path(model).expanduser().exists():
    out.insert(0, Missing("Stable Diffusion model", model, SD_URL, sd_converter(SD_HUB_ID)))
  return out


def check(model: str, vgg_path: str, arniqa_dir: str, scorer: str, **kwargs: Any) -> None:
  """Raises `MissingWeightsError` listing every file `missing(...)` reports."""
  absent = missing(model, vgg_path, arniqa_dir, scorer, **kwargs)
  if absent:
    raise MissingWeightsError(absent)


def load_checked(load: Callable[..., T], paths: str | os.PathLike | Sequence[Any], what: str,
                 convert: str) -> T:
  """`load(*paths)`, with any failure to read a present file as one `CorruptWeightsError`.

  Raises:
    CorruptWeightsError: the loader's own `CheckpointError` message where it raised one (it
      names the file, the first bad tensor and the converter), else "<file>: cannot read the
      <what> checkpoint (<reason>); convert it again with `<convert>`".
  """
  paths = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
  try:
    return load(*paths)
  except MemoryError:
    raise
  except weights_check.CheckpointError as e:
    raise CorruptWeightsError(" ".join(str(e).split())) from None
  except Exception as e:  # noqa: BLE001 (any reader error: truncated, bad header, shapes)
    reason = " ".join(str(e).split())[:200] or type(e).__name__
    names = " / ".join(os.fspath(p) for p in paths)
    raise CorruptWeightsError(f"{names}: cannot read the {what} checkpoint ({reason}); "
                              f"convert it again with `{convert}`") from None
