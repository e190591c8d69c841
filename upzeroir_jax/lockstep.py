"""Restoring a group of images in lockstep batches sharded over several devices (`sharding`):
the engine of a run on more than one device (on one device `pipeline` runs the driver).

Every batch is `settings.batch` images rounded up to a multiple of the device count, the last
one filled up with copies of its last image (discarded), so each grid shape compiles once; each
process reads and writes only the rows of its own devices. A batch runs until its slowest
image is done (`restore.restore_weighted` under `jax.shard_map`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable
from typing import Any

import jax
import numpy as np

from upzeroir_jax import config as config_lib
from upzeroir_jax import interrupt, io, outputs, sharding
from upzeroir_jax.sampler import state as state_lib


def run_group(ctx: Any, static: config_lib.RestoreConfig, shape: tuple[int, int], text: Any,
              group: list, global_batch: int) -> None:
  """Restores the jobs of one group (one static configuration, grid shape and prompt) in
  batches of `global_batch`, compiling the batch program first (`progress.Progress.compiling`)
  and writing each finished image (`outputs.write`)."""
  with ctx.progress.compiling(cacheable=ctx.on_step is None) as lowered:
    t0 = time.perf_counter()
    compiled = interrupt.call(_compile, ctx, (global_batch, *shape, 3), text, static, lowered)
    compile_s = time.perf_counter() - t0
  ctx.progress.start_images()
  for start in range(0, len(group), global_batch):
    chunk = group[start:start + global_batch]
    _run_batch(ctx, _Batch(jobs=chunk + [chunk[-1]] * (global_batch - len(chunk)),
                           real=len(chunk), shape=shape, ctx=text, compiled=compiled,
                           compile_s=compile_s if start == 0 else 0.0))


@dataclasses.dataclass(frozen=True)
class _Batch:
  """One batch: `jobs` filled up to the global batch; the first `real` are restored."""

  jobs: list
  real: int
  shape: tuple[int, int]
  ctx: Any
  compiled: Any  # `sharding.restore_sharded` compiled for this batch's shapes
  compile_s: float  # seconds compiling took, on the group's first batch; else 0


def _compile(ctx: Any, full_shape: tuple[int, ...], text: Any,
             config: config_lib.RestoreConfig, lowered: Callable[[str], None]) -> Any:
  """`sharding.restore_sharded` compiled for a batch of `full_shape` and the static
  configuration `config` (loaded from JAX's persistent cache when an earlier run compiled it);
  `lowered(module name)` is called between lowering and compiling
  (`progress.Progress.compiling`)."""
  ys = jax.ShapeDtypeStruct(full_shape, np.float32, sharding=ctx.rows)
  keys = jax.ShapeDtypeStruct((full_shape[0], 2), np.uint32, sharding=ctx.rows)
  weights = jax.tree.map(
      lambda w: jax.ShapeDtypeStruct((full_shape[0],), w.dtype, sharding=ctx.rows),
      state_lib.loss_weights(config, full_shape[1] * full_shape[2]))
  program = sharding.restore_sharded.lower(ctx.models, ys, keys, weights, text, config=config,
                                           mesh=ctx.rows.mesh, on_step=ctx.on_step)
  lowered(f"jit_{sharding.restore_sharded.__name__}")
  return program.compile()


def _read_rows(ctx: Any, batch: _Batch, rows: list[int]
               ) -> tuple[dict[int, np.ndarray], dict[int, io.GridMeta], set[int]]:
  """This process's rows on the model grid; an unreadable row gets a grey stand-in. Filler
  rows (copies of the last real one) reuse its grid when this process read it."""
  grids, metas, failed = {}, {}, set()
  last = batch.real - 1
  for r in rows:
    job = batch.jobs[r]
    if r > last and last in grids:
      grids[r] = grids[last]
      continue
    try:
      grids[r], metas[r] = outputs.read_one(ctx, job, batch.shape)
    except outputs.IMAGE_FAILURES as e:
      grids[r] = np.full(batch.shape + (3,), 0.5, np.float32)
      if r < batch.real:
        failed.add(r)
        ctx.summary.failed.append((job.name, outputs.failure(job.source, e)))
  return grids, metas, failed


def _run_batch(ctx: Any, batch: _Batch) -> None:
  """Reads this process's rows of one batch, restores it, writes the real rows."""
  g = len(batch.jobs)
  full_shape = (g, *batch.shape, 3)
  t0 = time.perf_counter()
  grids, metas, failed = _read_rows(ctx, batch, sharding.local_rows(ctx.rows, full_shape))
  read_s = time.perf_counter() - t0
  ys = sharding.from_rows(full_shape, ctx.rows, grids)
  keys = sharding.from_rows((g, 2), ctx.rows, {
      r: outputs.image_key(ctx.settings.seed, batch.jobs[r].name) for r in grids})
  weights = _weights(ctx, batch, list(grids))
  t1 = time.perf_counter()
  images, info = interrupt.call(
      lambda: jax.block_until_ready(batch.compiled(ctx.models, ys, keys, weights, batch.ctx)))
  batch_s = time.perf_counter() - t1
  image_rows = sharding.rows_of(images)
  info_rows = {name: sharding.rows_of(v) for name, v in info.items()}
  real = [r for r in sorted(image_rows) if r < batch.real and r not in failed]
  timings = {"read_s": read_s, "batch_s": batch_s, "batch_images": batch.real,
             "per_image_s": batch_s / batch.real, "compile_s": batch.compile_s}
  before = len(ctx.summary.done)
  for r in real:
    outputs.write(ctx, batch.jobs[r], batch.shape, metas[r], image_rows[r],
           {name: v[r] for name, v in info_rows.items()}, timings)
  done = ctx.summary.done[before:]
  failed = [j.name for j in batch.jobs[:batch.real] if j.name not in set(done)]
  ctx.progress.images_done([io.shown(n) for n in done], batch_s,
                           failed=[io.shown(n) for n in failed])


def _weights(ctx: Any, batch: _Batch, rows: list[int]) -> state_lib.LossWeights:
  """The batch's per-task settings `[G]` (`state.loss_weights` of each row's job), from this
  process's `rows`."""
  g = len(batch.jobs)
  per_row = {r: state_lib.loss_weights(ctx.configs(batch.jobs[r]),
                                       batch.shape[0] * batch.shape[1]) for r in rows}
  return state_lib.LossWeights(**{
      name: sharding.from_rows((g,), ctx.rows, {r: np.asarray(getattr(w, name))
                                                for r, w in per_row.items()})
      for name in state_lib.WEIGHT_FIELDS})
