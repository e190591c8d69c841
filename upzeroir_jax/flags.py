"""The model and sampling flags shared by `upzeroir restore`, `eval.run` and `eval.ablate`,
and the one way they become a `RestoreConfig`, loaded models and pipeline settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

from absl import flags

from upzeroir_jax import auto, loading, pipeline, smoke, startup
from upzeroir_jax import config as config_lib
from upzeroir_jax.errors import RunError
from upzeroir_jax.models import arniqa

# Flags `model_argv` passes on to another binary, in this order.
MODEL_FLAGS = ("model", "scorer", "arniqa", "vgg", "steps", "seed", "batch", "grid", "size",
               "override", startup.CACHE_FLAG)


def define_model_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """Defines the model and sampling flags (`MODEL_FLAGS`) and `--compilation_cache` on `fv`."""
  flags.DEFINE_string("model", loading.DEFAULT_MODEL, "Diffusion prior: hub id (downloaded on "
                      "first use; the default is a mirror of SD 2.1-base's files), diffusers "
                      "folder, our checkpoint (e.g. checkpoints/sd21_base from `python -m "
                      "weights.fetch`), or 'tiny' (random "
                      "weights: a smoke test of the pipeline, not a restoration; "
                      f"{smoke.COST} on a 2-core CPU, with its own defaults "
                      f"{smoke.describe()}, each overridable).", flag_values=fv)
  flags.DEFINE_enum("scorer", "arniqa", list(loading.SCORERS), "Quality model of dynamic "
                    "quality refinement (DQR); 'none' runs one fixed pass.", flag_values=fv)
  flags.DEFINE_string("arniqa", loading.DEFAULT_ARNIQA, "Folder with the converted ARNIQA "
                      f"checkpoints ({arniqa.ENCODER_FILE}, {arniqa.regressor_file()}).",
                      flag_values=fv)
  flags.DEFINE_string("vgg", loading.DEFAULT_VGG, "Converted VGG16 checkpoint of the "
                      "perceptual loss.", flag_values=fv)
  flags.DEFINE_integer("steps", None, "DDIM steps (default: the preset's, 450).",
                       flag_values=fv, lower_bound=1)
  flags.DEFINE_integer("seed", 0, "Base seed; image keys are fold_in(seed, crc32(name)).",
                       flag_values=fv, lower_bound=-2**63, upper_bound=2**63 - 1)
  flags.DEFINE_integer("batch", 1, "Images restored together (vmapped; split over the "
                       "devices, rounded up to a multiple of their count).", flag_values=fv,
                       lower_bound=1)
  flags.DEFINE_enum("grid", "resize", list(pipeline.GRIDS), "Model input grid: 'resize' to "
                    "--size squared (as the paper), 'pad' every image to multiples of the "
                    "model's grid (keeps all pixels; memory grows with the image), or "
                    "'upsample': restored as 'resize', then carried to full resolution by a "
                    "guided colour transform applied to the full-size input (fast; for low "
                    "light and haze, not for noise).", flag_values=fv)
  flags.DEFINE_integer("size", 512, "Grid side in --grid=resize and --grid=upsample modes.",
                       flag_values=fv, lower_bound=1)
  flags.DEFINE_multi_string("override", [], "Change a RestoreConfig field of the task preset "
                            f"(with --task={auto.AUTO}: of every preset): "
                            "field=value (repeatable), e.g. guidance_scale=2000.",
                            flag_values=fv)
  startup.define_flags(fv)
  return fv


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


def config_from_flags(fv: flags.FlagValues, task: str) -> config_lib.RestoreConfig:
  """The task preset changed by --override, then --steps; DQR on unless --scorer=none (an
  explicit `--override=dqr=...` wins)."""
  overrides = parse_overrides(fv.override)
  if fv.steps:
    overrides["steps"] = fv.steps
  overrides.setdefault("dqr", fv.scorer != "none")
  return config_lib.preset(task, **overrides)


def task_configs(fv: flags.FlagValues, task: str) -> dict[str, config_lib.RestoreConfig]:
  """{task: `config_from_flags(fv, task)`}; for `auto.AUTO`, that of every task preset."""
  tasks = config_lib.TASKS if task == auto.AUTO else (task,)
  return {t: config_from_flags(fv, t) for t in tasks}


def load_models(fv: flags.FlagValues) -> loading.Loaded:
  """`loading.load_models` with --model, --vgg, --arniqa and --scorer."""
  return loading.load_models(fv.model, vgg_path=fv.vgg, arniqa_dir=fv.arniqa, scorer=fv.scorer)


def settings_from_flags(fv: flags.FlagValues, bits: int = 8) -> pipeline.Settings:
  """The pipeline settings of --seed, --grid, --size, --batch and --overwrite, checked before
  any model is loaded (`pipeline.check_settings` with `loading.GRID_MULTIPLE`).

  Raises:
    RunError: a bad grid mode, size or batch.
  """
  settings = pipeline.Settings(seed=fv.seed, grid=fv.grid, size=fv.size, batch=fv.batch,
                               bits=bits, overwrite=fv.overwrite)
  pipeline.check_settings(settings, loading.GRID_MULTIPLE)
  return settings


def model_argv(fv: flags.FlagValues, **changes: Any) -> list[str]:
  """The model and sampling flags given on `fv`'s command line as arguments for another
  binary (flags left at their defaults stay so there, so that e.g. `--model=tiny` brings its
  own defaults there too); `changes` replace or add values (e.g. `scorer="none"`), a list
  value repeats its flag."""
  out = []
  for name in MODEL_FLAGS:
    if name not in changes and not fv[name].present:
      continue
    value = changes.get(name, fv[name].value)
    for v in value if isinstance(value, list) else [value]:
      if v is not None:
        out.append(f"--{name}={v}")
  return out
