"""Loading the networks of a run: the diffusion backbone, the VGG16 of the perceptual loss and
the DQR scorer, from the default checkpoint places or the ones given.

Default places (relative to the working folder) live here only: `CHECKPOINT_DIR` holds each
network's converted file under the name its module owns (`vgg.CHECKPOINT_FILE`,
`arniqa.ENCODER_FILE` / `arniqa.regressor_file()`, `lpips.CHECKPOINT_FILE`), as
`python -m weights.fetch --output=checkpoints` writes them (`models.places`). The default
diffusion model is the hub mirror of SD 2.1-base's files (`places.SD_HUB_ID`).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable
from typing import Any

import jax

from upzeroir_jax import weights
from upzeroir_jax.errors import RunError
from upzeroir_jax.metrics import lpips
from upzeroir_jax.models import arniqa, places, vgg
from upzeroir_jax.sampler import models as models_lib

DEFAULT_MODEL = places.SD_HUB_ID
SMOKE_TEST_MODEL = "tiny"
# The model grid of every supported backbone (SD 1.x/2.x and the tiny test model: a factor-8
# VAE times 8), so that --size is checked before a model is loaded; the loaded model's own
# `grid_multiple` is checked again before restoring.
GRID_MULTIPLE = 64
SCORERS = ("arniqa", "niqe", "none")
CHECKPOINT_DIR = places.CHECKPOINT_DIR
DEFAULT_VGG = f"{CHECKPOINT_DIR}/{vgg.CHECKPOINT_FILE}"
DEFAULT_ARNIQA = f"{CHECKPOINT_DIR}/{places.ARNIQA_DIR}"
DEFAULT_LPIPS = f"{CHECKPOINT_DIR}/{lpips.CHECKPOINT_FILE}"


@dataclasses.dataclass
class Loaded:
  """Models ready for `pipeline.run`, with what the sidecars record about them.

  Attributes:
    models: `sampler.models.Models` (backbone, VGG16 params, DQR scorer or None).
    source: the diffusion model source as given (hub id, folder, checkpoint, or "tiny").
    smoke_test: True for random weights (`--model tiny`): outputs are not restorations.
    scorer: "arniqa", "niqe" or "none" (DQR off).
    text_context: prompt -> conditioning for `restore(context=...)` (None for "").
    multiple: grid sizes must be multiples of this (the backbone's `grid_multiple`).
    notes: human-readable facts recorded in each sidecar (weights used, random parts).
  """

  models: models_lib.Models
  source: str
  smoke_test: bool
  scorer: str
  text_context: Callable[[str], Any]
  multiple: int
  notes: dict


def _load_scorer(scorer: str, arniqa_dir: str, smoke_test: bool) -> tuple[Any, str]:
  """The DQR scorer (docs/method.md §7) and a note on its weights."""
  from upzeroir_jax.sampler import scorers

  if scorer == "none":
    return None, "DQR off (fixed pass)"
  if scorer == "niqe":
    return scorers.niqe(), "NIQE (no learned weights)"
  enc, reg = arniqa.checkpoint_files(arniqa_dir)
  if smoke_test and not (enc.is_file() and reg.is_file()):
    return scorers.arniqa(arniqa.init_random(jax.random.PRNGKey(1))), "ARNIQA, random weights"
  model = weights.load_checked(arniqa.load, (enc, reg), "ARNIQA", arniqa.converter(arniqa_dir))
  return scorers.arniqa(model), f"ARNIQA from {arniqa_dir}"


def _load_vgg(path: str, smoke_test: bool) -> tuple[Any, str]:
  if smoke_test and not os.path.isfile(path):
    return vgg.init_random(jax.random.PRNGKey(2)), "VGG16, random weights"
  return weights.load_checked(vgg.load, path, "VGG16", vgg.converter(path)), f"VGG16 from {path}"


def _load_backbone(source: str) -> Any:
  from upzeroir_jax.models import sd

  if source == SMOKE_TEST_MODEL:
    return sd.tiny(jax.random.PRNGKey(0))
  try:
    return sd.load(source, text_encoder=False)
  except ImportError as e:
    raise RunError(f"reading the diffusion model {source!r} needs {e.name or 'torch'}: "
                   "pip install -e '.[convert]', or convert it once with "
                   f"`{places.fetch_command()}` and pass "
                   f"--model={CHECKPOINT_DIR}/{places.SD_DIR}") from None
  except Exception as e:  # noqa: BLE001 (any reader error of a present but unusable model)
    first = " ".join(str(e).split())[:300] or type(e).__name__
    raise RunError(f"cannot load the diffusion model {source!r}: {first}; --model=tiny runs a "
                   "smoke test on random weights instead") from None


def load_models(source: str = DEFAULT_MODEL, *, vgg_path: str = DEFAULT_VGG,
                arniqa_dir: str = DEFAULT_ARNIQA, scorer: str = "arniqa") -> Loaded:
  """Loads the diffusion backbone, the VGG16 of the perceptual loss and the DQR scorer.

  Every weights file is looked for before any is loaded, and all missing ones are named in
  one `weights.MissingWeightsError` (with download locations and converter commands); a
  present file that cannot be read raises `weights.CorruptWeightsError` naming it. With `source="tiny"` every network has random weights where
  no checkpoint is found (a smoke test of the whole pipeline; the output is not a restoration).

  Args:
    source: "tiny", a hub id (downloaded on first use), a diffusers folder, or our checkpoint.
    vgg_path: converted VGG16 checkpoint (weights/convert_vgg.py).
    arniqa_dir: folder with the converted ARNIQA encoder and KADID-10k regressor.
    scorer: "arniqa" (the paper's), "niqe", or "none" (DQR off).

  Raises:
    RunError: unknown scorer, or a diffusion model that cannot be loaded.
    weights.MissingWeightsError: weights files absent (all of them named).
    weights.CorruptWeightsError: a VGG16 or ARNIQA file that cannot be read.
  """
  if scorer not in SCORERS:
    raise RunError(f"unknown scorer {scorer!r}; choose one of {', '.join(SCORERS)}")
  weights.check(source, vgg_path, arniqa_dir, scorer, smoke_test_model=SMOKE_TEST_MODEL)
  smoke_test = source == SMOKE_TEST_MODEL
  vgg_params, vgg_note = _load_vgg(vgg_path, smoke_test)
  scorer_model, scorer_note = _load_scorer(scorer, arniqa_dir, smoke_test)
  backbone = _load_backbone(source)

  with_text = []  # the backbone with its text encoder, read at the first prompt.

  def text_context(prompt: str) -> Any:
    if not prompt:
      return None
    from upzeroir_jax.models import sd
    if not with_text:
      with_text.append(sd.with_text_encoder(backbone, source))
    return sd.text_context(with_text[0], [prompt])

  return Loaded(
    models=models_lib.Models(backbone=backbone, vgg_params=vgg_params, scorer=scorer_model),
    source=source, smoke_test=smoke_test, scorer=scorer, text_context=text_context,
    multiple=int(backbone.grid_multiple),
    notes={"backbone": "random weights (smoke test)" if smoke_test else source,
           "vgg16": vgg_note, "dqr_scorer": scorer_note})
