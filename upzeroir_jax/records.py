"""What a sidecar records about the files of its job, so that a resumed run trusts only outputs
that are finished and still match their input.

The sidecar's "files" entry holds the input's size, modification time and SHA-256 as read, and
the SHA-256 of the output image written just before the sidecar (`files_record`). An output
counts as finished (`finished`) only when its image and sidecar exist and the image's content is
the one the sidecar names: a sidecar write that failed after a new image replaced the old one
leaves an older sidecar that names another image, so the job is redone. An input whose size or
content differs from the record (`input_change`) was replaced since its output was made.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Any

from upzeroir_jax.jobs import Job, sidecar_path

_CHUNK = 1 << 20


def sha256(path: str | os.PathLike) -> str:
  """Hex SHA-256 of a file's content."""
  digest = hashlib.sha256()
  with open(path, "rb") as f:
    while chunk := f.read(_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def fingerprint(path: str | os.PathLike) -> dict[str, Any]:
  """{"size": bytes, "mtime_ns": modification time, "sha256": hex digest} of a file."""
  st = os.stat(path)
  return {"size": st.st_size, "mtime_ns": st.st_mtime_ns, "sha256": sha256(path)}


def files_record(job: Job) -> dict[str, Any]:
  """The sidecar's "files" entry of a job whose output image has just been written."""
  return {"input": fingerprint(job.source), "output": {"sha256": sha256(job.output)}}


def read_sidecar(output: pathlib.Path) -> dict[str, Any] | None:
  """The sidecar of `output` as a dict, or None when it is missing, unreadable, not JSON (also
  too deeply nested to parse) or not a JSON object."""
  try:
    record = json.loads(sidecar_path(output).read_text(encoding="utf-8"))
  except (OSError, ValueError, RecursionError):
    return None
  return record if isinstance(record, dict) else None


def finished(output: pathlib.Path) -> bool:
  """True when the output image and its sidecar exist and the sidecar names the image's
  content."""
  record = read_sidecar(output) or {}
  files = record.get("files")
  named = files.get("output") if isinstance(files, dict) else None
  try:
    return (isinstance(named, dict) and isinstance(named.get("sha256"), str)
            and named["sha256"] == sha256(output))
  except OSError:
    return False


def input_change(job: Job, record: dict[str, Any] | None) -> str | None:
  """How the job's input differs from the one its sidecar `record` names ("from another version
  of its input (...)"), or None when it has the same content (its modification time may
  differ) or the record names none (such an output is not `finished`, so it is redone)."""
  files = (record or {}).get("files")
  before = files.get("input") if isinstance(files, dict) else None
  if not isinstance(before, dict):
    return None
  try:
    now = fingerprint(job.source)
  except OSError:
    return None  # a missing input is reported when it is read
  if before.get("size") != now["size"]:
    return (f"from another version of its input (size: {before.get('size')!r} there, "
            f"{now['size']} now)")
  if before.get("sha256") != now["sha256"]:
    return "from another version of its input (same size, other content)"
  return None
