"""The jobs of a batch run (input file -> output file) and what keeps them safe.

- `output_names`: distinct, deterministic output names for a folder of inputs, also on
  case-insensitive filesystems (`a.png` + `a.jpg`, or `b.JPG` + `b.jpg`, never share one).
- `check_outputs`: no output is an input of the run (same file by device and inode, so symlinks,
  hard links and case-insensitive names are caught), and outputs named by the run never land
  in a folder that holds its inputs.
- `output_lock` / `lock_outputs`: one run at a time per output folder (an exclusive `flock` on
  `.upzeroir.lock`, released by the kernel when the process ends, so a crashed run leaves no
  stale lock; a run that ends, also by Ctrl-C, removes the file). The holder removes the
  temporary files a killed run left (`.tmp*.part`, `io.atomic`), and a folder the run created
  is removed again when it ends empty.
- `fit_name`: derived names (outputs, sidecars) fit the filesystem's name limit.
- `list_images`: a folder's image files; other kinds of file with an image suffix (FIFOs,
  devices, dangling links) are reported, not read.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import hashlib
import os
import pathlib
import re
from collections.abc import Iterable, Iterator, Sequence

from upzeroir_jax import io
from upzeroir_jax.errors import RunError

LOCK_NAME = ".upzeroir.lock"
NAME_MAX = 255  # bytes in one file name on common filesystems (ext4, XFS, btrfs, APFS, NTFS)
# The temporary files of `io.atomic.write` (`tempfile.mkstemp(prefix=".tmp", suffix=".part")`).
_TEMPORARY = re.compile(r"\.tmp[a-z0-9_]{8}\.part")


@dataclasses.dataclass(frozen=True)
class Job:
  """One image to restore.

  Attributes:
    name: stable identifier (the input's file name); seeds the PRNG key.
    source: the input image file.
    output: the restored image file (format from its suffix); the sidecar sits beside it.
    prompt: text prompt ("" for none).
    extra: further entries for the sidecar (e.g. the ground-truth path).
  """

  name: str
  source: pathlib.Path
  output: pathlib.Path
  prompt: str = ""
  extra: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)


def fit_name(name: str, limit: int = NAME_MAX) -> str:
  """`name` when it has at most `limit` bytes, else its stem cut short and followed by `~` and
  12 hex digits of the SHA-256 of the whole name, then its suffix (`limit` bytes at most)."""
  raw = os.fsencode(name)
  if len(raw) <= limit:
    return name
  stem, suffix = os.path.splitext(raw)
  tag = b"~" + hashlib.sha256(raw).hexdigest()[:12].encode()
  cut = _whole_characters(stem[:max(0, limit - len(tag) - len(suffix))])
  return os.fsdecode(cut + tag + suffix)


def _whole_characters(raw: bytes) -> bytes:
  """`raw` without a UTF-8 character cut short at its end (the lead byte of the last
  character says how many bytes it needs)."""
  for back in range(1, min(4, len(raw)) + 1):
    lead = raw[-back]
    if lead & 0xC0 != 0x80:  # not a continuation byte
      need = 4 if lead >= 0xF0 else 3 if lead >= 0xE0 else 2 if lead >= 0xC0 else 1
      return raw[:-back] if need > back else raw
  return raw


def sidecar_path(output: pathlib.Path) -> pathlib.Path:
  """The JSON sidecar of an output image: same folder and stem, suffix `.json` (`fit_name`)."""
  return output.with_name(fit_name(f"{output.stem}.json"))


def is_done(job: Job) -> bool:
  """True when the job's output image and its sidecar both exist (`records.finished` also
  checks that they belong together)."""
  try:
    return job.output.is_file() and sidecar_path(job.output).is_file()
  except OSError:
    return False


def list_images(folder: pathlib.Path, flag: str) -> tuple[list[pathlib.Path], list[str]]:
  """(the image files of `folder`, sorted; one line for each entry with an image suffix that
  is not a regular file and is left out). Hidden files are ignored; not recursive.

  Raises:
    RunError: the folder cannot be listed (`flag` names it, e.g. "--input=photos").
  """
  try:
    entries = sorted(p for p in folder.iterdir() if not p.name.startswith(".")
                     and p.suffix.lower() in io.IMAGE_SUFFIXES)
  except OSError as e:
    raise RunError(f"{flag}: cannot list this folder ({e.strerror or e})") from None
  files, skipped = [], []
  for p in entries:
    try:
      kind = io.kind_of(p.stat().st_mode)
    except OSError as e:
      kind = "a dangling link" if p.is_symlink() else f"unreadable ({e.strerror or e})"
    if kind is None:
      files.append(p)
    elif kind != "a directory":
      skipped.append(f"{io.shown(p)}: is {kind}, not a regular file; skipped")
  return files, skipped


def output_names(files: Sequence[pathlib.Path], suffix: str = ".png") -> list[str]:
  """Distinct output file names for `files` (one folder's inputs), in their order.

  Names longer than the filesystem allows are shortened (`fit_name`).

  A file whose stem no other file shares (ignoring case) keeps it: `<stem><suffix>`. Files
  that share a stem get `<stem>_<their suffix, lower case><suffix>`, numbered `_2`, `_3`, ...
  in the order of their names where that still collides. All names differ ignoring case, and
  they depend only on the set of file names.
  """
  stems = collections.Counter(f.stem.casefold() for f in files)
  names: dict[int, str] = {}
  for i, f in enumerate(files):
    if stems[f.stem.casefold()] == 1:
      names[i] = f"{f.stem}{suffix}"
  taken = {n.casefold() for n in names.values()}
  for i in sorted((i for i in range(len(files)) if i not in names), key=lambda i: files[i].name):
    base = f"{files[i].stem}_{files[i].suffix.lstrip('.').lower()}"
    name, n = f"{base}{suffix}", 1
    while name.casefold() in taken:
      n += 1
      name = f"{base}_{n}{suffix}"
    taken.add(name.casefold())
    names[i] = name
  return [fit_name(names[i]) for i in range(len(files))]


def _identity(path: pathlib.Path) -> tuple[int, int] | None:
  """(device, inode) of an existing path, None when it cannot be reached."""
  try:
    st = path.stat()
  except OSError:
    return None
  return st.st_dev, st.st_ino


def check_outputs(jobs: Sequence[Job], *, named_by_run: bool = True,
                  protected: Sequence[pathlib.Path] = (),
                  written: Sequence[pathlib.Path] = ()) -> None:
  """Refuses a run that could write over one of its inputs.

  Every file the run writes is checked: each output image, its sidecar and the `written`
  files (reports such as eval.run's run.json). Temporary files cannot replace anything
  (`io.atomic` creates them under fresh names), but an input named like one in an output
  folder is refused, since `output_lock` removes those.

  Args:
    jobs: the run's jobs, after folder expansion.
    named_by_run: the outputs' names were derived by the run (folder outputs); then no
      output may be written into a folder that holds an input or a `protected` file, where a
      derived name could replace an original the run did not read (e.g. `a.png` beside an
      input `a.jpg`). An output file the user named explicitly only has to differ from every
      input.
    protected: further files (e.g. ground truth) that count as inputs.
    written: further files the run writes.

  Raises:
    RunError: one line naming the file written and the input it would replace.
  """
  sources = [j.source for j in jobs] + list(protected)
  inputs = {ident: p for p in sources if (ident := _identity(p)) is not None}
  folders = {ident: p.parent for p in sources if (ident := _identity(p.parent)) is not None}
  out_folders = {ident for j in jobs if (ident := _identity(j.output.parent)) is not None}
  for p in sources:
    if _TEMPORARY.fullmatch(p.name) and _identity(p.parent) in out_folders:
      raise RunError(f"the input {io.shown(p)} is named like a temporary file of an unfinished "
                     "write, which the run removes from its output folder; rename or move it")
  for path in [*(sidecar_path(j.output) for j in jobs), *written]:
    ident = _identity(path)
    if ident is not None and ident in inputs:
      raise RunError(f"{io.shown(path)}, written by this run, is the input "
                     f"{io.shown(inputs[ident])}; choose another output so that the originals "
                     "are kept")
  seen: dict[str, pathlib.Path] = {}
  for job in jobs:
    ident = _identity(job.output)
    if ident is not None and ident in inputs:
      raise RunError(f"the output {io.shown(job.output)} is the input "
                     f"{io.shown(inputs[ident])}; choose another output so that the originals "
                     "are kept")
    folder = _identity(job.output.parent)
    if named_by_run and folder is not None and folder in folders:
      raise RunError(f"the output folder {job.output.parent} holds the inputs "
                     f"({folders[folder]}); restored files named after them could replace "
                     "originals: choose another output folder")
    key = os.path.normcase(str(job.output.absolute())).casefold()
    if key in seen:
      raise RunError(f"{io.shown(seen[key])} and {io.shown(job.source)} would both be written "
                     f"to {io.shown(job.output)}")
    seen[key] = job.source


def _make_folder(folder: pathlib.Path) -> pathlib.Path | None:
  """Creates `folder` (and its parents); returns the topmost folder created, or None.

  Raises:
    RunError: it cannot be created, or a file or dangling link stands in its place.
  """
  missing = [f for f in (folder, *folder.parents) if not os.path.lexists(f)]
  try:
    folder.mkdir(parents=True, exist_ok=True)
  except OSError as e:
    what = ("is a file or a dangling link, not a folder"
            if isinstance(e, (FileExistsError, NotADirectoryError))
            else f"cannot be created ({e.strerror or e})")
    raise RunError(f"the output folder {folder} {what}; choose another output") from None
  return missing[-1] if missing else None


def _remove_temporaries(folder: pathlib.Path) -> None:
  """Removes the temporary files of writes that a killed run left in `folder`."""
  for entry in os.scandir(folder):
    if _TEMPORARY.fullmatch(entry.name) and entry.is_file(follow_symlinks=False):
      os.unlink(entry.path)


def _remove_if_empty(created: pathlib.Path | None, folder: pathlib.Path) -> None:
  """Removes `folder` and its parents up to `created` (the folders a run made) while empty."""
  if created is None:
    return
  for f in (folder, *folder.parents):
    try:
      f.rmdir()
    except OSError:
      return
    if f == created:
      return


@contextlib.contextmanager
def output_lock(folder: pathlib.Path) -> Iterator[None]:
  """Holds an exclusive lock on the output folder `folder` (created) for the block.

  Raises:
    RunError: another run holds the folder, or it cannot be created or written.
  """
  created = _make_folder(folder)
  path = folder / LOCK_NAME
  try:
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
  except OSError as e:
    _remove_if_empty(created, folder)
    raise RunError(f"the output folder {folder} cannot be written ({e.strerror or e}); "
                   "choose another output") from None
  held = False
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      # The holder removes the file when it ends: a lock on a file no longer at `path` is stale.
      held = os.path.samestat(os.fstat(fd), os.stat(path, follow_symlinks=False))
    except (BlockingIOError, FileNotFoundError):
      pass
    if not held:
      raise RunError(f"another run is writing to {folder} (it holds {path}); wait for it to "
                     "finish or choose another output")
    _remove_temporaries(folder)
    yield
  finally:
    if held:
      path.unlink(missing_ok=True)
    os.close(fd)
    if held:
      _remove_if_empty(created, folder)




@contextlib.contextmanager
def lock_outputs(folders: Iterable[pathlib.Path]) -> Iterator[None]:
  """`output_lock` on each of `folders` (in sorted order, so runs cannot deadlock)."""
  with contextlib.ExitStack() as stack:
    for folder in sorted({pathlib.Path(f) for f in folders}):
      stack.enter_context(output_lock(folder))
    yield
