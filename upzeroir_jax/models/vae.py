"""The Stable Diffusion VAE (diffusers' `AutoencoderKL`), Flax linen, NHWC.

`encode_moments`: image `[B, H, W, 3]` in [−1, 1] -> posterior (mean, log-variance) stacked on
channels `[B, H/f, W/f, 2C]`; `decode`: unscaled latent -> image in [−1, 1]. The encoder has
down blocks of resnets and stride-2 convolutions (padded bottom and right only), a middle block
(resnet, single-head self-attention over the pixels, resnet) and GroupNorm–SiLU–`conv_out`,
then the 1×1 `quant_conv`; the decoder mirrors it with nearest 2× upsampling.
`decoder_stages` splits `decode` into a chain for stage-wise recomputation.
"""

import dataclasses
import functools
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from upzeroir_jax.models import sd_layers
from upzeroir_jax.models.sd_layers import Conv, Dense, GroupNorm, Policy

_EPS = 1e-6


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """The fields of a diffusers `AutoencoderKL` config that SD uses (diffusers' defaults)."""

  block_out_channels: tuple[int, ...] = (64,)
  layers_per_block: int = 1
  latent_channels: int = 4
  out_channels: int = 3
  norm_num_groups: int = 32

  @classmethod
  def from_dict(cls, cfg: dict[str, Any]) -> "VAEConfig":
    """From a diffusers `AutoencoderKL` config dict."""
    fields = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items()
                  if k in fields})


class SelfAttention(nn.Module):
  """The VAE's middle attention: GroupNorm, one head over all pixels, to_out.0, plus input."""

  groups: int
  policy: Policy

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, hgt, wid, c = x.shape
    dt = self.policy.dtype
    h = GroupNorm(self.groups, _EPS, dt, name="group_norm")(x).reshape(b, hgt * wid, c)
    q, k, v = (Dense(c, dtype=dt, name=n)(h) for n in ("to_q", "to_k", "to_v"))
    out = Dense(c, dtype=dt, name="to_out_0")(sd_layers.attention(q, k, v, 1, self.policy))
    return out.reshape(x.shape) + x.astype(dt)


class MidBlock(nn.Module):
  """Resnet, self-attention, resnet at the lowest resolution (`mid_block`)."""

  features: int
  groups: int
  policy: Policy

  @nn.compact
  def __call__(self, h: jax.Array) -> jax.Array:
    resnet = sd_layers.remat(sd_layers.ResnetBlock, self.policy)
    h = resnet(self.features, self.groups, _EPS, self.policy, name="resnets_0")(h)
    h = SelfAttention(self.groups, self.policy, name="attentions_0")(h)
    return resnet(self.features, self.groups, _EPS, self.policy, name="resnets_1")(h)


def _resnet(config: VAEConfig, policy: Policy, features: int, name: str) -> nn.Module:
  cls = sd_layers.remat(sd_layers.ResnetBlock, policy)
  return cls(features, config.norm_num_groups, _EPS, policy, name=name)


def _head(config: VAEConfig, policy: Policy, h: jax.Array, features: int) -> jax.Array:
  h = nn.silu(GroupNorm(config.norm_num_groups, _EPS, policy.dtype, name="conv_norm_out")(h))
  return Conv(features, dtype=policy.dtype, name="conv_out")(h)


class Encoder(nn.Module):
  """Image -> 2C moment channels at 1/f resolution (before `quant_conv`)."""

  config: VAEConfig
  policy: Policy

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    cfg, p = self.config, self.policy
    chans = cfg.block_out_channels
    h = Conv(chans[0], dtype=p.dtype, name="conv_in")(x)
    for i, c in enumerate(chans):
      for j in range(cfg.layers_per_block):
        h = _resnet(cfg, p, c, f"down_blocks_{i}_resnets_{j}")(h)
      if i < len(chans) - 1:
        h = sd_layers.Downsample(c, asymmetric=True, dtype=p.dtype,
                                 name=f"down_blocks_{i}_downsamplers_0")(h)
    h = MidBlock(chans[-1], cfg.norm_num_groups, p, name="mid_block")(h)
    return _head(cfg, p, h, 2 * cfg.latent_channels)


class Decoder(nn.Module):
  """Latent (after `post_quant_conv`) -> image."""

  config: VAEConfig
  policy: Policy

  @nn.compact
  def __call__(self, z: jax.Array) -> jax.Array:
    cfg, p = self.config, self.policy
    chans = cfg.block_out_channels[::-1]
    h = Conv(chans[0], dtype=p.dtype, name="conv_in")(z)
    h = MidBlock(chans[0], cfg.norm_num_groups, p, name="mid_block")(h)
    for i, c in enumerate(chans):
      for j in range(cfg.layers_per_block + 1):
        h = _resnet(cfg, p, c, f"up_blocks_{i}_resnets_{j}")(h)
      if i < len(chans) - 1:
        h = sd_layers.Upsample(c, dtype=p.dtype, name=f"up_blocks_{i}_upsamplers_0")(h)
    return _head(cfg, p, h, cfg.out_channels)


class AutoencoderKL(nn.Module):
  """The SD VAE; `init` / `apply` take an image `[B, H, W, 3]` and round-trip it (means)."""

  config: VAEConfig
  policy: Policy = Policy()

  def setup(self) -> None:
    dt, lat = self.policy.dtype, self.config.latent_channels
    self.encoder = Encoder(self.config, self.policy)
    self.decoder = Decoder(self.config, self.policy)
    self.quant_conv = Conv(2 * lat, kernel=1, dtype=dt)
    self.post_quant_conv = Conv(lat, kernel=1, dtype=dt)

  def encode_moments(self, x: jax.Array) -> jax.Array:
    """`[B, H, W, 3]` in [−1, 1] -> `[B, H/f, W/f, 2C]`: posterior mean, then log-variance."""
    return self.quant_conv(self.encoder(x))

  def decode(self, z: jax.Array) -> jax.Array:
    """Unscaled latent `[B, h, w, C]` -> image `[B, h·f, w·f, 3]` in [−1, 1]."""
    return self.decoder(self.post_quant_conv(z))

  def __call__(self, x: jax.Array) -> jax.Array:
    return self.decode(self.encode_moments(x)[..., :self.config.latent_channels])


def _apply(module: nn.Module, params: Any, h: jax.Array) -> jax.Array:
  with jax.named_scope("decoder"):
    return module.apply({"params": params}, h)


def _stem(config: VAEConfig, policy: Policy, params: Any, z: jax.Array) -> jax.Array:
  c, dt = config.block_out_channels[-1], policy.dtype
  h = _apply(Conv(config.latent_channels, kernel=1, dtype=dt), params["post_quant_conv"], z)
  h = _apply(Conv(c, dtype=dt), params["decoder"]["conv_in"], h)
  return _apply(MidBlock(c, config.norm_num_groups, policy), params["decoder"]["mid_block"], h)


def _stage(module: nn.Module, name: str, params: Any, h: jax.Array) -> jax.Array:
  return _apply(module, params["decoder"][name], h)


def _out(config: VAEConfig, policy: Policy, params: Any, h: jax.Array) -> jax.Array:
  d, dt = params["decoder"], policy.dtype
  h = nn.silu(_apply(GroupNorm(config.norm_num_groups, _EPS, dt), d["conv_norm_out"], h))
  return _apply(Conv(config.out_channels, dtype=dt), d["conv_out"], h)


def decoder_stages(config: VAEConfig,
                   policy: Policy) -> list[Callable[[Any, jax.Array], jax.Array]]:
  """`AutoencoderKL.decode` as a chain of functions `(vae params, h) -> h`: post-quant conv,
  input block and middle block; each resnet and upsampler; the output head."""
  chans = config.block_out_channels[::-1]
  stages = [functools.partial(_stem, config, policy)]
  for i, c in enumerate(chans):
    for j in range(config.layers_per_block + 1):
      block = sd_layers.ResnetBlock(c, config.norm_num_groups, _EPS, policy)
      stages.append(functools.partial(_stage, block, f"up_blocks_{i}_resnets_{j}"))
    if i < len(chans) - 1:
      up = sd_layers.Upsample(c, dtype=policy.dtype)
      stages.append(functools.partial(_stage, up, f"up_blocks_{i}_upsamplers_0"))
  return stages + [functools.partial(_out, config, policy)]
