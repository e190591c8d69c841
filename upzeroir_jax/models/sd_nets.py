"""The Stable Diffusion networks of a config: our UNet, VAE and CLIP text encoder.

`Architecture` turns the config dicts of `sd_configs` (the form diffusers checkpoints store)
into our Flax modules (`unet`, `vae`, `clip_text`); `check_supported` refuses the options they
do not implement; `abstract_params` and `random_params` give parameter shapes and random
weights without compiling Flax's `init`.
"""

import dataclasses
import functools
import json
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

from upzeroir_jax.models import clip_text, sd_layers, weights_check
from upzeroir_jax.models import unet as unet_lib
from upzeroir_jax.models import vae as vae_lib

PARTS = ("unet", "vae", "text_encoder")


class WeightsError(weights_check.CheckpointError):
  """Stable Diffusion weights that cannot be found, read or used."""


# diffusers options our networks do not implement, with the only value they support.
_UNSUPPORTED = {
  "unet": {
    "act_fn": "silu",
    "addition_embed_type": None,
    "attention_type": "default",
    "center_input_sample": False,
    "class_embed_type": None,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "norm_eps": 1e-5,
    "norm_num_groups": 32,
    "num_class_embeds": None,
    "resnet_time_scale_shift": "default",
    "time_cond_proj_dim": None,
    "time_embedding_type": "positional",
    "transformer_layers_per_block": 1,
    "num_attention_heads": None,
    "only_cross_attention": False,
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "resnet_out_scale_factor": 1.0,
    "time_embedding_act_fn": None,
    "timestep_post_act": None,
    "class_embeddings_concat": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "addition_time_embed_dim": None,
    "projection_class_embeddings_input_dim": None,
    "time_embedding_dim": None,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1,
    "resnet_skip_time_act": False,
  },
  "vae": {
    "act_fn": "silu",
    "latents_mean": None,
    "mid_block_add_attention": True,
    "shift_factor": None,
    "use_post_quant_conv": True,
    "use_quant_conv": True,
  },
}


_BLOCKS = ("CrossAttnDownBlock2D", "DownBlock2D", "CrossAttnUpBlock2D", "UpBlock2D")


def check_supported(config: dict[str, Any]) -> None:
  """Raises WeightsError for a UNet / VAE option our networks would silently ignore."""
  for kinds in ("down_block_types", "up_block_types"):
    unknown = set(config.get("unet", {}).get(kinds, ())) - set(_BLOCKS)
    if unknown:
      raise WeightsError(f"unet {kinds} {sorted(unknown)} are not supported (only "
                         f"{', '.join(_BLOCKS)}): Stable Diffusion 1.x / 2.x checkpoints are")
  for part, supported in _UNSUPPORTED.items():
    for key, value in supported.items():
      if config.get(part, {}).get(key, value) != value:
        raise WeightsError(
          f"{part} option {key}={config[part][key]!r} is not supported (only {value!r}): "
          "Stable Diffusion 1.x / 2.x checkpoints are"
        )


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The static half of an SD model: network configs (as JSON) and the tokenizer
  (`sd_tokenizer.Tokenizer`, built at the first prompt).

  Equal configs compare equal, so jit caches are shared; the tokenizer is not compared.
  `config_json` holds {"unet", "vae", "text_encoder", "scheduler"} (see `sd_configs`).
  """

  config_json: str
  tokenizer: Any = dataclasses.field(default=None, compare=False, repr=False)

  @property
  def config(self) -> dict[str, Any]:
    return json.loads(self.config_json)

  def unet(self, policy: sd_layers.Policy) -> unet_lib.UNet:
    return unet_lib.UNet(unet_lib.UNetConfig.from_dict(self.config["unet"]), policy)

  def vae(self, policy: sd_layers.Policy) -> vae_lib.AutoencoderKL:
    return vae_lib.AutoencoderKL(vae_lib.VAEConfig.from_dict(self.config["vae"]), policy)

  def text(self, policy: sd_layers.Policy) -> clip_text.CLIPText:
    return clip_text.CLIPText(clip_text.TextConfig.from_dict(self.config["text_encoder"]), policy)


def _init_part(arch: Architecture, part: str, key: jax.Array) -> Any:
  """Flax `init` of one of our networks on a minimal input."""
  policy = sd_layers.Policy()
  if part == "unet":
    cfg = arch.config["unet"]
    size = 2 ** (len(cfg["down_block_types"]) - 1)
    z = jnp.zeros((1, size, size, cfg.get("in_channels", 4)))
    ctx = jnp.zeros((1, 1, cfg["cross_attention_dim"]))
    return arch.unet(policy).init(key, z, jnp.ones((1,), jnp.int32), ctx)["params"]
  if part == "vae":
    size = 2 ** (len(arch.config["vae"]["block_out_channels"]) - 1)
    return arch.vae(policy).init(key, jnp.zeros((1, size, size, 3)))["params"]
  return arch.text(policy).init(key, jnp.zeros((1, 1), jnp.int32))["params"]


@functools.lru_cache(maxsize=16)
def abstract_params(arch: Architecture, part: str) -> Any:
  """Shapes and dtypes (float32) of one network's parameters, without computing them.

  Memoised per architecture: tracing a full-size UNet's `init` takes seconds.
  """
  return jax.eval_shape(functools.partial(_init_part, arch, part), jax.random.key(0))


def random_params(abstract: Any, rng: np.random.Generator) -> Any:
  """Host-side random parameters shaped like `abstract`.

  Kernels N(0, 1/fan_in), embeddings N(0, 0.02²), norm scales 1, biases 0: Flax's default
  scheme without compiling `init` (which takes minutes for a full-size UNet on a CPU).
  """
  flat = flax.traverse_util.flatten_dict(abstract)
  out = {}
  for path in sorted(flat):
    shape, name = flat[path].shape, path[-1]
    if name in ("scale", "bias"):
      out[path] = np.full(shape, 1.0 if name == "scale" else 0.0, np.float32)
    else:
      std = 0.02 if name == "embedding" else 1.0 / np.sqrt(np.prod(shape[:-1]))
      out[path] = (std * rng.standard_normal(shape, np.float32)).astype(np.float32)
  return flax.traverse_util.unflatten_dict(out)
