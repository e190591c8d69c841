"""Files that appear whole or not at all, written through a private temporary file.

The temporary file is created by `tempfile.mkstemp` in the target's folder (a fresh name opened
with O_CREAT | O_EXCL, mode 0600, so a planted file or symlink is never followed or
overwritten), filled, flushed, then renamed over the target (`os.replace`, atomic on one
filesystem). Its name is short and fixed-length, so any target name the filesystem allows
works. On any failure it is removed and the error names the target, not the temporary file.
"""

import json
import math
import os
import pathlib
import tempfile
from collections.abc import Callable
from typing import Any, BinaryIO

PathLike = str | os.PathLike


class WriteError(OSError):
  """A file that could not be written; the message is one line naming the target."""


def write(path: PathLike, fill: Callable[[BinaryIO], None]) -> None:
  """Writes `path` atomically: `fill(f)` writes the content to an open binary file `f`.

  Parent folders are created. The final file gets the permissions a plain `open` would give.

  Raises:
    WriteError: the folder or file cannot be written (the target is named).
    Whatever `fill` raises for bad content (after removing the temporary file).
  """
  target = pathlib.Path(path)
  try:
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp", suffix=".part", dir=target.parent)
  except OSError as e:
    raise WriteError(f"{target}: cannot write ({e.strerror or e})") from None
  try:
    with os.fdopen(fd, "wb") as f:
      fill(f)
      f.flush()
      os.fsync(f.fileno())
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)
    os.replace(tmp, target)
  except OSError as e:
    raise WriteError(f"{target}: cannot write ({e.strerror or e})") from None
  finally:
    if os.path.lexists(tmp):
      os.unlink(tmp)


def _strict(value: Any) -> Any:
  """`value` with every non-finite float replaced by None (JSON null)."""
  if isinstance(value, float):
    return value if math.isfinite(value) else None
  if isinstance(value, dict):
    return {k: _strict(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [_strict(v) for v in value]
  return value


def write_json(path: PathLike, record: Any) -> None:
  """Writes `record` as strict JSON (NaN and ±inf become null), atomically (see `write`)."""
  text = json.dumps(_strict(record), indent=2, sort_keys=True, allow_nan=False) + "\n"
  write(path, lambda f: f.write(text.encode("utf-8")))
