"""The Stable Diffusion networks: diffusers / transformers Flax modules built from configs.

With `sd_convert`, the only files of the package that import diffusers and transformers; their
Flax deprecation notices are silenced in one place, `quiet`. `Architecture` turns the config
dicts of `sd_configs` (the form diffusers checkpoints store) into Flax modules; the helpers
below run pieces of the VAE, build a tokenizer without downloads, and draw random weights.
"""

import contextlib
import dataclasses
import functools
import json
import os
import pathlib
import tempfile
import warnings
from collections.abc import Iterator
from typing import Any

import flax.traverse_util
import jax
import jax.numpy as jnp
import numpy as np

# diffusers and transformers import TensorFlow whenever it is installed (the tfds extra installs
# it) unless told not to; the networks here are JAX and Flax only.
os.environ.setdefault("USE_TF", "0")

from diffusers.utils import logging as diffusers_logging
from transformers.utils import logging as transformers_logging

from upzeroir_jax.models import clip_text, sd_layers, unet, vae, weights_check

PARTS = ("unet", "vae", "text_encoder")
# The network implementations a config's "nets" entry selects: our modules (`unet`, `vae`,
# `clip_text`; the default) or diffusers' / transformers' Flax modules.
NETS = ("own", "diffusers")


class WeightsError(weights_check.CheckpointError):
  """Stable Diffusion weights that cannot be found, read or used."""


@contextlib.contextmanager
def quiet() -> Iterator[None]:
  """Silences the deprecation notices diffusers and transformers emit for their Flax classes."""
  libraries = (diffusers_logging, transformers_logging)
  levels = [lib.get_verbosity() for lib in libraries]
  with warnings.catch_warnings():
    warnings.simplefilter("ignore", FutureWarning)
    warnings.simplefilter("ignore", DeprecationWarning)
    for lib in libraries:
      lib.set_verbosity(lib.ERROR)
    try:
      yield
    finally:
      for lib, level in zip(libraries, levels):
        lib.set_verbosity(level)


with quiet():
  import flax.linen as nn
  from diffusers.models.attention_flax import FlaxGEGLU
  from diffusers.models.embeddings_flax import FlaxTimesteps
  from diffusers.models.unets.unet_2d_condition_flax import FlaxUNet2DConditionModel
  from diffusers.models.vae_flax import FlaxAutoencoderKL
  from transformers import CLIPTextConfig, CLIPTokenizer
  from transformers.models.clip.modeling_flax_clip import FlaxCLIPTextModule

# PyTorch options the Flax modules do not implement, with the only value they support.
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
  """Raises WeightsError for a UNet / VAE option the Flax modules would silently ignore."""
  if config.get("nets", "own") not in NETS:
    raise WeightsError(f"nets={config['nets']!r} is not one of {', '.join(NETS)}")
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


def _module_kwargs(cls: type, cfg: dict[str, Any], dtype: Any) -> dict[str, Any]:
  """The config entries that are fields of a Flax module class, lists turned into tuples."""
  names = {f.name for f in dataclasses.fields(cls)} - {"parent", "name", "dtype"}
  kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in names}
  return {**kwargs, "dtype": dtype}


@dataclasses.dataclass(frozen=True)
class Architecture:
  """The static half of an SD model: network configs (as JSON) and the tokenizer.

  Equal configs compare equal, so jit caches are shared; the tokenizer is not compared.
  `config_json` holds {"unet", "vae", "text_encoder", "scheduler"} (see `sd_configs`).
  """

  config_json: str
  tokenizer: Any = dataclasses.field(default=None, compare=False, repr=False)

  @property
  def config(self) -> dict[str, Any]:
    return json.loads(self.config_json)

  @property
  def nets(self) -> str:
    """"own" (our modules) or "diffusers" (the libraries' Flax modules): config["nets"]."""
    return self.config.get("nets", "own")

  def own_unet(self, policy: sd_layers.Policy) -> unet.UNet:
    return unet.UNet(unet.UNetConfig.from_dict(self.config["unet"]), policy)

  def own_vae(self, policy: sd_layers.Policy) -> vae.AutoencoderKL:
    return vae.AutoencoderKL(vae.VAEConfig.from_dict(self.config["vae"]), policy)

  def own_text(self, policy: sd_layers.Policy) -> clip_text.CLIPText:
    return clip_text.CLIPText(clip_text.TextConfig.from_dict(self.config["text_encoder"]), policy)

  def unet(self, dtype: Any) -> FlaxUNet2DConditionModel:
    with quiet():
      kwargs = _module_kwargs(FlaxUNet2DConditionModel, self.config["unet"], dtype)
      return FlaxUNet2DConditionModel(**kwargs)

  def vae(self, dtype: Any) -> FlaxAutoencoderKL:
    with quiet():
      return FlaxAutoencoderKL(**_module_kwargs(FlaxAutoencoderKL, self.config["vae"], dtype))

  def text(self, dtype: Any) -> FlaxCLIPTextModule:
    with quiet():
      return FlaxCLIPTextModule(CLIPTextConfig.from_dict(self.config["text_encoder"]), dtype=dtype)


def _pytorch_definitions(next_fun: Any, args: Any, kwargs: Any, context: Any) -> Any:
  """Method interceptor: the two UNet pieces where diffusers' Flax port departs from PyTorch.

  `FlaxGEGLU` uses the tanh approximation of GELU (PyTorch: exact erf GELU, which SD was
  trained with) and `FlaxTimesteps` orders the frequency arithmetic differently (its float32
  result differs by up to ~1e-4 rad at t ≈ 1000). Both are replaced by PyTorch's definitions.
  """
  module = context.module
  if context.method_name == "__call__" and isinstance(module, FlaxGEGLU):
    linear, gate = jnp.split(module.proj(args[0]), 2, axis=-1)
    return linear * jax.nn.gelu(gate, approximate=False)
  if context.method_name == "__call__" and isinstance(module, FlaxTimesteps):
    return unet.timestep_features(args[0], module.dim, module.flip_sin_to_cos, module.freq_shift)
  return next_fun(*args, **kwargs)


def pytorch_definitions() -> contextlib.AbstractContextManager:
  """Context in which the Flax UNet computes what diffusers' PyTorch UNet computes."""
  return nn.intercept_methods(_pytorch_definitions)


def encode_moments(m: FlaxAutoencoderKL, x: jax.Array) -> jax.Array:
  """VAE method: NHWC image in [−1, 1] -> posterior (mean, logvar) stacked on channels."""
  return m.quant_conv(m.encoder(x))


def decode_full(m: FlaxAutoencoderKL, z: jax.Array) -> jax.Array:
  """VAE method: unscaled NHWC latent -> NHWC image in [−1, 1]."""
  return m.decoder(m.post_quant_conv(z))


def _decode_in(m: FlaxAutoencoderKL, z: jax.Array) -> jax.Array:
  d = m.decoder
  return d.mid_block(d.conv_in(m.post_quant_conv(z)))


def _decode_resnet(m: FlaxAutoencoderKL, h: jax.Array, block: int, layer: int) -> jax.Array:
  return m.decoder.up_blocks[block].resnets[layer](h)


def _decode_upsample(m: FlaxAutoencoderKL, h: jax.Array, block: int) -> jax.Array:
  return m.decoder.up_blocks[block].upsamplers_0(h)


def _decode_out(m: FlaxAutoencoderKL, h: jax.Array) -> jax.Array:
  d = m.decoder
  return d.conv_out(jax.nn.silu(d.conv_norm_out(h)))


def decoder_stages(vae_config: dict[str, Any]) -> list[Any]:
  """`decode_full` as a chain of VAE methods: input block, each resnet and upsampler, head."""
  n_blocks = len(vae_config["block_out_channels"])
  stages = [_decode_in]
  for b in range(n_blocks):
    for layer in range(vae_config.get("layers_per_block", 1) + 1):
      stages.append(functools.partial(_decode_resnet, block=b, layer=layer))
    if b < n_blocks - 1:
      stages.append(functools.partial(_decode_upsample, block=b))
  return stages + [_decode_out]


def _byte_symbols() -> list[str]:
  """The 256 printable symbols CLIP's byte-level BPE uses for the bytes 0–255."""
  keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), 256)]
  extra = iter(range(256, 512))
  return [chr(b) if b in keep else chr(next(extra)) for b in range(256)]


def tiny_tokenizer(max_length: int) -> CLIPTokenizer:
  """A `CLIPTokenizer` over single bytes (no merges), built without any download.

  Its vocabulary is `sd_configs.TINY_VOCAB_SIZE` ids: 256 byte symbols, the same with the
  end-of-word mark, then <|startoftext|> (`TINY_BOS`) and <|endoftext|> (`TINY_EOS`).
  """
  symbols = _byte_symbols()
  vocab = symbols + [s + "</w>" for s in symbols] + ["<|startoftext|>", "<|endoftext|>"]
  with tempfile.TemporaryDirectory() as tmp:
    vocab_file, merges_file = pathlib.Path(tmp, "vocab.json"), pathlib.Path(tmp, "merges.txt")
    vocab_file.write_text(json.dumps({s: i for i, s in enumerate(vocab)}))
    merges_file.write_text("#version: 0.2\n")
    with quiet():
      return CLIPTokenizer(str(vocab_file), str(merges_file), model_max_length=max_length)


def load_tokenizer(path: str | pathlib.Path) -> CLIPTokenizer:
  """The `CLIPTokenizer` saved in a folder (vocab.json, merges.txt, tokenizer_config.json)."""
  with quiet():
    return CLIPTokenizer.from_pretrained(str(path))


def _init_own(arch: Architecture, part: str, key: jax.Array) -> Any:
  """Flax `init` of one of our networks on a minimal input."""
  policy = sd_layers.Policy()
  if part == "unet":
    cfg = arch.config["unet"]
    size = 2 ** (len(cfg["down_block_types"]) - 1)
    z = jnp.zeros((1, size, size, cfg.get("in_channels", 4)))
    ctx = jnp.zeros((1, 1, cfg["cross_attention_dim"]))
    return arch.own_unet(policy).init(key, z, jnp.ones((1,), jnp.int32), ctx)["params"]
  if part == "vae":
    size = 2 ** (len(arch.config["vae"]["block_out_channels"]) - 1)
    return arch.own_vae(policy).init(key, jnp.zeros((1, size, size, 3)))["params"]
  return arch.own_text(policy).init(key, jnp.zeros((1, 1), jnp.int32))["params"]


def _init_part(arch: Architecture, part: str, key: jax.Array) -> Any:
  """Flax `init` of one network ("unet", "vae" or "text_encoder") on a minimal input."""
  if arch.nets == "own":
    return _init_own(arch, part, key)
  with quiet():
    if part == "unet":
      net, cfg = arch.unet(jnp.float32), arch.config["unet"]
      size = 2 ** (len(cfg["down_block_types"]) - 1)
      x = jnp.zeros((1, cfg.get("in_channels", 4), size, size))
      ctx = jnp.zeros((1, 1, cfg["cross_attention_dim"]))
      return net.init({"params": key, "dropout": key}, x, jnp.ones((1,), jnp.int32), ctx)["params"]
    if part == "vae":
      size = 2 ** (len(arch.config["vae"]["block_out_channels"]) - 1)
      x = jnp.zeros((1, 3, size, size))
      return arch.vae(jnp.float32).init({"params": key, "gaussian": key}, x)["params"]
    ids = jnp.zeros((1, 1), jnp.int32)
    return arch.text(jnp.float32).init(key, ids, ids, ids)["params"]


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
