"""The Stable Diffusion files weights.fetch takes from the Hugging Face hub (`huggingface_hub`).

Only the files the converter reads: each network's `config.json` and weights (safetensors
where the repository has them, else PyTorch `.bin`), the tokenizer's four files and the
scheduler config. Each is checked against the hash the hub publishes for it (its ETag: the
sha256 of a large file, the git blob sha1 of a small one) before it is used. The endpoint is
`HF_ENDPOINT` as set when the fetch runs (default https://huggingface.co).
"""

import os
import pathlib
import re
from collections.abc import Callable

from weights import _download, _manifest

CONFIGS = ("unet/config.json", "vae/config.json", "text_encoder/config.json",
           "scheduler/scheduler_config.json", "tokenizer/merges.txt",
           "tokenizer/special_tokens_map.json", "tokenizer/tokenizer_config.json",
           "tokenizer/vocab.json")
# Per network: the weights file names, preferred first (diffusers' and transformers' names).
WEIGHTS = {
  "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
  "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
  "text_encoder": ("model.safetensors", "pytorch_model.bin"),
}
OPTION = "pass --hub_id=OWNER/NAME (another copy of SD 2.1-base) or set HF_ENDPOINT"
_SHA256 = re.compile(r"[0-9a-f]{64}")
_SHA1 = re.compile(r"[0-9a-f]{40}")


def endpoint() -> str:
  """The hub's address: `HF_ENDPOINT` now, else https://huggingface.co."""
  return os.environ.get("HF_ENDPOINT", "").rstrip("/") or "https://huggingface.co"


def published_check(etag: str | None) -> tuple[str, Callable[[pathlib.Path], str]] | None:
  """(name, hash function) of the hash an ETag publishes, or None where it is neither."""
  etag = (etag or "").lower()
  if _SHA256.fullmatch(etag):
    return "sha256", _manifest.sha256
  if _SHA1.fullmatch(etag):
    return "git-sha1", _manifest.git_sha1
  return None


def _status(error: Exception) -> int | None:
  return getattr(getattr(error, "response", None), "status_code", None)


def _metadata(repo_id: str, filename: str, revision: str) -> tuple[_download.Remote, object]:
  """The file's Remote and hub metadata (etag, commit hash); 404 -> `FileNotFoundError`."""
  import huggingface_hub

  url = huggingface_hub.hf_hub_url(repo_id, filename, revision=revision, endpoint=endpoint())
  remote = _download.Remote(filename, url, OPTION)
  try:
    return remote, huggingface_hub.get_hf_file_metadata(url)
  except Exception as e:  # noqa: BLE001 (requests' or httpx's transport errors, hub errors)
    if _status(e) == 404:
      raise FileNotFoundError(url) from None
    status = _status(e)
    problem = f"HTTP {status}" if status else f"cannot connect ({_reason(e)})"
    raise remote.error(problem, "" if status else "check the network, ") from None


def _reason(error: Exception) -> str:
  return " ".join(str(error).split())[:160] or type(error).__name__


def fetch_file(repo_id: str, filename: str, folder: pathlib.Path, revision: str,
               manifest: _manifest.Manifest) -> None:
  """Downloads one file of `repo_id` to `folder/filename` unless it is there and checks out.

  A file the manifest records with its current sha256 is kept without asking the hub; any
  other present file is kept only when it matches the hash the hub publishes.

  Raises:
    FileNotFoundError: the repository has no such file (HTTP 404).
    FetchError: the hub is unreachable, answers with another error, the transfer stops early,
      or the file does not match its published hash (the file is then removed).
  """
  import huggingface_hub

  dest = folder / filename
  if manifest.matches(dest):
    return
  remote, meta = _metadata(repo_id, filename, revision)
  check = published_check(meta.etag)
  if not (check and dest.is_file() and check[1](dest) == meta.etag.lower()):
    dest.unlink(missing_ok=True)
    try:
      huggingface_hub.hf_hub_download(repo_id, filename, revision=meta.commit_hash or revision,
                                      local_dir=folder, endpoint=endpoint())
    except Exception as e:  # noqa: BLE001 (transport errors of either HTTP library)
      raise remote.error(f"the download failed ({_reason(e)})",
                         "run the same command again to resume, ") from None
    got = check[1](dest) if check else None
    if check and got != meta.etag.lower():
      dest.unlink()
      raise remote.error(f"{check[0]} {got} differs from the published {meta.etag}; the file "
                         "was removed", "run the same command again, or ")
  manifest.record(dest, url=remote.url, checked=check[0] if check else "none published",
                  commit=meta.commit_hash)


def fetch(repo_id: str, folder: pathlib.Path, manifest: _manifest.Manifest,
          revision: str = "main") -> None:
  """Fetches every file the converter reads into `folder` (a diffusers layout).

  Raises:
    FetchError: as `fetch_file`; a file absent from the repository names the first name
      tried (for a network, its safetensors weights).
  """
  import huggingface_hub

  alternatives = [(name,) for name in CONFIGS] + [
      tuple(f"{part}/{name}" for name in names) for part, names in WEIGHTS.items()]
  if not all(any(manifest.matches(folder / n) for n in names) for names in alternatives):
    # Fail at once where nothing answers (huggingface_hub retries for about half a minute).
    url = huggingface_hub.hf_hub_url(repo_id, CONFIGS[0], revision=revision, endpoint=endpoint())
    _download.probe(_download.Remote(CONFIGS[0], url, OPTION))
  for choices in alternatives:
    for filename in choices:
      try:
        fetch_file(repo_id, filename, folder, revision, manifest)
        break
      except FileNotFoundError:
        continue
    else:
      url = huggingface_hub.hf_hub_url(repo_id, choices[0], revision=revision,
                                       endpoint=endpoint())
      raise _download.Remote(choices[0], url, OPTION).error("not found (HTTP 404)")
