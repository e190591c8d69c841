"""Restoring image files: the engine of the `upzeroir` CLI and `eval.run`.

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
their per-task settings, which are traced), model-grid shape and prompt, each image with its
own per-task settings; each group compiles once, so a folder of mixed tasks shares one compiled
program. On one device a group runs through the driver (`driver.restore_queue`) on
`settings.batch` slots: an image is read when a slot frees up and written as soon as it
finishes, and its result equals `restore.restore` of it alone, bit for bit. On several devices
it runs in lockstep batches sharded over them (`lockstep`).

Each image's PRNG key is `fold_in(PRNGKey(seed), crc32(job.name))` (`outputs.image_key`): an
image's result does not depend on its slot, its batch, or which other images are restored.
An image that cannot be read, brought to the
grid or written fails alone (`failure` names the file); the others are restored. So does an
image whose sampling the divergence guard failed (docs/method.md §3): its sidecar's "guard"
record and the run summary name the reason, and no image is written for it.

Progress (`progress.Progress`): each grid shape and prompt is compiled ahead of its first
image, or loaded from JAX's persistent cache (`startup`) when an earlier run compiled it; the
progress says which (`progress.Progress.compiling`), and the per-image rate and time left count
restore time only. With `report_steps` the sampling steps are counted too: between the driver's
chunks on one device (no host callback, so every program is cached), through a host callback
inside the compiled loop on several (a host round trip per step; JAX does not cache it).

Ctrl-C: compiling and each chunk (each batch on several devices) run through `interrupt.call`,
so KeyboardInterrupt reaches the caller within a fraction of a second; outputs are written
atomically, so an interrupted run leaves no partial file.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding

import upzeroir_jax
from upzeroir_jax import config as config_lib
from upzeroir_jax import driver, interrupt, io, lockstep, outputs, records, sharding
from upzeroir_jax import progress as progress_lib
from upzeroir_jax.errors import RunError
from upzeroir_jax.jobs import Job, check_outputs
from upzeroir_jax.loading import Loaded
from upzeroir_jax.outputs import IMAGE_FAILURES, failure, image_key
from upzeroir_jax.sampler import state as state_lib

GRIDS = io.GRID_MODES
# Tasks whose images carry noise: "upsample" would carry it to full resolution (docs/usage.md).
NOISY_TASKS = ("denoise", "mixed")
ConfigOf = config_lib.RestoreConfig | Callable[[Job], config_lib.RestoreConfig]


@dataclasses.dataclass(frozen=True)
class Settings:
  """How a run restores its jobs (besides the `RestoreConfig`).

  Attributes:
    seed: base seed of the per-image keys (`image_key`).
    grid: "resize" (to `size` x `size`, as the paper), "pad" (reflect-pad to multiples of
      the backbone's `grid_multiple`) or "upsample" (restored as "resize", carried to full
      resolution by a guided transform, `io.upsample`); outputs always have the input's size.
    size: grid side in "resize" and "upsample" modes.
    batch: images sampled at a time: slots of the driver on one device, images per batch over
      all devices on several (rounded up to a multiple of the device count).
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
      if n_dev == 1:
        _run_queue(ctx, static, shape, text, group)
      else:
        lockstep.run_group(ctx, static, shape, text, group, global_batch)
  finally:
    progress.close()
  return summary


def _run_queue(ctx: _Run, static: config_lib.RestoreConfig, shape: tuple[int, int],
               text: Any, group: list[Job]) -> None:
  """Restores one group on one device through the driver (`driver.restore_queue`) on
  `settings.batch` slots: an image is read when a slot frees up, and written (image, then
  sidecar) as soon as it finishes, before its slot takes the next one."""
  with ctx.progress.compiling() as lowered:
    t0 = time.perf_counter()
    programs = interrupt.call(driver.compile_programs, ctx.models, static, shape,
                              slots=ctx.settings.batch, context=text, lowered=lowered)
    compile_s = time.perf_counter() - t0
  ctx.progress.start_images()
  taken = []  # (job, grid meta, read seconds, start time) of each image handed to the driver

  def items():
    for job in group:
      t = time.perf_counter()
      try:
        y, meta = outputs.read_one(ctx, job, shape)
      except IMAGE_FAILURES as e:
        ctx.summary.failed.append((job.name, failure(job.source, e)))
        ctx.progress.images_done([], 0.0, failed=[io.shown(job.name)])
        continue
      taken.append((job, meta, time.perf_counter() - t, time.perf_counter()))
      yield driver.Item(y, image_key(ctx.settings.seed, job.name),
                        state_lib.loss_weights(ctx.configs(job), shape[0] * shape[1]))

  last = time.perf_counter()
  for done in driver.restore_queue(ctx.models, items(), static, slots=ctx.settings.batch,
                                   context=text, programs=programs,
                                   on_chunk=ctx.progress.steps_done if ctx.on_step else None):
    job, meta, read_s, start = taken[done.index]
    now = time.perf_counter()
    timings = {"read_s": read_s, "restore_s": now - start, "slots": ctx.settings.batch,
               "compile_s": compile_s if done.index == 0 else 0.0}
    info = {name: np.asarray(v) for name, v in done.result.info.items()}
    written = outputs.write(ctx, job, shape, meta, np.asarray(done.result.image), info, timings)
    name = [io.shown(job.name)]
    ctx.progress.images_done(name if written else [], now - last,
                             failed=[] if written else name)
    last = now
