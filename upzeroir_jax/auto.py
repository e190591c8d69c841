"""`--task=auto`: each image's preset chosen from its own identified degradations.

`physics.identify` names what an image shows (low light, haze, noise, several or none); this
module maps that to a task preset (docs/method.md §6): one degradation → its own row (low light
→ "lowlight", haze → "dehaze", noise → "denoise"); two or more → "mixed" (the low-light row);
none → `CLEAN_TASK`. The configs come from `config.preset(task, **overrides)`, so every
per-task setting of a preset comes along.

A clean image is still restored, with the least invasive preset rather than copied: the denoise
row has the smallest quality terms (w_exp = w_col = 1e-5, so no exposure or colour shift is
pushed onto a well-exposed photo) and the strongest PCDM fidelity (w_mse = 3), and the output
keeps the same path, size and sidecar as every other image. The sidecar and a log line say that
the image looked clean.
"""

import dataclasses
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import logging

from upzeroir_jax import config as config_lib
from upzeroir_jax import io
from upzeroir_jax.physics import identify

AUTO = "auto"
CLEAN_TASK = "denoise"
_SINGLE_TASK = {"lowlight": "lowlight", "haze": "dehaze", "noise": "denoise"}


def task_for(found: identify.Identification) -> str:
  """The preset name for an identification: see the module docstring."""
  kinds = [k for k in identify.KINDS if getattr(found, k)]
  if len(kinds) > 1:
    return "mixed"
  return _SINGLE_TASK[kinds[0]] if kinds else CLEAN_TASK


def choose_task(img: np.ndarray, name: str = "") -> tuple[str, dict[str, Any]]:
  """The task for `img` `[H, W, 3]` (float in [0, 1]) and a JSON-ready record of what was
  found (`Identification.report` plus the task); logs one line for a clean-looking image."""
  found = identify.identify(img)
  task = task_for(found)
  if found.composition == "clean":
    logging.warning("%s: no low light, haze or noise found; restoring with the least "
                    "invasive preset (%s)", name or "image", task)
  return task, {**found.report(), "task": task}


def configs_for(images: Sequence[np.ndarray], **overrides: Any
                ) -> tuple[list[config_lib.RestoreConfig], list[dict[str, Any]]]:
  """One `config.preset(task, **overrides)` per image `[H, W, 3]` of `images`, the task chosen
  by `choose_task`, and the records. While presets differ only in their loss weights the
  configs go to one batched `restore` call (one config per image)."""
  configs, records = [], []
  for img in images:
    task, record = choose_task(img)
    configs.append(config_lib.preset(task, **overrides))
    records.append(record)
  return configs, records


def group_jobs(jobs: Sequence[Any]) -> dict[str, list[Any]]:
  """`pipeline.Job`s grouped by the task `choose_task` picks for each input image, each job's
  sidecar entries (`extra`) extended with {"auto": record}. An input that cannot be read or
  identified joins the `CLEAN_TASK` group unchanged (the pipeline reports an unreadable one)."""
  groups: dict[str, list[Any]] = {}
  for job in jobs:
    try:
      task, record = choose_task(io.read_image(job.source), job.name)
    except ValueError:  # unreadable, or too small to identify
      groups.setdefault(CLEAN_TASK, []).append(job)
      continue
    logging.info("%s: found %s -> task %s", job.name, record["detected"], task)
    groups.setdefault(task, []).append(
      dataclasses.replace(job, extra={**job.extra, "auto": record}))
  return groups
