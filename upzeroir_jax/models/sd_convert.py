"""Stable Diffusion weights on disk: our orbax checkpoints, diffusers folders, the hub.

Every reader returns `(config, params, tokenizer)`: the {"unet", "vae", "text_encoder",
"scheduler"} config dicts (`sd_configs` form), float32 Flax parameters by part, and the
`CLIPTokenizer`; `sd.load` and `sd.from_torch` assemble the model (this module never imports
`sd`). Only `read_diffusers` needs torch (imported
when called): it loads the PyTorch networks with diffusers / transformers and maps their state
dicts with the libraries' own PyTorch→Flax renaming rules.

Checkpoint layout (`write_checkpoint`): `sd_config.json`, `params/` (orbax), `tokenizer/`.
"""

import json
import pathlib
from typing import Any

import flax.traverse_util
import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging

from upzeroir_jax.models import sd_nets

CONFIG_NAME = "sd_config.json"
FORMAT = "upzeroir-sd"
SUBFOLDERS = ("unet", "vae", "text_encoder", "tokenizer", "scheduler")
WeightsError = sd_nets.WeightsError

# Per part: the safetensors file, else the .bin file, as diffusers folders name them.
_WEIGHT_FILES = {
  "unet": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
  "vae": ("diffusion_pytorch_model.safetensors", "diffusion_pytorch_model.bin"),
  "text_encoder": ("model.safetensors", "pytorch_model.bin"),
}


def write_checkpoint(
  path: str | pathlib.Path, config: dict[str, Any], params: dict[str, Any], tokenizer: Any
) -> None:
  """Writes config, parameters (parts that are None are left out) and tokenizer to `path`."""
  path = pathlib.Path(path).expanduser().absolute()
  path.mkdir(parents=True, exist_ok=True)
  checkpointer = ocp.StandardCheckpointer()
  present = {k: v for k, v in params.items() if v is not None}
  checkpointer.save(path / "params", present, force=True)
  checkpointer.wait_until_finished()
  (path / CONFIG_NAME).write_text(
    json.dumps({"format": FORMAT, "version": 1, **config}, indent=1, sort_keys=True)
  )
  tokenizer.save_pretrained(str(path / "tokenizer"))
  logging.info("Wrote Stable Diffusion checkpoint (%s) to %s", ", ".join(present), path)


def read_checkpoint(path: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any], Any]:
  """Reads a folder written by `write_checkpoint`; checks parameter shapes against the config."""
  path = pathlib.Path(path).expanduser().absolute()
  config = json.loads((path / CONFIG_NAME).read_text())
  if config.pop("format", None) != FORMAT:
    raise WeightsError(f"{path / CONFIG_NAME} was not written by weights/convert_sd.py")
  config.pop("version", None)
  arch = sd_nets.Architecture(json.dumps(config, sort_keys=True))
  params = ocp.StandardCheckpointer().restore(path / "params")
  for part, tree in params.items():
    want = jax.tree.map(lambda x: x.shape, sd_nets.abstract_params(arch, part))
    if jax.tree.map(lambda x: tuple(x.shape), tree) != want:
      raise WeightsError(f"{path}: the {part} parameters do not match {CONFIG_NAME}")
  return config, params, sd_nets.load_tokenizer(path / "tokenizer")


def _convert(part: str, state_dict: dict[str, Any], abstract: Any) -> Any:
  """Maps a PyTorch state dict onto the Flax parameter tree `abstract` (shapes checked)."""
  with sd_nets.quiet():
    from diffusers.models import modeling_flax_pytorch_utils as diffusers_pt
    from transformers import modeling_flax_pytorch_utils as transformers_pt

  target = flax.traverse_util.flatten_dict(abstract)
  out, unexpected = {}, []
  for name, tensor in state_dict.items():
    array = tensor.detach().float().numpy() if tensor.is_floating_point() else tensor.numpy()
    if part == "text_encoder":
      key = tuple(name.split("."))
      key, array = transformers_pt.rename_key_and_reshape_tensor(key, array, target, "text_model")
    else:
      key = tuple(diffusers_pt.rename_key(name).split("."))
      key, array = diffusers_pt.rename_key_and_reshape_tensor(key, array, target)
    if key not in target:
      unexpected.append(name)
      continue
    if array.shape != target[key].shape:
      raise WeightsError(f"{part} weight {name} has shape {array.shape}, not {target[key].shape}")
    out[key] = np.asarray(array, np.float32)
  missing = sorted(set(target) - set(out))
  if missing:
    raise WeightsError(
      f"{part}: {len(missing)} parameters have no PyTorch weight, e.g. {'/'.join(missing[0])}"
    )
  if unexpected:
    logging.info("%s: ignored PyTorch entries %s", part, unexpected)
  return flax.traverse_util.unflatten_dict(out)


def _public(config: Any) -> dict[str, Any]:
  """A network config without private entries and the torch dtype (we choose our own)."""
  drop = ("torch_dtype", "dtype")
  return {k: v for k, v in dict(config).items() if not k.startswith("_") and k not in drop}


def read_diffusers(folder: str | pathlib.Path) -> tuple[dict[str, Any], dict[str, Any], Any]:
  """Reads a diffusers Stable Diffusion folder (PyTorch weights, safetensors or .bin)."""
  folder = pathlib.Path(folder).expanduser()
  missing = [d for d in SUBFOLDERS if not (folder / d).is_dir()]
  if missing:
    raise WeightsError(
      f"{folder} is not a diffusers Stable Diffusion folder (no {'/, '.join(missing)}/): pass one "
      "with unet/, vae/, text_encoder/, tokenizer/, scheduler/, or a weights/convert_sd.py output"
    )
  try:
    import torch
  except ImportError:
    raise WeightsError(
      "reading PyTorch weights needs torch (pip install torch), or load a checkpoint that "
      "weights/convert_sd.py wrote elsewhere"
    ) from None
  with sd_nets.quiet():
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextModel

    classes = {"unet": UNet2DConditionModel, "vae": AutoencoderKL, "text_encoder": CLIPTextModel}
    scheduler = json.loads((folder / "scheduler" / "scheduler_config.json").read_text())
    config, params = {"scheduler": _public(scheduler)}, {}
    for part, cls in classes.items():  # one network at a time, to bound host memory.
      try:
        safetensors = (folder / part / _WEIGHT_FILES[part][0]).is_file()
        net = cls.from_pretrained(
          str(folder / part), torch_dtype=torch.float32, use_safetensors=safetensors
        )
      except (OSError, ValueError) as e:
        raise WeightsError(f"cannot read {folder / part}: {str(e).splitlines()[0]}") from None
      cfg = net.config
      config[part] = _public(json.loads(cfg.to_json_string()) if part == "text_encoder" else cfg)
      params.update(params_from_torch(config, {part: net}))
      del net
  return config, params, sd_nets.load_tokenizer(folder / "tokenizer")


def params_from_torch(config: dict[str, Any], nets: dict[str, Any]) -> dict[str, Any]:
  """Flax parameters by part from PyTorch networks by part (None entries are skipped)."""
  sd_nets.check_supported(config)
  arch = sd_nets.Architecture(json.dumps(config, sort_keys=True))
  return {
    part: _convert(part, net.state_dict(), sd_nets.abstract_params(arch, part))
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
        f"cannot download {repo_id} ({type(online_error).__name__}; offline?): pass a local "
        f"diffusers folder, or a folder from `python -m weights.convert_sd --source={repo_id} "
        "--output=DIR` run where the hub is reachable"
      ) from None
