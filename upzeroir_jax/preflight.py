"""Checks of a run that need no model, done before any model is loaded.

`check` refuses finished outputs made with other settings (`pipeline.check_resume`), then opens
every input still to restore and decodes it (readable, an image, finite values) and checks
its output (a known image suffix, 16 bits only for PNG, not a folder, in a writable place). A
run whose inputs are all unusable thus fails in seconds; the usable ones go on.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np

from upzeroir_jax import io, pipeline
from upzeroir_jax.jobs import Job, is_done


class Checked(NamedTuple):
  """`ready`: the jobs to hand to `pipeline.run` (finished ones included: it skips them);
  `failed`: (job name, one-line problem) of the others."""

  ready: list
  failed: list


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
  if output.is_dir():
    return f"{output}: is a folder, not an image file"
  if not _writable(output.parent):
    return f"{output}: its folder cannot be written (permission denied)"
  return None


def input_problem(source: pathlib.Path) -> str | None:
  """Why `source` cannot be restored (unreadable, not an image, non-finite values), or None."""
  try:
    x = io.read_image(source)
    if not np.isfinite(x).all():
      raise io.ImageError(f"{source}: holds NaN or infinite values")
  except pipeline.IMAGE_FAILURES as e:
    return pipeline.failure(source, e)
  return None


def check(jobs: Sequence[Job], settings: pipeline.Settings, key: dict) -> Checked:
  """Splits `jobs` into the ones to run and the ones that cannot be (see the module doc).

  Args:
    jobs: the run's jobs.
    settings: the run's settings (bits, overwrite).
    key: `pipeline.resume_key(...)` of the run.

  Raises:
    RunError: a finished output was made with other settings (and not `settings.overwrite`).
  """
  pipeline.check_resume(jobs, key, settings.overwrite)
  ready, failed = [], []
  for job in jobs:
    if not settings.overwrite and is_done(job):
      ready.append(job)
      continue
    problem = output_problem(job.output, settings.bits) or input_problem(job.source)
    if problem:
      failed.append((job.name, problem))
    else:
      ready.append(job)
  return Checked(ready, failed)
