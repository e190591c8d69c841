"""Plain HTTP(S) downloads for weights.fetch: resumable, with a progress bar, one-line errors.

A file is written to `<name>.part` beside its destination and renamed when complete. A `.part`
left by an interrupted run is resumed with an HTTP `Range` request (a server that ignores it
sends the whole file, which then replaces the part). Every failure is one `FetchError` line
naming the file, the URL and the option that changes where the file comes from.
"""

import dataclasses
import http.client
import os
import pathlib
import urllib.error
import urllib.request

from tqdm import tqdm

from upzeroir_jax.errors import RunError

_CHUNK = 1 << 20
TIMEOUT_S = 60


class FetchError(RunError):
  """A weights file could not be fetched or checked; the message is one line."""


@dataclasses.dataclass(frozen=True)
class Remote:
  """A file to fetch: its name (as shown and stored), its URL, and the option that moves it."""

  name: str
  url: str
  option: str

  def error(self, problem: str, advice: str = "") -> FetchError:
    """"<name>: <problem> (<url>); [<advice>, or] <option>"."""
    return FetchError(f"{self.name}: {problem} ({self.url}); {advice}{self.option}")


def _open(remote: Remote, offset: int) -> http.client.HTTPResponse:
  headers = {"Range": f"bytes={offset}-"} if offset else {}
  request = urllib.request.Request(remote.url, headers=headers)
  try:
    return urllib.request.urlopen(request, timeout=TIMEOUT_S)
  except urllib.error.HTTPError as e:
    raise remote.error(f"HTTP {e.code} {e.reason}") from None
  except (urllib.error.URLError, OSError, ValueError) as e:
    reason = getattr(e, "reason", None) or e
    if isinstance(reason, FileNotFoundError):  # a file:// URL
      raise remote.error("no such file") from None
    raise remote.error(f"cannot connect ({reason})", "check the network, ") from None


def probe(remote: Remote) -> None:
  """Returns once the server at `remote.url` answers a HEAD request, with any status.

  Raises:
    FetchError: no connection (refused, unknown host, timeout), in one line at once.
  """
  try:
    urllib.request.urlopen(urllib.request.Request(remote.url, method="HEAD"), timeout=TIMEOUT_S)
  except urllib.error.HTTPError:
    return
  except (urllib.error.URLError, OSError, ValueError) as e:
    reason = getattr(e, "reason", None) or e
    raise remote.error(f"cannot connect ({reason})", "check the network, ") from None


def download(remote: Remote, dest: str | os.PathLike) -> None:
  """Fetches `remote` to `dest`, resuming a `.part` file left by an earlier run.

  Raises:
    FetchError: HTTP error (404 …), refused or failed connection, or a transfer that stopped
      before the length the server announced (the `.part` file is kept for the next run).
  """
  dest = pathlib.Path(dest)
  part = dest.with_name(dest.name + ".part")
  offset = part.stat().st_size if part.is_file() else 0
  try:
    response = _open(remote, offset)
  except FetchError:
    if not offset:
      raise
    part.unlink()  # e.g. 416: the part is not a prefix of the file any more; start afresh.
    offset, response = 0, _open(remote, 0)
  with response:
    if getattr(response, "status", None) != 206:
      offset = 0
    length = response.headers.get("Content-Length")
    total = offset + int(length) if length is not None else None
    dest.parent.mkdir(parents=True, exist_ok=True)
    with open(part, "ab" if offset else "wb") as f, tqdm(
        total=total, initial=offset, desc=remote.name, unit="B", unit_scale=True,
        unit_divisor=1024, disable=None, leave=False) as bar:
      try:
        while block := response.read(_CHUNK):
          f.write(block)
          bar.update(len(block))
      except (OSError, http.client.HTTPException):
        pass  # a broken transfer: reported below as stopped early, resumed next run.
  size = part.stat().st_size
  if total is not None and size != total:
    raise remote.error(f"the download stopped after {size} of {total} bytes",
                       "run the same command again to resume, ")
  os.replace(part, dest)
