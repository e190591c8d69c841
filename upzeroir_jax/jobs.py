"""The jobs of a batch run (input file -> output file) and what keeps them safe.

- `output_names`: distinct, deterministic output names for a folder of inputs, also on
  case-insensitive filesystems (`a.png` + `a.jpg`, or `b.JPG` + `b.jpg`, never share one).
- `check_outputs`: no output is an input of the run (same file by device and inode, so symlinks,
  hard links and case-insensitive names are caught), and outputs named by the run never land
  in a folder that holds its inputs.
- `output_lock` / `lock_outputs`: one run at a time per output folder (an exclusive `flock` on
  `.upzeroir.lock`, released by the kernel when the process ends, so a crashed run leaves no
  stale lock; a run that ends, also by Ctrl-C, removes the file).
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import fcntl
import os
import pathlib
from collections.abc import Iterable, Iterator, Sequence

from upzeroir_jax.errors import RunError

LOCK_NAME = ".upzeroir.lock"


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


def sidecar_path(output: pathlib.Path) -> pathlib.Path:
  """The JSON sidecar of an output image: same folder and stem, suffix `.json`."""
  return output.with_suffix(".json")


def is_done(job: Job) -> bool:
  """True when the job's output image and its sidecar both exist."""
  return job.output.is_file() and sidecar_path(job.output).is_file()


def output_names(files: Sequence[pathlib.Path], suffix: str = ".png") -> list[str]:
  """Distinct output file names for `files` (one folder's inputs), in their order.

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
  return [names[i] for i in range(len(files))]


def _identity(path: pathlib.Path) -> tuple[int, int] | None:
  """(device, inode) of an existing path, None when it cannot be reached."""
  try:
    st = path.stat()
  except OSError:
    return None
  return st.st_dev, st.st_ino


def check_outputs(jobs: Sequence[Job], *, named_by_run: bool = True,
                  protected: Sequence[pathlib.Path] = ()) -> None:
  """Refuses a run whose outputs could replace one of its inputs.

  Args:
    jobs: the run's jobs, after folder expansion.
    named_by_run: the outputs' names were derived by the run (folder outputs); then no
      output may be written into a folder that holds an input or a `protected` file, where a
      derived name could replace an original the run did not read (e.g. `a.png` beside an
      input `a.jpg`). An output file the user named explicitly only has to differ from every
      input.
    protected: further files (e.g. ground truth) that count as inputs.

  Raises:
    RunError: one line naming the output and the input it would replace.
  """
  sources = [j.source for j in jobs] + list(protected)
  inputs = {ident: p for p in sources if (ident := _identity(p)) is not None}
  folders = {ident: p.parent for p in sources if (ident := _identity(p.parent)) is not None}
  seen: dict[str, pathlib.Path] = {}
  for job in jobs:
    ident = _identity(job.output)
    if ident is not None and ident in inputs:
      raise RunError(f"the output {job.output} is the input {inputs[ident]}; choose another "
                     "output so that the originals are kept")
    folder = _identity(job.output.parent)
    if named_by_run and folder is not None and folder in folders:
      raise RunError(f"the output folder {job.output.parent} holds the inputs "
                     f"({folders[folder]}); restored files named after them could replace "
                     "originals: choose another output folder")
    key = os.path.normcase(str(job.output.absolute())).casefold()
    if key in seen:
      raise RunError(f"{seen[key]} and {job.source} would both be written to {job.output}")
    seen[key] = job.source


@contextlib.contextmanager
def output_lock(folder: pathlib.Path) -> Iterator[None]:
  """Holds an exclusive lock on the output folder `folder` (created) for the block.

  Raises:
    RunError: another run holds the folder.
  """
  folder.mkdir(parents=True, exist_ok=True)
  path = folder / LOCK_NAME
  fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
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
    yield
  finally:
    if held:
      path.unlink(missing_ok=True)
    os.close(fd)


@contextlib.contextmanager
def lock_outputs(folders: Iterable[pathlib.Path]) -> Iterator[None]:
  """`output_lock` on each of `folders` (in sorted order, so runs cannot deadlock)."""
  with contextlib.ExitStack() as stack:
    for folder in sorted({pathlib.Path(f) for f in folders}):
      stack.enter_context(output_lock(folder))
    yield
