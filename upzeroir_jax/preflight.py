"""Checks of a run that need no model, done before any model is loaded.

`check` refuses finished outputs made with other settings (`records.check_resume`), then opens
every input still to restore and decodes it (readable, an image, finite values) and checks
its output (a known image suffix, 16 bits only for PNG, not a folder, in a writable place). A
run whose inputs are all unusable thus fails in seconds; the usable ones go on.

When a job's settings depend on its image (`--task=auto`: the preset of the degradations
identified in it), `check` is given an `inspect` function: every input, finished ones
included, is then read once here and its decoded image handed to `inspect`, which returns
the job to run (e.g. with what was identified in `extra`); the resume check follows, with
each inspected job's own settings.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Sequence
from typing import NamedTuple

import numpy as np

from upzeroir_jax import io, pipeline, records
from upzeroir_jax.jobs import NAME_MAX, Job


class Checked(NamedTuple):
  """`ready`: the jobs to hand to `pipeline.run` (finished ones included: it skips them);
  `failed`: (job name, one-line problem) of the others; `skipped`: names of finished jobs
  left out of `ready` because their input can no longer be inspected."""

  ready: list
  failed: list
  skipped: Sequence[str] = ()


def _writable(folder: pathlib.Path) -> bool:
  """Whether files can be created in `folder`, or in its nearest existing ancestor."""
  folder = folder.absolute()
  while not folder.exists() and folder != folder.parent:
    folder = folder.parent
  return folder.is_dir() and os.access(folder, os.W_OK | os.X_OK)


def output_problem(output: pathlib.Path, bits: int) -> str | None:
  """Why `output` cannot be written with `bits` bits per channel, or None."""
  if output.suffix.lower() not in io.IMAGE_SUFFIXES:
    return f"{output}: unknown image suffix {output.suffix!r}"
  if bits == 16 and output.suffix.lower() != ".png":
    return f"{output}: --bits=16 needs a .png output"
  if len(os.fsencode(output.name)) > NAME_MAX:
    return f"{io.shown(output)}: file name too long (over {NAME_MAX} bytes)"
  if output.is_dir():
    return f"{output}: is a folder, not an image file"
  if not _writable(output.parent):
    return f"{output}: its folder cannot be written (permission denied)"
  return None


def read_input(source: pathlib.Path) -> tuple[np.ndarray | None, str | None]:
  """(image `[H, W, 3]` in [0, 1], None) for a usable input, else (None, why it cannot be
  restored: unreadable, not an image, non-finite values)."""
  try:
    x = io.read_image(source)
    if not np.isfinite(x).all():
      raise io.ImageError(f"{source}: holds NaN or infinite values")
  except pipeline.IMAGE_FAILURES as e:
    return None, pipeline.failure(source, e)
  return x, None


def input_problem(source: pathlib.Path) -> str | None:
  """Why `source` cannot be restored (see `read_input`), or None."""
  return read_input(source)[1]


def check(jobs: Sequence[Job], settings: pipeline.Settings, key: dict | Callable[[Job], dict],
          inspect: Callable[[Job, np.ndarray], Job] | None = None) -> Checked:
  """Splits `jobs` into the ones to run and the ones that cannot be (see the module doc).

  Args:
    jobs: the run's jobs.
    settings: the run's settings (bits, overwrite).
    key: `pipeline.resume_key(...)` of the run, or a function of the (inspected) job giving it.
    inspect: None, or (job, its decoded image `[H, W, 3]`) -> the job to run; then every
      input is read, finished ones included.

  Raises:
    RunError: a finished output was made with other settings (and not `settings.overwrite`).
  """
  if inspect is None:
    records.check_resume(jobs, key, settings.overwrite)
  ready, failed, skipped = [], [], []
  for job in jobs:
    done = not settings.overwrite and records.finished(job.output)
    if done and inspect is None:
      ready.append(job)
      continue
    image, problem = None, (None if done else output_problem(job.output, settings.bits))
    if problem is None:
      image, problem = read_input(job.source)
    if problem is None and inspect is not None:
      job = inspect(job, image)
    if problem is None:
      ready.append(job)
    elif done:
      skipped.append(job.name)
    else:
      failed.append((job.name, problem))
  if inspect is not None:
    records.check_resume(ready, key, settings.overwrite)
  return Checked(ready, failed, skipped)
