"""Stable Diffusion weights on disk: our orbax checkpoints, diffusers folders, the hub.

Every reader returns `(config, params, tokenizer)`: the {"unet", "vae", "text_encoder",
"scheduler"} config dicts (`sd_configs` form), float32 Flax parameters by part, and the
tokenizer (`sd_tokenizer.Tokenizer`); `sd.load` and `sd.from_torch` assemble the model (this
module never imports `sd`). Only `read_diffusers` needs torch and diffusers (imported when
called): it reads the networks' full configs with diffusers and maps their PyTorch state dicts
onto our networks' parameters (`sd_params`).

Checkpoint layout (`write_checkpoint`): `sd_config.json` (with "nets": "own", the mark of
parameters in our networks' layout), `params/` (orbax: UNet, VAE and the empty-prompt
embedding), `text_encoder_params/` (orbax), `tokenizer/`. A checkpoint written for diffusers'
former Flax modules (no "nets", or "nets": "diffusers") is refused with the command that
re-converts it.
"""

import json
import pathlib
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import orbax.checkpoint as ocp
from absl import logging

from upzeroir_jax.models import (
  places,
  sd_nets,
  sd_params,
  sd_tokenizer,
  torch_state,
  weights_check,
)

CONFIG_NAME = "sd_config.json"
TEXT_PARAMS = "text_encoder_params"
FORMAT = "upzeroir-sd"
# The "nets" entry of sd_config.json: parameters in the layout of our networks.
NETS = "own"
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WeightsError = sd_nets.WeightsError
_FIX = "pass a complete diffusers folder of Stable Diffusion 1.x / 2.x"

# Per part: the safetensors file, else the .bin file, as diffusers folders name them.
_WEIGHT_FILES = {
  "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
  "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
  "text_encoder": ("model.safetensors", "pytorch_model.bin"),
}


def write_checkpoint(
  path: str | pathlib.Path, config: dict[str, Any], params: dict[str, Any],
  tokenizer: sd_tokenizer.Tokenizer
) -> None:
  """Writes config, parameters and tokenizer to `path`.

  `params` holds parts by name (None parts are left out) and optionally "null_context", the
  `[1, L, D]` empty-prompt embedding. The text encoder goes to its own folder
  (`TEXT_PARAMS`), so a model that is given no prompt loads without it.
  """
  path = pathlib.Path(path).expanduser().absolute()
  path.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  present = {k: v for k, v in params.items() if v is not None}
  text = present.pop("text_encoder", None)
  checkpointer.save(path / "params", present, force=True)
  if text is not None:
    checkpointer.save(path / TEXT_PARAMS, {"text_encoder": text}, force=True)
  checkpointer.wait_until_finished()
  (path / CONFIG_NAME).write_text(
    json.dumps({"format": FORMAT, "version": 1, **config, "nets": NETS}, indent=1,
               sort_keys=True)
  )
  tokenizer.save(path / "tokenizer")
  parts = [*present] + ([] if text is None else ["text_encoder"])
  logging.info("Wrote Stable Diffusion checkpoint (%s) to %s", ", ".join(parts), path)


def read_checkpoint(path: str | pathlib.Path,
                    text_encoder: bool = True
                    ) -> tuple[dict[str, Any], dict[str, Any], sd_tokenizer.Tokenizer]:
  """Reads a folder written by `write_checkpoint`; checks parameter shapes against the config.

  Without `text_encoder` the text encoder is left unread where the checkpoint stores the
  empty-prompt embedding ("null_context" in the returned parameters).

  Raises:
    WeightsError: not our checkpoint, one written for diffusers' former Flax modules (the
      message names the command that re-converts it), or parameters that do not fit.
  """
  path = pathlib.Path(path).expanduser().absolute()
  config = json.loads((path / CONFIG_NAME).read_text())
  if config.pop("format", None) != FORMAT:
    raise WeightsError(f"{path / CONFIG_NAME} was not written by weights/convert_sd.py")
  config.pop("version", None)
  if config.pop("nets", None) != NETS:
    redo = places.how_to_create(path, places.SD_DIR, places.sd_converter(output=str(path)))
    raise WeightsError(f"{path} holds weights for diffusers' former Flax modules, which this "
                       f"version no longer runs: re-convert it with {redo}")
  arch = sd_nets.Architecture(json.dumps(config, sort_keys=True))
  checkpointer = ocp.StandardCheckpointer()
  params = checkpointer.restore(path / "params")
  if (text_encoder or "null_context" not in params) and (path / TEXT_PARAMS).is_dir():
    params.update(checkpointer.restore(path / TEXT_PARAMS))
  text = config["text_encoder"]
  null_shape = (1, text.get("max_position_embeddings", 77), text.get("hidden_size", 512))
  for part, tree in params.items():
    if part == "null_context":
      want = null_shape
    else:
      want = jax.tree.map(lambda x: x.shape, sd_nets.abstract_params(arch, part))
    if jax.tree.map(lambda x: tuple(x.shape), tree) != want:
      raise WeightsError(f"{path}: the {part} parameters do not match {CONFIG_NAME}")
  return config, params, sd_tokenizer.from_folder(path / "tokenizer")


def _convert(part: str, state_dict: Mapping[str, Any], arch: sd_nets.Architecture,
             origin: Callable[[str], str]) -> Any:
  """Maps a PyTorch state dict onto our network's Flax parameters, checking every tensor.

  Args:
    part: "unet", "vae" or "text_encoder".
    state_dict: PyTorch name -> torch tensor.
    arch: the architecture (its configs give the parameter tree).
    origin: PyTorch name -> the file (or description) it came from, for errors.

  Raises:
    WeightsError: a non-float, unexpected, misshaped or non-finite tensor, or a missing one (one
      line naming the file and the first bad key, in sorted order).
  """
  for name in sorted(state_dict):
    if not state_dict[name].is_floating_point():
      raise WeightsError(f"{origin(name)}: tensor {name!r} is {state_dict[name].dtype}, not a "
                         f"float type; {_FIX}")
  arrays = {k: v.detach().float().numpy() for k, v in state_dict.items()}
  try:
    return sd_params.convert(part, arrays, sd_nets.abstract_params(arch, part), origin, _FIX)
  except weights_check.CheckpointError as e:
    raise WeightsError(str(e)) from None


def _weight_files(part_dir: pathlib.Path, part: str) -> list[pathlib.Path]:
  """The weights file of a part (safetensors first), or its shards as listed in its index."""
  for name in _WEIGHT_FILES[part]:
    if (part_dir / name).is_file():
      return [part_dir / name]
    index = part_dir / f"{name}.index.json"
    if index.is_file():
      try:
        shards = sorted(set(json.loads(index.read_text())["weight_map"].values()))
      except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise WeightsError(f"{index}: not a readable weights index ({e})") from None
      if any(pathlib.Path(s).name != s for s in shards):
        raise WeightsError(f"{index}: shard names must be file names in {part_dir}")
      return [part_dir / s for s in shards]
  raise WeightsError(f"{part_dir}: no {' or '.join(_WEIGHT_FILES[part])}; {_FIX}")


def _read_tensors(files: Sequence[pathlib.Path]) -> tuple[dict[str, Any], dict[str, str]]:
  """Torch tensors of weights files (no code runs: safetensors, or `torch.load` with
  `weights_only=True`) -> (name -> tensor, name -> file)."""
  import pickle

  import safetensors
  import safetensors.torch
  import torch

  tensors, origin = {}, {}
  for file in files:
    try:
      if file.suffix == ".safetensors":
        state = safetensors.torch.load_file(str(file))
      else:
        state = torch.load(str(file), map_location="cpu", weights_only=True)
    except (safetensors.SafetensorError, OSError, RuntimeError, pickle.UnpicklingError,
            EOFError, ValueError) as e:
      raise WeightsError(f"{file}: not a readable weights file ({torch_state.reason(e)}); "
                         f"{_FIX}") from None
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
      raise WeightsError(f"{file}: not a state dict of named tensors; {_FIX}")
    too_big = [k for k, v in state.items() if not torch_state.fits_storage(v)]
    if too_big:
      raise WeightsError(f"{file}: tensor {too_big[0]!r} claims more values than its storage "
                         f"holds (a malformed file); {_FIX}")
    for name, tensor in state.items():
      if name in tensors:
        raise WeightsError(f"{file}: tensor {name!r} is also in {origin[name]}; {_FIX}")
      tensors[name], origin[name] = tensor, str(file)
  return tensors, origin


def _public(config: Any) -> dict[str, Any]:
  """A network config without private entries and the torch dtype (we choose our own)."""
  drop = ("torch_dtype", "dtype")
  return {k: v for k, v in dict(config).items() if not k.startswith("_") and k not in drop}


def read_diffusers(folder: str | pathlib.Path
                   ) -> tuple[dict[str, Any], dict[str, Any], sd_tokenizer.Tokenizer]:
  """Reads a diffusers Stable Diffusion folder (PyTorch weights, safetensors or .bin) into our
  networks' parameters; the configs are read with diffusers (needs torch and diffusers)."""
  folder = pathlib.Path(folder).expanduser()
  missing = [d for d in SUBFOLDERS if not (folder / d).is_dir()]
  if missing:
    raise WeightsError(
      f"{folder} is not a diffusers Stable Diffusion folder (no {'/, '.join(missing)}/): pass one "
      "with unet/, vae/, text_encoder/, tokenizer/, scheduler/, or a weights/convert_sd.py output"
    )
  try:
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig
  except ImportError as e:
    raise WeightsError(
      f"reading PyTorch weights needs {e.name or 'torch'} (pip install -e '.[convert]'), or load "
      "a checkpoint that weights/convert_sd.py wrote elsewhere"
    ) from None

  classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL}
  scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
  config, params = {"scheduler": _public(scheduler)}, {}
  for part in ("unet", "vae", "text_encoder"):
    try:
      if part == "text_encoder":
        cfg = json.loads(CLIPTextConfig.from_pretrained(str(folder / part)).to_json_string())
      else:
        with torch.device("meta"):  # the full config with defaults, no weights allocated
          cfg = classes[part].from_config(classes[part].load_config(str(folder / part))).config
    except (OSError, ValueError) as e:
      raise WeightsError(f"cannot read {folder / part}: {str(e).splitlines()[0]}") from None
    config[part] = _public(cfg)
  sd_nets.check_supported(config)
  arch = sd_nets.Architecture(json.dumps(config, sort_keys=True))
  for part in ("unet", "vae", "text_encoder"):  # one network at a time, to bound host memory.
    files = _weight_files(folder / part, part)
    tensors, origin = _read_tensors(files)
    where = f"{files[0]}" if len(files) == 1 else f"{folder / part} ({len(files)} shards)"
    params[part] = _convert(part, tensors, arch, lambda name, o=origin, w=where: o.get(name, w))
    del tensors
  return config, params, sd_tokenizer.from_folder(folder / "tokenizer")


def params_from_torch(config: dict[str, Any], nets: dict[str, Any]) -> dict[str, Any]:
  """Flax parameters by part from PyTorch networks by part (None entries are skipped)."""
  sd_nets.check_supported(config)
  arch = sd_nets.Architecture(json.dumps(config, sort_keys=True))
  return {
    part: _convert(part, net.state_dict(), arch, lambda name, p=part: f"the in-memory {p} network")
    for part, net in nets.items()
    if net is not None
  }


def _patterns(files: list[str]) -> list[str]:
  """The files of a hub repo that `read_diffusers` needs (safetensors where available)."""
  patterns = ["model_index.json", "scheduler/*", "tokenizer/*"]
  for part, names in _WEIGHT_FILES.items():
    patterns.append(f"{part}/config.json")
    patterns.append(next((f"{part}/{n}" for n in names if f"{part}/{n}" in files), names[0]))
  return patterns


def download(repo_id: str) -> pathlib.Path:
  """Fetches a Stable Diffusion repo from the Hugging Face hub (or its local cache).

  Raises:
    WeightsError: neither the hub nor the cache has it (one line: what to pass instead).
  """
  import huggingface_hub

  try:
    patterns = _patterns(huggingface_hub.list_repo_files(repo_id))
    return pathlib.Path(huggingface_hub.snapshot_download(repo_id, allow_patterns=patterns))
  except Exception as online_error:  # noqa: BLE001 (offline: any transport or hub error)
    try:
      return pathlib.Path(huggingface_hub.snapshot_download(repo_id, local_files_only=True))
    except Exception:  # noqa: BLE001
      raise WeightsError(
        f"cannot download the hub id {repo_id} ({type(online_error).__name__}; offline?): pass "
        f"a local diffusers folder, or run `{places.fetch_command()}` where the hub is reachable "
        f"and pass --model={places.CHECKPOINT_DIR}/{places.SD_DIR}"
      ) from None
