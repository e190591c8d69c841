"""What a sidecar records about the files of its job, so that a resumed run trusts only outputs
that are finished and still match their input.

The sidecar's "files" entry holds the input's size, modification time and SHA-256 as read, and
the SHA-256 of the output image written just before the sidecar (`files_record`). An output
counts as finished (`finished`) only when its image and sidecar exist and the image's content is
the one the sidecar names: a sidecar write that failed after a new image replaced the old one
leaves an older sidecar that names another image, so the job is redone. An input whose size or
content differs from the record (`input_change`) was replaced since its output was made.
`check_resume` refuses to keep such outputs, and outputs made with other settings.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from collections.abc import Callable, Sequence
from typing import Any

from upzeroir_jax import io
from upzeroir_jax.errors import RunError
from upzeroir_jax.jobs import Job, is_done, sidecar_path

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


def note_output(output: pathlib.Path) -> None:
  """Records in the sidecar of `output` the content the image has now (after a step that
  changes a finished image in place, e.g. a final resize); the sidecar is rewritten atomically.

  Raises:
    io.WriteError: the sidecar cannot be written.
  """
  record = read_sidecar(output) or {}
  files = record.get("files") if isinstance(record.get("files"), dict) else {}
  io.write_json(sidecar_path(output),
                {**record, "files": {**files, "output": {"sha256": sha256(output)}}})


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


def _differences(before: Any, now: dict, prefix: str = "") -> str:
  """The entries that differ, "name: old there, new now" (nested records as "config.task")."""
  if not isinstance(before, dict):
    return "it has no settings record"
  out = []
  for k in sorted(set(before) | set(now)):
    old, new = before.get(k), now.get(k)
    if isinstance(old, dict) and isinstance(new, dict):
      out += [_differences(old, new, f"{prefix}{k}.")] if old != new else []
    elif old != new:
      out.append(f"{prefix}{k}: {old!r} there, {new!r} now")
  return "; ".join(out)


def check_resume(jobs: Sequence[Job], key: dict | Callable[[Job], dict],
                 overwrite: bool) -> None:
  """Refuses to keep a finished output (image and sidecar present) made with other settings
  or from another input (`records.input_change`: the input was replaced since).

  `key`: the run's `resume_key`, or a function of the job giving it (per-image configs).

  Raises:
    RunError: one line naming the first such output and what differs; `overwrite` redoes them.
  """
  if overwrite:
    return
  for job in jobs:
    if not is_done(job):
      continue
    record = read_sidecar(job.output)
    before = (record or {}).get("settings")
    now = key(job) if callable(key) else key
    change = (f"with other settings ({_differences(before, now)})" if before != now else
              input_change(job, record))
    if change:
      raise RunError(f"{io.shown(job.output)} was restored {change}; pass --overwrite "
                     "to redo such outputs, or choose another output")
