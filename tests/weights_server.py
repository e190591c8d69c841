"""A local stand-in for the weights' hosts on 127.0.0.1, for the weights.fetch tests.

Serves plain files at `/files/<name>` and hub repositories at the route huggingface_hub reads
(HEAD and GET `/<owner>/<name>/resolve/<revision>/<path>`), answering as the hub does: the
commit in `X-Repo-Commit`, the ETag (sha256 for weights files, which the hub keeps in LFS, with
`X-Linked-Etag` / `X-Linked-Size`; the git blob sha1 for the others), and on 404 the
`X-Error-Code` (`EntryNotFound`, `RepoNotFound`) huggingface_hub maps to its errors. `Range:
bytes=N-` gets 206 and the rest of the file. Faults on demand, by file key (`<name>` of a plain
file, `<owner>/<repo>/<path>` of a hub file): a key in `truncate` is sent with its full length
announced but only half its bytes, once; `instead[key]` is sent in place of the file while the
headers keep the original's hash. `log` records (method, path, Range) of every request.
"""

import hashlib
import http.server
import threading
import urllib.parse

COMMIT = "0123456789abcdef0123456789abcdef01234567"
_LFS = (".safetensors", ".bin", ".pth", ".ckpt")


def etag(path: str, data: bytes) -> str:
  """The hub's ETag of a file: sha256 for LFS files, the git blob sha1 otherwise."""
  if path.endswith(_LFS):
    return hashlib.sha256(data).hexdigest()
  return hashlib.sha1(b"blob %d\0" % len(data) + data).hexdigest()


class Server:
  """The server on a free port of 127.0.0.1 (`url`), answering between `start` and `stop`."""

  def __init__(self):
    self.files: dict[str, bytes] = {}
    self.repos: dict[str, dict[str, bytes]] = {}
    self.truncate: set[str] = set()
    self.instead: dict[str, bytes] = {}
    self.log: list[tuple[str, str, str | None]] = []
    self._httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
    self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}"

  def start(self) -> None:
    threading.Thread(target=self._httpd.serve_forever, daemon=True).start()

  def stop(self) -> None:
    self._httpd.shutdown()
    self._httpd.server_close()

  def _find(self, path: str) -> tuple[str, int, bytes, dict[str, str]]:
    """(file key, status, body, headers) for a GET of `path` before ranges and faults."""
    parts = urllib.parse.unquote(path).lstrip("/").split("/")
    if parts[0] == "files" and len(parts) == 2 and parts[1] in self.files:
      return parts[1], 200, self.files[parts[1]], {}
    if len(parts) >= 5 and parts[2] == "resolve":
      repo, name = "/".join(parts[:2]), "/".join(parts[4:])
      if repo not in self.repos:
        return "", 404, b"", {"X-Error-Code": "RepoNotFound"}
      if name not in self.repos[repo]:
        return "", 404, b"", {"X-Error-Code": "EntryNotFound", "X-Repo-Commit": COMMIT}
      data = self.repos[repo][name]
      headers = {"X-Repo-Commit": COMMIT, "ETag": f'"{etag(name, data)}"'}
      if name.endswith(_LFS):
        headers.update({"X-Linked-Etag": headers["ETag"], "X-Linked-Size": str(len(data))})
      return f"{repo}/{name}", 200, data, headers
    return "", 404, b"", {}

  def _handler(self) -> type:
    server = self

    class Handler(http.server.BaseHTTPRequestHandler):
      protocol_version = "HTTP/1.1"

      def log_message(self, *args) -> None:
        del args

      def do_HEAD(self) -> None:
        self._answer(body=False)

      def do_GET(self) -> None:
        self._answer(body=True)

      def _answer(self, body: bool) -> None:
        server.log.append((self.command, self.path, self.headers.get("Range")))
        key, status, data, headers = server._find(self.path)
        data = server.instead.get(key, data) if body else data
        start = 0
        spec = self.headers.get("Range", "")
        if status == 200 and spec.startswith("bytes=") and spec.endswith("-"):
          start = int(spec[6:-1])
          status = 206
          headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
        send = data[start:]
        cut = body and key in server.truncate
        if cut:
          server.truncate.discard(key)
          self.close_connection = True
        self.send_response(status)
        for key, value in headers.items():
          self.send_header(key, value)
        self.send_header("Content-Length", str(len(send)))
        self.end_headers()
        if body:
          self.wfile.write(send[:len(send) // 2] if cut else send)

    return Handler
