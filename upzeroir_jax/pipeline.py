"""Restoring image files in batches: the engine of the `upzeroir` CLI and `eval/run.py`.

A run is a list of `Job`s (input file -> output file). A job whose output image and JSON
sidecar both exist is finished and skipped, so an interrupted run resumes where it stopped
(both files are written atomically, the sidecar last). The other jobs are grouped by model-grid
shape and prompt and restored `batch` images at a time (METHOD.md §3–§7 via
`restore.restore`): the batch axis is sharded over a 1-D device mesh (`NamedSharding`, axis
"batch"), and each device restores its rows (vmapped) under `jax.shard_map`, so every device
runs its own sampling loop. Multi-host runs (`jax.distributed`) use the same code: every
process takes part in every batch and reads and writes only the rows of its own devices.

Each image's PRNG key is `fold_in(PRNGKey(seed), crc32(job.name))`: an image's result does not
depend on its batch, its position, the device count, or which other images are restored.
The last batch of a group is filled up to the full batch with copies of its last image
(discarded), so each grid shape compiles once.

Progress: `restore` runs all sampling steps of a batch in one compiled call with no host
synchronisation inside the loop, so the progress bar advances per batch: images done, the
batch being restored, and the sampling steps the last batch took (fewer than `config.steps`
when dynamic quality refinement stopped early, more after restarts).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import pathlib
import time
import zlib
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
from absl import logging
from jax.sharding import Mesh, NamedSharding, PartitionSpec

import upzeroir_jax
from upzeroir_jax import config as config_lib
from upzeroir_jax import io
from upzeroir_jax import restore as restore_lib
from upzeroir_jax.errors import RunError
from upzeroir_jax.jobs import Job, check_outputs, is_done, sidecar_path

SD_DEFAULT = "stabilityai/stable-diffusion-2-1-base"
SMOKE_TEST_MODEL = "tiny"
SCORERS = ("arniqa", "niqe", "none")
ARNIQA_ENCODER = "arniqa_encoder.safetensors"
ARNIQA_REGRESSOR = "arniqa_regressor_kadid10k.safetensors"
BATCH_AXIS = "batch"


@dataclasses.dataclass
class Loaded:
  """Models ready for `run`, with what the sidecars record about them.

  Attributes:
    models: `restore.Models` (backbone, VGG16 params, DQR scorer or None).
    source: the diffusion model source as given (hub id, folder, checkpoint, or "tiny").
    smoke_test: True for random weights (`--model tiny`): outputs are not restorations.
    scorer: "arniqa", "niqe" or "none" (DQR off).
    text_context: prompt -> conditioning for `restore(context=...)` (None for "").
    multiple: grid sizes must be multiples of this (8 · the backbone's latent factor).
    notes: human-readable facts recorded in each sidecar (weights used, random parts).
  """

  models: restore_lib.Models
  source: str
  smoke_test: bool
  scorer: str
  text_context: Callable[[str], Any]
  multiple: int
  notes: dict


@dataclasses.dataclass
class Summary:
  """Outcome of `run`: names restored, names skipped as finished, and (name, problem) failures."""

  done: list = dataclasses.field(default_factory=list)
  skipped: list = dataclasses.field(default_factory=list)
  failed: list = dataclasses.field(default_factory=list)


def image_key(seed: int, name: str) -> np.ndarray:
  """uint32 `[2]` PRNG key of one image: `fold_in(PRNGKey(seed), crc32(name))`."""
  key = jax.random.fold_in(jax.random.PRNGKey(seed), zlib.crc32(name.encode()) & 0x7FFFFFFF)
  return np.asarray(key)


def parse_overrides(items: Sequence[str]) -> dict[str, Any]:
  """`["dqr=false", "steps=50", "pcdm_features=8,8,8"]` -> RestoreConfig field values.

  Values take the type of the field's default: bool (true/false/1/0), int, float, str, or a
  tuple of ints (comma-separated).

  Raises:
    RunError: malformed item, unknown field or value of the wrong type.
  """
  defaults = {f.name: f.default for f in dataclasses.fields(config_lib.RestoreConfig)}
  out = {}
  for item in items:
    name, sep, text = item.partition("=")
    name, text = name.strip(), text.strip()
    if not sep or name not in defaults:
      raise RunError(f"--override={item}: expected field=value with a RestoreConfig "
                     f"field ({', '.join(sorted(defaults))})")
    default = defaults[name]
    try:
      if isinstance(default, bool):
        if text.lower() not in ("true", "false", "1", "0"):
          raise ValueError(text)
        value = text.lower() in ("true", "1")
      elif isinstance(default, tuple):
        value = tuple(int(v) for v in text.split(","))
      else:
        value = type(default)(text)
    except ValueError:
      raise RunError(f"--override={item}: {text!r} is not a valid "
                     f"{type(default).__name__}") from None
    out[name] = value
  return out


def _missing(path: str, what: str, how: str) -> RunError:
  return RunError(f"{what} not found at {path}; {how}")


def _load_scorer(scorer: str, arniqa_dir: str, smoke_test: bool) -> tuple[Any, str]:
  """The DQR scorer (METHOD §7) and a note on its weights."""
  from upzeroir_jax.models import arniqa as arniqa_lib
  from upzeroir_jax.sampler import scorers

  if scorer == "none":
    return None, "DQR off (fixed pass)"
  if scorer == "niqe":
    return scorers.niqe(), "NIQE (no learned weights)"
  enc = pathlib.Path(arniqa_dir) / ARNIQA_ENCODER
  reg = pathlib.Path(arniqa_dir) / ARNIQA_REGRESSOR
  if enc.is_file() and reg.is_file():
    return scorers.arniqa(arniqa_lib.load(enc, reg)), f"ARNIQA from {arniqa_dir}"
  if smoke_test:
    return scorers.arniqa(arniqa_lib.init_random(jax.random.PRNGKey(1))), "ARNIQA, random weights"
  raise _missing(str(enc if not enc.is_file() else reg), "ARNIQA weights",
                 f"convert them with `{arniqa_lib.converter(arniqa_dir)}`, or pass "
                 "--scorer=niqe or --scorer=none")


def _load_vgg(path: str, smoke_test: bool) -> tuple[Any, str]:
  from upzeroir_jax.models import vgg

  if os.path.isfile(path):
    return vgg.load(path), f"VGG16 from {path}"
  if smoke_test:
    return vgg.init_random(jax.random.PRNGKey(2)), "VGG16, random weights"
  raise _missing(path, "VGG16 weights (perceptual loss)",
                 f"convert them with `{vgg.converter(path)}`")


def _load_backbone(source: str) -> Any:
  from upzeroir_jax.models import sd

  if source == SMOKE_TEST_MODEL:
    return sd.tiny(jax.random.PRNGKey(0))
  try:
    return sd.load(source)
  except ImportError as e:
    raise RunError(f"reading the diffusion model {source!r} needs {e.name or 'torch'}: "
                   "pip install -e '.[convert]', or convert it once with "
                   "`python -m weights.convert_sd` and pass the converted folder") from None
  except (OSError, ValueError) as e:
    first = " ".join(str(e).split()) or type(e).__name__
    raise RunError(f"cannot load the diffusion model {source!r}: {first}; --model=tiny runs a "
                   "smoke test on random weights instead") from None


def load_models(source: str = SD_DEFAULT, *, vgg_path: str = "checkpoints/vgg16.safetensors",
                arniqa_dir: str = "checkpoints/arniqa", scorer: str = "arniqa") -> Loaded:
  """Loads the diffusion backbone, the VGG16 of the perceptual loss and the DQR scorer.

  Weights are checked before the (possibly downloading) diffusion model is loaded, so a
  missing checkpoint fails fast. With `source="tiny"` every network has random weights where
  no checkpoint is found (a smoke test of the whole pipeline; the output is not a restoration).

  Args:
    source: "tiny", a hub id (downloaded on first use), a diffusers folder, or our checkpoint.
    vgg_path: converted VGG16 checkpoint (weights/convert_vgg.py).
    arniqa_dir: folder with the converted ARNIQA encoder and KADID-10k regressor.
    scorer: "arniqa" (the paper's), "niqe", or "none" (DQR off).

  Raises:
    RunError: unknown scorer, missing weights, or a model that cannot be loaded.
  """
  if scorer not in SCORERS:
    raise RunError(f"unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}")
  smoke_test = source == SMOKE_TEST_MODEL
  vgg_params, vgg_note = _load_vgg(vgg_path, smoke_test)
  scorer_model, scorer_note = _load_scorer(scorer, arniqa_dir, smoke_test)
  backbone = _load_backbone(source)

  def text_context(prompt: str) -> Any:
    if not prompt:
      return None
    from upzeroir_jax.models import sd
    return sd.text_context(backbone, [prompt])

  return Loaded(
    models=restore_lib.Models(backbone=backbone, vgg_params=vgg_params, scorer=scorer_model),
    source=source, smoke_test=smoke_test, scorer=scorer, text_context=text_context,
    multiple=8 * int(backbone.latent_factor),
    notes={"backbone": "random weights (smoke test)" if smoke_test else source,
           "vgg16": vgg_note, "dqr_scorer": scorer_note})


def make_mesh(devices: Sequence[Any] | None = None) -> Mesh:
  """A 1-D mesh over `devices` (default: all devices of all processes), axis "batch"."""
  return Mesh(np.asarray(devices if devices is not None else jax.devices()), (BATCH_AXIS,))


@functools.partial(jax.jit, static_argnames=("config", "mesh"))
def _restore_sharded(models: restore_lib.Models, ys: jax.Array, keys: jax.Array, ctx: Any,
                     config: config_lib.RestoreConfig, mesh: Mesh):
  """`restore` on a batch `[G, H, W, 3]` whose axis 0 is split over the mesh's devices."""
  rows = PartitionSpec(BATCH_AXIS)

  def local(models, ys, keys, ctx):
    result = restore_lib.restore(models, ys, keys, config, context=ctx)
    return result.image, result.info

  return jax.shard_map(local, mesh=mesh, in_specs=(PartitionSpec(), rows, rows, PartitionSpec()),
                       out_specs=rows, check_vma=False)(models, ys, keys, ctx)


def _replicate(tree: Any, mesh: Mesh) -> Any:
  """Places a pytree on every device of the mesh (host copies first on multi-host runs)."""
  if tree is None:
    return None
  if jax.process_count() > 1:
    tree = jax.tree.map(np.asarray, tree)
  return jax.device_put(tree, NamedSharding(mesh, PartitionSpec()))


def _local_rows(sharding: NamedSharding, shape: tuple[int, ...]) -> list[int]:
  rows = set()
  for index in sharding.addressable_devices_indices_map(shape).values():
    rows.update(range(*index[0].indices(shape[0])))
  return sorted(rows)


def _rows_of(array: jax.Array) -> dict[int, np.ndarray]:
  """This process's rows of a batch-sharded array, by global row index."""
  out = {}
  for shard in array.addressable_shards:
    start = shard.index[0].start or 0
    data = np.asarray(shard.data)
    for i in range(data.shape[0]):
      out[start + i] = data[i]
  return out


def _dqr_summary(info: dict[str, np.ndarray], config: config_lib.RestoreConfig) -> dict:
  """The sidecar's record of one image's sampling (METHOD §7 DQR info when enabled)."""
  if not config.dqr:
    return {"enabled": False, "steps": config.steps}
  from upzeroir_jax.sampler import dqr

  checks = int(info["checks"])
  return {
    "enabled": True,
    "steps": int(info["steps"]),
    "unet_evals": int(info["unet_evals"]),
    "restarts": int(info["restarts"]),
    "stop_reason": dqr.STOP_REASONS[int(info["stop_reason"])],
    "stop_t": int(info["stop_t"]),
    "best_score": float(info["best_score"]),
    "scores": [float(s) for s in info["scores"][:checks]],
    "score_t": [int(t) for t in info["score_t"][:checks]],
  }


IMAGE_FAILURES = (io.ImageError, OSError, ValueError)


def failure(path: pathlib.Path, error: Exception) -> str:
  """One line naming the file for a per-image failure (an `ImageError` names it already)."""
  if isinstance(error, io.ImageError):
    return " ".join(str(error).split())
  if isinstance(error, OSError) and error.strerror:
    return f"{path}: {error.strerror}"
  return f"{path}: {' '.join(str(error).split()) or type(error).__name__}"


def _write_json(path: pathlib.Path, record: dict) -> None:
  tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
  tmp.write_text(json.dumps(record, indent=2, sort_keys=True) + "\n")
  os.replace(tmp, path)


def _grid_shapes(jobs: Sequence[Job], grid: str, size: int, multiple: int,
                 summary: Summary) -> list[tuple[Job, tuple[int, int]]]:
  """Each readable job with its model-grid shape; unreadable ones go to `summary.failed`."""
  out = []
  for job in jobs:
    try:
      h, w = (size, size) if grid == "resize" else io.image_size(job.source)
    except IMAGE_FAILURES as e:
      summary.failed.append((job.name, failure(job.source, e)))
      continue
    out.append((job, io.grid_shape(h, w, size, grid, multiple)))
  return out


def _pending_consistent(jobs: Sequence[Job], overwrite: bool) -> list[bool]:
  """Which jobs still need running, as process 0 sees it (the same list on every process)."""
  pending = np.asarray([overwrite or not is_done(j) for j in jobs], np.int32)
  if jax.process_count() > 1 and len(jobs):
    from jax.experimental import multihost_utils
    pending = multihost_utils.broadcast_one_to_all(pending)
  return [bool(p) for p in np.asarray(pending)]


def run(jobs: Sequence[Job], loaded: Loaded, config: config_lib.RestoreConfig, *,
        seed: int = 0, grid: str = "resize", size: int = 512, batch: int = 1, bits: int = 8,
        overwrite: bool = False, mesh: Mesh | None = None, progress: bool = True,
        record: dict | None = None) -> Summary:
  """Restores `jobs` in sharded batches, writing each output image and its JSON sidecar.

  Args:
    jobs: the images; outputs that exist with their sidecar are skipped unless `overwrite`.
    loaded: `load_models(...)`.
    config: the `RestoreConfig` (e.g. `config.preset(task, steps=...)`).
    seed: base seed of the per-image keys (`image_key`).
    grid: "resize" (to `size` x `size`, as the paper) or "pad" (reflect-pad to multiples of
      `loaded.multiple`); outputs always have the input's size (`io.from_model_grid`).
    size: grid side in "resize" mode.
    batch: images per batch over all devices (rounded up to a multiple of the device count).
    bits: 8 or 16 (PNG outputs).
    overwrite: redo finished outputs.
    mesh: 1-D device mesh (default: all devices, `make_mesh()`).
    progress: show a tqdm bar (process 0, when stderr is a terminal).
    record: extra entries for every sidecar (e.g. the dataset).

  The caller holds the output folders (`jobs.lock_outputs`) so that no other run writes there.

  Returns:
    `Summary` of done, skipped and failed jobs. An image that cannot be read, brought to the
    grid or written fails alone (`failure` names the file); the others run.

  Raises:
    RunError: bad grid settings, or an output that is an input.
  """
  if grid not in ("resize", "pad"):
    raise RunError(f"unknown grid mode {grid!r}; choose resize or pad")
  if grid == "resize" and (size <= 0 or size % loaded.multiple):
    raise RunError(f"--size={size} must be a positive multiple of {loaded.multiple} for this model")
  if batch < 1:
    raise RunError(f"--batch={batch} must be at least 1")
  from tqdm import tqdm

  check_outputs(jobs, named_by_run=False)
  mesh = mesh or make_mesh()
  summary = Summary()
  pending_mask = _pending_consistent(jobs, overwrite)
  summary.skipped = [j.name for j, p in zip(jobs, pending_mask) if not p]
  pending = [j for j, p in zip(jobs, pending_mask) if p]
  groups: dict[tuple[tuple[int, int], str], list[Job]] = {}
  for job, shape in _grid_shapes(pending, grid, size, loaded.multiple, summary):
    groups.setdefault((shape, job.prompt), []).append(job)

  n_dev = mesh.devices.size
  global_batch = n_dev * math.ceil(batch / n_dev)
  if global_batch != batch:
    logging.info("batch %d rounded up to %d, a multiple of the %d devices", batch, global_batch,
                 n_dev)
  models = _replicate(loaded.models, mesh)
  rows = NamedSharding(mesh, PartitionSpec(BATCH_AXIS))
  n_batches = sum(math.ceil(len(g) / global_batch) for g in groups.values())
  bar = tqdm(total=len(pending), unit="img", desc="restoring",
             disable=None if progress and jax.process_index() == 0 else True)
  common = {
    "seed": seed, "task": config.task, "config": dataclasses.asdict(config),
    "model": {"source": loaded.source, "smoke_test": loaded.smoke_test, **loaded.notes},
    "devices": n_dev, "processes": jax.process_count(), "version": upzeroir_jax.__version__,
    "jax": jax.__version__, **(record or {}),
  }
  k = 0
  for (shape, prompt), group in groups.items():
    ctx = _replicate(loaded.text_context(prompt), mesh)
    first = True
    for start in range(0, len(group), global_batch):
      k += 1
      chunk = group[start:start + global_batch]
      filled = chunk + [chunk[-1]] * (global_batch - len(chunk))
      bar.set_postfix_str(f"batch {k}/{n_batches}: {len(chunk)} x {shape[0]}x{shape[1]}, up to "
                          f"{config.steps} steps")
      steps = _run_batch(filled, len(chunk), shape, models, ctx, loaded, config, seed, grid,
                         size, bits, rows, first, common, summary)
      first = False
      bar.set_postfix_str(f"batch {k}/{n_batches} took {steps} sampling steps per image")
      bar.update(len(chunk))
  bar.close()
  return summary


def _run_batch(filled: list[Job], real: int, shape: tuple[int, int], models: Any, ctx: Any,
               loaded: Loaded, config: config_lib.RestoreConfig, seed: int, grid: str,
               size: int, bits: int, rows: NamedSharding, first: bool, common: dict,
               summary: Summary) -> str:
  """Reads this process's rows of one batch, restores it, writes the real rows.

  Returns the sampling steps this process's images took ("4", or "31-45" under DQR).
  """
  g = len(filled)
  full_shape = (g, shape[0], shape[1], 3)
  t0 = time.perf_counter()
  grids, metas, failed = {}, {}, set()
  for r in _local_rows(rows, full_shape):
    try:
      x = io.read_image(filled[r].source)
      grids[r], metas[r] = io.to_model_grid(x, size, grid, loaded.multiple)
      if grids[r].shape[:2] != shape:
        raise io.ImageError(f"{filled[r].source}: size changed while the run was going on")
    except IMAGE_FAILURES as e:
      grids[r] = np.full(shape + (3,), 0.5, np.float32)
      if r < real:
        failed.add(r)
        summary.failed.append((filled[r].name, failure(filled[r].source, e)))
  read_s = time.perf_counter() - t0

  def gather(values):
    return lambda index: np.stack([values[r] for r in range(*index[0].indices(g))])

  ys = jax.make_array_from_callback(full_shape, rows, gather(grids))
  keys = {r: image_key(seed, filled[r].name) for r in grids}
  key_arr = jax.make_array_from_callback((g, 2), rows, gather(keys))
  t1 = time.perf_counter()
  images, info = _restore_sharded(models, ys, key_arr, ctx, config=config, mesh=rows.mesh)
  images = jax.block_until_ready(images)
  batch_s = time.perf_counter() - t1
  image_rows = _rows_of(images)
  info_rows = {name: _rows_of(v) for name, v in info.items()}
  taken = sorted({int(info_rows["steps"][r]) for r in image_rows if r < real}
                 if config.dqr else {config.steps})
  for r in sorted(image_rows):
    if r >= real or r in failed:
      continue
    job = filled[r]
    info_r = {name: v[r] for name, v in info_rows.items()}
    sidecar = {
      **common, "name": job.name, "input": str(job.source), "output": str(job.output),
      "prompt": job.prompt, **job.extra,
      "grid": {"mode": grid, "shape": list(shape), "input_shape": [metas[r].height,
                                                                   metas[r].width]},
      "timings": {"read_s": read_s, "batch_s": batch_s, "batch_images": real,
                  "per_image_s": batch_s / real, "includes_compilation": first},
      "sampling": _dqr_summary(info_r, config),
    }
    try:
      io.write_image(job.output, io.from_model_grid(image_rows[r], metas[r]), bits=bits)
      _write_json(sidecar_path(job.output), sidecar)
    except IMAGE_FAILURES as e:
      summary.failed.append((job.name, failure(job.output, e)))
      continue
    summary.done.append(job.name)
  return "-".join(str(t) for t in sorted({taken[0], taken[-1]})) if taken else "0"

