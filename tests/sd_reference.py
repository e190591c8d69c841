"""PyTorch Stable Diffusion references for the tests: tiny random diffusers folders."""

import pathlib
from typing import Any

import diffusers
import torch
import transformers

from upzeroir_jax.models import sd_nets, sd_tokenizer


def torch_network(config: dict[str, Any], part: str, seed: int) -> Any:
  """One random diffusers / transformers PyTorch network of the config, in eval mode.

  Every 1-D parameter (biases, norm scales) gets N(0, 0.1²) added, so that a converter that
  mixed up or dropped one of them is caught (their defaults are 0 and 1).
  """
  torch.manual_seed(seed)
  if part == "unet":
    net = diffusers.UNet2DConditionModel(**config["unet"])
  elif part == "vae":
    net = diffusers.AutoencoderKL(**config["vae"])
  else:
    net = transformers.CLIPTextModel(transformers.CLIPTextConfig(**config["text_encoder"]))
  net.eval()
  with torch.no_grad():
    for p in net.parameters():
      if p.ndim == 1:
        p.add_(0.1 * torch.randn_like(p))
  return net


def torch_networks(config: dict[str, Any], seed: int) -> dict[str, Any]:
  """The three random networks of the config (`torch_network`), by part."""
  return {part: torch_network(config, part, seed) for part in sd_nets.PARTS}


def save_folder(
  path: pathlib.Path, config: dict[str, Any], seed: int, safetensors: bool = True
) -> dict[str, Any]:
  """Writes a diffusers Stable Diffusion folder of random weights; returns the networks."""
  nets = torch_networks(config, seed)
  for part, net in nets.items():
    net.save_pretrained(str(path / part), safe_serialization=safetensors)
  diffusers.DDIMScheduler(**config["scheduler"]).save_pretrained(str(path / "scheduler"))
  max_length = config["text_encoder"]["max_position_embeddings"]
  sd_tokenizer.Tokenizer(max_length=max_length).save(path / "tokenizer")
  return nets
