"""`--task=auto`: each image's preset chosen from its own identified degradations.

`physics.identify` names what an image shows (low light, haze, noise, several or none); this
module maps that to a task preset (docs/method.md §6): one degradation → its own row (low light
→ "lowlight", haze → "dehaze", noise → "denoise"); two or more → "mixed" (the low-light row);
none → `CLEAN_TASK`; an image too small to identify (under 16 pixels a side) →
`UNDETERMINED_TASK`, the same least invasive preset, recorded as "undetermined". The configs come from `config.preset(task, **overrides)`, so every
per-task setting of a preset comes along.

A clean image is still restored, with the least invasive preset rather than copied: the denoise
row has the smallest quality terms (w_exp = w_col = 1e-5, so no exposure or colour shift is
pushed onto a well-exposed photo) and the strongest PCDM fidelity (w_mse = 3), and the output
keeps the same path, size and sidecar as every other image. The sidecar and a log line say that
the image looked clean.

In a run (`upzeroir restore`, `eval.run`), `inspect` identifies each input once, on the host,
while the pre-flight check has it decoded (`preflight.check(..., inspect=inspect)`), before
any model loads, and records the result in the job's sidecar entries under "auto";
`per_image` then gives `pipeline.run` each job's preset. Presets differ only in their traced
per-task settings, so images of different tasks share batches and one compiled program.
"""

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
from absl import logging

from upzeroir_jax import config as config_lib
from upzeroir_jax.jobs import Job
from upzeroir_jax.physics import identify

AUTO = "auto"
CLEAN_TASK = "denoise"
UNDETERMINED = "undetermined"
UNDETERMINED_TASK = CLEAN_TASK  # the least invasive preset, as for a clean-looking image
_SINGLE_TASK = {"lowlight": "lowlight", "haze": "dehaze", "noise": "denoise"}


def task_for(found: identify.Identification) -> str:
  """The preset name for an identification: see the module docstring."""
  kinds = [k for k in identify.KINDS if getattr(found, k)]
  if len(kinds) > 1:
    return "mixed"
  return _SINGLE_TASK[kinds[0]] if kinds else CLEAN_TASK


def choose_task(img: np.ndarray, name: str = "") -> tuple[str, dict[str, Any]]:
  """The task for `img` `[H, W, 3]` (float in [0, 1]) and a JSON-ready record of what was
  found (`Identification.report` plus the task); logs one line for a clean-looking image.

  An image under `identify.MIN_SIDE` pixels a side cannot be identified: it gets
  `UNDETERMINED_TASK`, recorded with `"detected": "undetermined"` and the reason.

  Raises:
    ValueError: `img` is not an `[H, W, 3]` image.
  """
  if np.ndim(img) == 3 and min(np.shape(img)[:2]) < identify.MIN_SIDE:
    note = (f"{np.shape(img)[0]}x{np.shape(img)[1]} pixels, under the {identify.MIN_SIDE} a side "
            "identification needs")
    logging.warning("%s: not identified (%s); restoring with the %s preset", name or "image",
                    note, UNDETERMINED_TASK)
    return UNDETERMINED_TASK, {"detected": UNDETERMINED, "task": UNDETERMINED_TASK,
                               "note": note}
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


def inspect(job: Job, img: np.ndarray) -> Job:
  """`job` with {"auto": record} added to its sidecar entries (`extra`): what `choose_task`
  found in its decoded input `img` `[H, W, 3]` and the task chosen. Called once per input by
  the pre-flight check (`preflight.check(..., inspect=auto.inspect)`), before models load.
  An image too small to identify is recorded as undetermined (`choose_task`)."""
  task, record = choose_task(img, job.name)
  logging.info("%s: found %s -> task %s", job.name, record["detected"], task)
  return dataclasses.replace(job, extra={**job.extra, AUTO: record})


def task_of(job: Job) -> str:
  """The task `inspect` recorded for `job` (`CLEAN_TASK` for a job it has not seen)."""
  return job.extra.get(AUTO, {}).get("task", CLEAN_TASK)


def per_image(presets: Mapping[str, config_lib.RestoreConfig]
              ) -> Callable[[Job], config_lib.RestoreConfig]:
  """The `pipeline.run` config of `--task=auto`: each job's `presets[task_of(job)]`."""
  return lambda job: presets[task_of(job)]
