"""One image of a run: its key, its reading onto the model grid, and its output image and
JSON sidecar (written atomically, the sidecar last; docs/usage.md). Shared by the run's two
engines (`pipeline`: the driver on one device, `lockstep`: sharded batches on several).

`ctx` is the run's context (`pipeline`'s): `settings`, `loaded`, `configs`, `key_of`,
`common` (sidecar entries of every image) and `summary`.
"""

from __future__ import annotations

import dataclasses
import pathlib
import zlib
from typing import Any

import jax
import numpy as np

from upzeroir_jax import io, records, sampling_summary
from upzeroir_jax.io import upsample
from upzeroir_jax.jobs import Job, sidecar_path
from upzeroir_jax.sampler import state as state_lib

IMAGE_FAILURES = (io.ImageError, OSError, ValueError)


def image_key(seed: int, name: str) -> np.ndarray:
  """uint32 `[2]` PRNG key of one image: `fold_in(PRNGKey(seed), crc32(name))`, the CRC of the
  name's bytes as the filesystem holds them (also when they are not UTF-8)."""
  raw = name.encode("utf-8", "surrogateescape")
  key = jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(raw) & 0x7FFFFFFF)
  return np.asarray(key)


def failure(path: pathlib.Path, error: Exception) -> str:
  """One line naming the file for a per-image failure (an `ImageError` or `io.WriteError`
  names it already)."""
  if isinstance(error, (io.ImageError, io.WriteError)):
    return " ".join(str(error).split())
  if isinstance(error, OSError) and error.strerror:
    return f"{io.shown(path)}: {error.strerror}"
  return f"{io.shown(path)}: {' '.join(str(error).split()) or type(error).__name__}"


def read_one(ctx: Any, job: Job, shape: tuple[int, int]) -> tuple[np.ndarray, io.GridMeta]:
  """One input on the model grid of `shape`, and how to bring the output back."""
  s = ctx.settings
  grid, meta = io.to_model_grid(io.read_image(job.source), s.size, s.grid, ctx.loaded.multiple)
  if grid.shape[:2] != shape:
    raise io.ImageError(f"{job.source}: size changed while the run was going on")
  return grid, meta


def write(ctx: Any, job: Job, shape: tuple[int, int], meta: io.GridMeta, image: np.ndarray,
           info: dict, timings: dict) -> bool:
  """Writes one restored image and then its sidecar; a failure is recorded, not raised.
  Returns whether the image was restored and written."""
  config = ctx.configs(job)
  sidecar = {
    **ctx.common, "task": config.task, "config": dataclasses.asdict(config),
    "settings": ctx.key_of(job), "name": job.name, "input": str(job.source),
    "output": str(job.output),
    "prompt": job.prompt, **job.extra,
    "grid": {"mode": ctx.settings.grid, "shape": list(shape),
             "input_shape": [meta.height, meta.width],
             **({"transform": {"radius": upsample.RADIUS, "eps": upsample.EPS}}
                if ctx.settings.grid == "upsample" else {})},
    "timings": timings,
    "dqr": sampling_summary.dqr(info, config),
    "guard": sampling_summary.guard(info),
    "trace": state_lib.trace_rows(info),
  }
  problem = sampling_summary.guard_problem(sidecar["guard"])
  try:
    if problem:  # the sidecar alone says why; a stale image of this job must not stay.
      job.output.unlink(missing_ok=True)
      io.write_json(sidecar_path(job.output), sidecar)
    else:
      io.write_image(job.output, io.from_model_grid(image, meta), bits=ctx.settings.bits)
      io.write_json(sidecar_path(job.output), {**sidecar, "files": records.files_record(job)})
  except IMAGE_FAILURES as e:
    ctx.summary.failed.append((job.name, failure(job.output, e)))
    return False
  if problem:
    ctx.summary.failed.append((job.name, f"{job.source}: {problem}"))
    return False
  ctx.summary.done.append(job.name)
  return True
