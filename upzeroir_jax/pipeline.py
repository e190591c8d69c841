"""Restoring image files in batches: the engine of the `upzeroir` CLI and `eval.run`.

A run is a list of `jobs.Job`s (input file -> output file) and a `RestoreConfig`, one for
every job or one per job (a function of the job, e.g. the preset of its identified
degradations, `auto.per_image`). A job whose output image and JSON sidecar exist and belong
together (`records.finished`: the sidecar names the image's content) is finished and skipped,
so an interrupted run resumes where it stopped (both files are written atomically, the sidecar
last); a finished output made with other settings (`resume_key`: the job's configuration,
seed, grid, bits, model, scorer, code version) or from another version of its input
(`records.input_change`) is refused rather than kept (`records.check_resume`), unless `overwrite`
redoes it. The other jobs are grouped by the
static part of their configuration (`sampler.state.weightless`: task presets differ only in
their per-task settings, which are traced), model-grid shape and prompt and restored
`settings.batch` images at a time, each with its own per-task settings (docs/method.md §3–§7
via `restore.restore_weighted`), the batch sharded over the devices (`sharding`); each group
compiles once, so a folder of mixed tasks shares one compiled program.

Each image's PRNG key is `fold_in(PRNGKey(seed), crc32(job.name))`: an image's result does not
depend on its batch, its position, the device count, or which other images are restored.
The last batch of a group is filled up to the full batch with copies of its last image
(discarded), so each grid shape compiles once. An image that cannot be read, brought to the
grid or written fails alone (`failure` names the file); the others are restored. So does an
image whose sampling the divergence guard failed (docs/method.md §3): its sidecar's "guard"
record and the run summary name the reason, and no image is written for it.

Progress (`progress.Progress`): each grid shape and prompt is compiled ahead of its first
batch, or loaded from JAX's persistent cache (`startup`) when an earlier run compiled it; the
progress says which (`progress.Progress.compiling`), and the per-image rate and time left count
restore time only. Images are counted per batch; with `report_steps` a host callback inside the compiled
loop reports each sampling step (costs a host round trip per step; off by default).

Ctrl-C: compiling and restoring run through `interrupt.call`, so KeyboardInterrupt reaches
the caller within a fraction of a second even inside a long compiled call; outputs are
written atomically, so an interrupted run leaves no partial file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import pathlib
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding

import upzeroir_jax
from upzeroir_jax import config as config_lib
from upzeroir_jax import interrupt, io, records, sampling_summary, sharding
from upzeroir_jax import progress as progress_lib
from upzeroir_jax.errors import RunError
from upzeroir_jax.io import upsample
from upzeroir_jax.jobs import Job, check_outputs, sidecar_path
from upzeroir_jax.loading import Loaded
from upzeroir_jax.sampler import state as state_lib

GRIDS = io.GRID_MODES
# Tasks whose images carry noise: "upsample" would carry it to full resolution (docs/usage.md).
NOISY_TASKS = ("denoise", "mixed")
ConfigOf = config_lib.RestoreConfig | Callable[[Job], config_lib.RestoreConfig]
IMAGE_FAILURES = (io.ImageError, OSError, ValueError)


@dataclasses.dataclass(frozen=True)
class Settings:
  """How a run restores its jobs (besides the `RestoreConfig`).

  Attributes:
    seed: base seed of the per-image keys (`image_key`).
    grid: "resize" (to `size` x `size`, as the paper), "pad" (reflect-pad to multiples of
      the backbone's `grid_multiple`) or "upsample" (restored as "resize", carried to full
      resolution by a guided transform, `io.upsample`); outputs always have the input's size.
    size: grid side in "resize" and "upsample" modes.
    batch: images per batch over all devices (rounded up to a multiple of the device count).
    bits: 8 or 16 (PNG outputs).
    overwrite: redo finished outputs.
  """

  seed: int = 0
  grid: str = "resize"
  size: int = 512
  batch: int = 1
  bits: int = 8
  overwrite: bool = False


@dataclasses.dataclass
class Summary:
  """Outcome of `run`: names restored, names skipped as finished, and (name, problem) failures."""

  done: list = dataclasses.field(default_factory=list)
  skipped: list = dataclasses.field(default_factory=list)
  failed: list = dataclasses.field(default_factory=list)


@dataclasses.dataclass(frozen=True)
class _Run:
  """What every batch of one run shares."""

  loaded: Loaded
  models: Any  # `loaded.models` replicated over the mesh
  settings: Settings
  rows: NamedSharding
  common: dict  # sidecar entries of every image
  configs: Callable[[Job], config_lib.RestoreConfig]  # each job's configuration
  key_of: Callable[[Job], dict]  # `resume_key` of a job
  summary: Summary
  progress: progress_lib.Progress
  on_step: Any  # host callback of each sampling step, or None


@dataclasses.dataclass(frozen=True)
class _Batch:
  """One batch: `jobs` filled up to the global batch; the first `real` are restored."""

  jobs: list
  real: int
  shape: tuple[int, int]
  ctx: Any
  compiled: Any  # `sharding.restore_sharded` compiled for this batch's shapes
  compile_s: float  # seconds compiling took, on the group's first batch; else 0


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


def resume_key(config: config_lib.RestoreConfig, settings: Settings, source: str,
               scorer: str) -> dict:
  """What decides a restored image, recorded in its sidecar as "settings": the configuration
  (task, steps, overrides, ...), seed, grid, output bits, model, DQR scorer and code version.
  A finished output is only kept when its record equals the current run's
  (`records.check_resume`)."""
  key = {"config": dataclasses.asdict(config), "seed": settings.seed, "grid": settings.grid,
         "size": settings.size if settings.grid in io.SQUARE_MODES else None, "bits": settings.bits,
         "model": source, "scorer": scorer, "version": upzeroir_jax.__version__}
  return json.loads(json.dumps(key))  # the form a sidecar holds (tuples as lists)


def config_of(config: ConfigOf) -> Callable[[Job], config_lib.RestoreConfig]:
  """`config` as a function of the job: itself when it is one, else the same for every job."""
  if isinstance(config, config_lib.RestoreConfig):
    return lambda job: config
  return config


def check_settings(settings: Settings, multiple: int) -> None:
  """Refuses an unknown grid mode, a `size` that is not a positive multiple of `multiple` (the
  model's grid) in "resize" and "upsample" modes, and a batch under 1.

  Raises:
    RunError: one line naming the flag.
  """
  if settings.grid not in GRIDS:
    raise RunError(f"unknown grid mode {settings.grid!r}; choose {', '.join(GRIDS)}")
  if settings.grid in io.SQUARE_MODES and (settings.size <= 0 or settings.size % multiple):
    raise RunError(f"--size={settings.size} must be a positive multiple of {multiple} for "
                   "this model")
  if settings.batch < 1:
    raise RunError(f"--batch={settings.batch} must be at least 1")


def check_task(settings: Settings, task: str) -> None:
  """Refuses `--grid=upsample` for a task of noisy images (`NOISY_TASKS`): its transform is
  fitted on a local affine model of the input, so it carries the input's noise to full
  resolution (docs/usage.md).

  Raises:
    RunError: one line saying what to use instead.
  """
  if settings.grid == "upsample" and task in NOISY_TASKS:
    raise RunError(f"--grid=upsample carries the input's noise to full resolution, so it "
                   f"does not apply to --task={task}; use --grid=resize or --grid=pad")


def noise_refusal(job: Job, config: config_lib.RestoreConfig, settings: Settings) -> str | None:
  """Why `job` cannot be restored with `--grid=upsample`, or None: noise found in it by
  `--task=auto` (its "auto" record), or, without that record, a task of `NOISY_TASKS`."""
  if settings.grid != "upsample":
    return None
  found = job.extra.get("auto")
  noisy = found.get("noise", False) if isinstance(found, dict) else config.task in NOISY_TASKS
  if not noisy:
    return None
  return (f"{io.shown(job.source)}: noise found; --grid=upsample would carry it to full "
          "resolution: restore it with --grid=resize or --grid=pad")


def _groups(jobs: Sequence[Job], configs: Callable[[Job], config_lib.RestoreConfig],
            settings: Settings, multiple: int, summary: Summary
            ) -> dict[tuple[config_lib.RestoreConfig, tuple[int, int], str], list[Job]]:
  """Readable jobs by (static configuration, model-grid shape, prompt); unreadable ones, and
  those `noise_refusal` refuses, go to `summary.failed`."""
  out: dict[tuple[config_lib.RestoreConfig, tuple[int, int], str], list[Job]] = {}
  for job in jobs:
    refusal = noise_refusal(job, configs(job), settings)
    if refusal:
      summary.failed.append((job.name, refusal))
      continue
    try:
      h, w = ((settings.size, settings.size) if settings.grid in io.SQUARE_MODES
              else io.image_size(job.source))
    except IMAGE_FAILURES as e:
      summary.failed.append((job.name, failure(job.source, e)))
      continue
    shape = io.grid_shape(h, w, settings.size, settings.grid, multiple)
    out.setdefault((state_lib.weightless(configs(job)), shape, job.prompt), []).append(job)
  return out


def run(jobs: Sequence[Job], loaded: Loaded, config: ConfigOf,
        settings: Settings = Settings(), *, mesh: Mesh | None = None,
        progress: progress_lib.Progress | bool = True, report_steps: bool = False,
        record: dict | None = None) -> Summary:
  """Restores `jobs` in sharded batches, writing each output image and its JSON sidecar.

  The caller holds the output folders (`jobs.lock_outputs`) so that no other run writes there.

  Args:
    jobs: the images; outputs that exist with their sidecar are skipped unless
      `settings.overwrite`.
    loaded: `loading.load_models(...)`.
    config: the `RestoreConfig` of every job (e.g. `config.preset(task, steps=...)`), or a
      function job -> its `RestoreConfig` (e.g. `auto.per_image(...)`); each sidecar records
      its job's ("task", "config", "settings").
    settings: seed, grid, batch, output bits, overwrite.
    mesh: 1-D device mesh (default: all devices, `sharding.make_mesh()`).
    progress: where phases and images are reported: a `progress.Progress`, or True for one on
      stderr (process 0 only), False for none.
    report_steps: report every sampling step through a host callback (see module doc).
    record: extra entries for every sidecar (e.g. the dataset).

  Returns:
    `Summary` of done, skipped and failed jobs.

  Raises:
    RunError: bad grid settings (also "upsample" for one config of `NOISY_TASKS`,
      `check_task`), an output that is an input, or a finished output made with other settings
      (`records.check_resume`).
  """
  check_settings(settings, loaded.multiple)
  if isinstance(config, config_lib.RestoreConfig):
    check_task(settings, config.task)
  check_outputs(jobs, named_by_run=False)
  configs = config_of(config)

  def key_of(job: Job) -> dict:
    return resume_key(configs(job), settings, loaded.source, loaded.scorer)

  records.check_resume(jobs, key_of, settings.overwrite)
  mesh = mesh or sharding.make_mesh()
  summary = Summary()
  pending_mask = sharding.broadcast_from_first(
      np.asarray([settings.overwrite or not records.finished(j.output) for j in jobs], np.int32))
  summary.skipped = [j.name for j, p in zip(jobs, pending_mask) if not p]
  pending = [j for j, p in zip(jobs, pending_mask) if p]
  groups = _groups(pending, configs, settings, loaded.multiple, summary)

  n_dev = mesh.devices.size
  global_batch = n_dev * math.ceil(settings.batch / n_dev)
  if global_batch != settings.batch:
    logging.info("batch %d rounded up to %d, a multiple of the %d devices", settings.batch,
                 global_batch, n_dev)
  common = {
    "seed": settings.seed,
    "model": {"source": loaded.source, "smoke_test": loaded.smoke_test, **loaded.notes},
    "devices": n_dev, "processes": jax.process_count(), "version": upzeroir_jax.__version__,
    "jax": jax.__version__, **(record or {}),
  }
  if not isinstance(progress, progress_lib.Progress):
    progress = progress_lib.Progress(0, enabled=progress and jax.process_index() == 0)
  progress.total = sum(len(g) for g in groups.values())
  ctx = _Run(loaded=loaded, models=sharding.replicate(loaded.models, mesh),
             settings=settings, rows=sharding.rows(mesh), common=common, configs=configs,
             key_of=key_of,
             summary=summary,
             progress=progress, on_step=progress.on_step if report_steps else None)
  try:
    for (static, shape, prompt), group in groups.items():
      text = sharding.replicate(loaded.text_context(prompt), mesh)
      with progress.compiling(cacheable=ctx.on_step is None) as lowered:
        t0 = time.perf_counter()
        compiled = interrupt.call(_compile, ctx, (global_batch, *shape, 3), text, static,
                                  lowered)
        compile_s = time.perf_counter() - t0
      progress.start_images()
      for start in range(0, len(group), global_batch):
        chunk = group[start:start + global_batch]
        _run_batch(ctx, _Batch(jobs=chunk + [chunk[-1]] * (global_batch - len(chunk)),
                               real=len(chunk), shape=shape, ctx=text, compiled=compiled,
                               compile_s=compile_s if start == 0 else 0.0))
  finally:
    progress.close()
  return summary


def _compile(ctx: _Run, full_shape: tuple[int, ...], text: Any,
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


def _read_rows(ctx: _Run, batch: _Batch, rows: list[int]
               ) -> tuple[dict[int, np.ndarray], dict[int, io.GridMeta], set[int]]:
  """This process's rows on the model grid; an unreadable row gets a grey stand-in. Filler
  rows (copies of the last real one) reuse its grid when this process read it."""
  s = ctx.settings
  grids, metas, failed = {}, {}, set()
  last = batch.real - 1
  for r in rows:
    job = batch.jobs[r]
    if r > last and last in grids:
      grids[r] = grids[last]
      continue
    try:
      grids[r], metas[r] = io.to_model_grid(io.read_image(job.source), s.size, s.grid,
                                            ctx.loaded.multiple)
      if grids[r].shape[:2] != batch.shape:
        raise io.ImageError(f"{job.source}: size changed while the run was going on")
    except IMAGE_FAILURES as e:
      grids[r] = np.full(batch.shape + (3,), 0.5, np.float32)
      if r < batch.real:
        failed.add(r)
        ctx.summary.failed.append((job.name, failure(job.source, e)))
  return grids, metas, failed


def _run_batch(ctx: _Run, batch: _Batch) -> None:
  """Reads this process's rows of one batch, restores it, writes the real rows."""
  g = len(batch.jobs)
  full_shape = (g, *batch.shape, 3)
  t0 = time.perf_counter()
  grids, metas, failed = _read_rows(ctx, batch, sharding.local_rows(ctx.rows, full_shape))
  read_s = time.perf_counter() - t0
  ys = sharding.from_rows(full_shape, ctx.rows, grids)
  keys = sharding.from_rows((g, 2), ctx.rows, {
      r: image_key(ctx.settings.seed, batch.jobs[r].name) for r in grids})
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
    _write(ctx, batch, metas[r], image_rows[r], {name: v[r] for name, v in info_rows.items()},
           r, timings)
  done = ctx.summary.done[before:]
  failed = [j.name for j in batch.jobs[:batch.real] if j.name not in set(done)]
  ctx.progress.images_done([io.shown(n) for n in done], batch_s,
                           failed=[io.shown(n) for n in failed])


def _weights(ctx: _Run, batch: _Batch, rows: list[int]) -> state_lib.LossWeights:
  """The batch's per-task settings `[G]` (`state.loss_weights` of each row's job), from this
  process's `rows`."""
  g = len(batch.jobs)
  per_row = {r: state_lib.loss_weights(ctx.configs(batch.jobs[r]),
                                       batch.shape[0] * batch.shape[1]) for r in rows}
  return state_lib.LossWeights(**{
      name: sharding.from_rows((g,), ctx.rows, {r: np.asarray(getattr(w, name))
                                                for r, w in per_row.items()})
      for name in state_lib.WEIGHT_FIELDS})


def _write(ctx: _Run, batch: _Batch, meta: io.GridMeta, image: np.ndarray, info: dict,
           r: int, timings: dict) -> None:
  """Writes one restored image and then its sidecar; a failure is recorded, not raised."""
  job = batch.jobs[r]
  config = ctx.configs(job)
  sidecar = {
    **ctx.common, "task": config.task, "config": dataclasses.asdict(config),
    "settings": ctx.key_of(job), "name": job.name, "input": str(job.source),
    "output": str(job.output),
    "prompt": job.prompt, **job.extra,
    "grid": {"mode": ctx.settings.grid, "shape": list(batch.shape),
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
    return
  if problem:
    ctx.summary.failed.append((job.name, f"{job.source}: {problem}"))
    return
  ctx.summary.done.append(job.name)
