"""`manifest.json` of a weights folder: the sha256 of every file weights.fetch wrote.

Layout: `{"format": "upzeroir-weights", "version": 1, "files": {path: entry}}` with `path`
relative to the folder and each entry `{"sha256", "bytes"}` plus where the file came from: `url`
and `checked` (the published hash it matched: "sha256", "git-sha1", "sha256 prefix" or "none
published") for a download, `made_by` (the converter step) and `from` (its inputs) for a
converted file. The manifest is rewritten atomically after every step, so an interrupted
fetch keeps what it finished.
"""

import dataclasses
import hashlib
import json
import os
import pathlib
from typing import Any

from upzeroir_jax import io
from upzeroir_jax.records import sha256

NAME = "manifest.json"
FORMAT = "upzeroir-weights"
_BLOCK = 1 << 22


def git_sha1(path: str | os.PathLike) -> str:
  """The git blob hash of a file (`git hash-object`), hex: sha1 of "blob <size>\\0" + content."""
  digest = hashlib.sha1(f"blob {os.path.getsize(path)}\0".encode())
  with open(path, "rb") as f:
    while block := f.read(_BLOCK):
      digest.update(block)
  return digest.hexdigest()


@dataclasses.dataclass
class Manifest:
  """The manifest of `folder`; `files` maps relative paths to their entries."""

  folder: pathlib.Path
  files: dict[str, dict[str, Any]]

  @classmethod
  def read(cls, folder: str | os.PathLike) -> "Manifest":
    """The folder's manifest; empty where there is none or it is unreadable (then every file
    is checked again from its source)."""
    folder = pathlib.Path(folder)
    try:
      data = json.loads((folder / NAME).read_text())
      files = data["files"] if data.get("format") == FORMAT else {}
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
      files = {}
    return cls(folder, dict(files) if isinstance(files, dict) else {})

  def relative(self, path: str | os.PathLike) -> str:
    return pathlib.Path(path).relative_to(self.folder).as_posix()

  def matches(self, path: str | os.PathLike) -> bool:
    """True when `path` exists with the size and sha256 its entry records."""
    entry = self.files.get(self.relative(path))
    path = pathlib.Path(path)
    return (entry is not None and path.is_file() and path.stat().st_size == entry.get("bytes")
            and sha256(path) == entry.get("sha256"))

  def record(self, path: str | os.PathLike, digest: str | None = None, **about: Any) -> None:
    """Records `path` (its size, its sha256 unless given) with `about`, and saves."""
    path = pathlib.Path(path)
    self.files[self.relative(path)] = {"sha256": digest or sha256(path),
                                       "bytes": path.stat().st_size, **about}
    self.save()

  def outputs(self, step: str) -> list[str]:
    """The recorded files that converter step `step` wrote."""
    return sorted(k for k, v in self.files.items() if v.get("made_by") == step)

  def forget(self, paths: list[str]) -> None:
    for path in paths:
      self.files.pop(path, None)

  def save(self) -> None:
    """Writes the manifest atomically (`io.write_json`)."""
    io.write_json(self.folder / NAME, {"format": FORMAT, "version": 1, "files": self.files})
