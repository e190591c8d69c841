"""The Stable Diffusion 1.x / 2.x UNet (diffusers' `UNet2DConditionModel`), Flax linen, NHWC.

ε(z, t, c) or v(z, t, c): `UNet(config, policy).apply({"params": p}, z, t, context)` with z
`[B, h, w, C]`, t `[B]` integer timesteps and the text context `[B, L, D]`. The architecture is
diffusers': sinusoidal timestep features and a two-layer MLP; `conv_in`; down blocks of
(resnet, transformer) layers and stride-2 downsamplers; a middle block; up blocks taking the
down path's outputs as skip connections; GroupNorm–SiLU–`conv_out`. Heads per level are
diffusers' `attention_head_dim` (its number of heads); SD 2.x uses linear projections around
its transformers and, for some checkpoints, float32 attention (`upcast_attention`).
"""

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from upzeroir_jax.models import sd_layers
from upzeroir_jax.models.sd_layers import Conv, Dense, GroupNorm, LayerNorm, Policy

_CROSS = ("CrossAttnDownBlock2D", "CrossAttnUpBlock2D")


def _per_block(value: Any, n: int) -> tuple:
  return tuple(value) if isinstance(value, (list, tuple)) else (value,) * n


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """The fields of a diffusers UNet config that SD 1.x / 2.x use (diffusers' defaults)."""

  down_block_types: tuple[str, ...]
  up_block_types: tuple[str, ...]
  block_out_channels: tuple[int, ...]
  heads: tuple[int, ...]
  out_channels: int = 4
  layers_per_block: int = 2
  cross_attention_dim: int = 1280
  use_linear_projection: bool = False
  upcast_attention: bool = False
  flip_sin_to_cos: bool = True
  freq_shift: float = 0.0
  norm_num_groups: int = 32
  norm_eps: float = 1e-5

  @classmethod
  def from_dict(cls, cfg: dict[str, Any]) -> "UNetConfig":
    """From a diffusers `UNet2DConditionModel` config dict."""
    n = len(cfg["down_block_types"])
    heads = cfg.get("num_attention_heads") or cfg.get("attention_head_dim", 8)
    fields = {f.name for f in dataclasses.fields(cls)}
    kwargs = {k: tuple(v) if isinstance(v, list) else v for k, v in cfg.items() if k in fields}
    return cls(**{**kwargs, "heads": _per_block(heads, n)})


def timestep_features(t: jax.Array, dim: int, flip: bool, shift: float) -> jax.Array:
  """Sinusoidal timestep features as diffusers' `get_timestep_embedding`: [N] -> [N, dim]."""
  half = dim // 2
  freqs = jnp.exp(-math.log(10000) * jnp.arange(half, dtype=jnp.float32) / (half - shift))
  args = t.astype(jnp.float32)[:, None] * freqs[None, :]
  emb = jnp.concatenate([jnp.sin(args), jnp.cos(args)], axis=-1)
  return jnp.concatenate([emb[:, half:], emb[:, :half]], axis=-1) if flip else emb


class CrossAttention(nn.Module):
  """diffusers' `Attention` in a transformer block: to_q / to_k / to_v without bias, to_out.0."""

  heads: int
  upcast: bool
  policy: Policy

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    c, dt = x.shape[-1], self.policy.dtype
    q = Dense(c, use_bias=False, dtype=dt, name="to_q")(x)
    k = Dense(c, use_bias=False, dtype=dt, name="to_k")(context)
    v = Dense(c, use_bias=False, dtype=dt, name="to_v")(context)
    out = sd_layers.attention(q, k, v, self.heads, self.policy, upcast=self.upcast)
    return Dense(c, dtype=dt, name="to_out_0")(out)


class TransformerBlock(nn.Module):
  """diffusers' `BasicTransformerBlock`: self-attention, cross-attention, GEGLU feed-forward,
  each after a LayerNorm and added back."""

  heads: int
  upcast: bool
  policy: Policy

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    c, dt, p = x.shape[-1], self.policy.dtype, self.policy
    h = LayerNorm(dtype=dt, name="norm1")(x)
    x = x + CrossAttention(self.heads, self.upcast, p, name="attn1")(h, h)
    h = LayerNorm(dtype=dt, name="norm2")(x)
    x = x + CrossAttention(self.heads, self.upcast, p, name="attn2")(h, context)
    h = LayerNorm(dtype=dt, name="norm3")(x)
    value, gate = jnp.split(Dense(8 * c, dtype=dt, name="ff_net_0_proj")(h), 2, axis=-1)
    return x + Dense(c, dtype=dt, name="ff_net_2")(value * jax.nn.gelu(gate, approximate=False))


class Transformer2D(nn.Module):
  """diffusers' `Transformer2DModel` (one block): GroupNorm, projection in (1×1 conv, or linear
  on the flattened pixels), the transformer block, projection out, plus the input."""

  heads: int
  linear: bool
  upcast: bool
  groups: int
  policy: Policy

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array) -> jax.Array:
    b, hgt, wid, c = x.shape
    dt = self.policy.dtype
    h = GroupNorm(self.groups, 1e-6, dt, name="norm")(x)
    if self.linear:
      h = Dense(c, dtype=dt, name="proj_in")(h.reshape(b, hgt * wid, c))
    else:
      h = Conv(c, kernel=1, dtype=dt, name="proj_in")(h).reshape(b, hgt * wid, c)
    block = sd_layers.remat(TransformerBlock, self.policy)
    h = block(self.heads, self.upcast, self.policy, name="transformer_blocks_0")(h, context)
    if self.linear:
      h = Dense(c, dtype=dt, name="proj_out")(h).reshape(b, hgt, wid, c)
    else:
      h = Conv(c, kernel=1, dtype=dt, name="proj_out")(h.reshape(b, hgt, wid, c))
    return h + x.astype(dt)


class UNet(nn.Module):
  """ε or v prediction of SD 1.x / 2.x (see the module docstring)."""

  config: UNetConfig
  policy: Policy = Policy()

  def _resnet(self, features: int, name: str) -> nn.Module:
    cls = sd_layers.remat(sd_layers.ResnetBlock, self.policy)
    return cls(features, self.config.norm_num_groups, self.config.norm_eps, self.policy,
               name=name)

  def _transformer(self, heads: int, name: str) -> nn.Module:
    cfg = self.config
    return Transformer2D(heads, cfg.use_linear_projection, cfg.upcast_attention,
                         cfg.norm_num_groups, self.policy, name=name)

  @nn.compact
  def __call__(self, z: jax.Array, t: jax.Array, context: jax.Array) -> jax.Array:
    """z `[B, h, w, C]`, t `[B]`, context `[B, L, D]` -> `[B, h, w, out_channels]`."""
    cfg, dt = self.config, self.policy.dtype
    chans = cfg.block_out_channels
    feats = timestep_features(t, chans[0], cfg.flip_sin_to_cos, cfg.freq_shift).astype(dt)
    temb = Dense(4 * chans[0], dtype=dt, name="time_embedding_linear_1")(feats)
    temb = Dense(4 * chans[0], dtype=dt, name="time_embedding_linear_2")(nn.silu(temb))
    context = context.astype(dt)
    h = Conv(chans[0], dtype=dt, name="conv_in")(z)
    skips = [h]
    for i, kind in enumerate(cfg.down_block_types):
      for j in range(cfg.layers_per_block):
        h = self._resnet(chans[i], f"down_blocks_{i}_resnets_{j}")(h, temb)
        if kind in _CROSS:
          h = self._transformer(cfg.heads[i], f"down_blocks_{i}_attentions_{j}")(h, context)
        skips.append(h)
      if i < len(chans) - 1:
        h = sd_layers.Downsample(chans[i], dtype=dt, name=f"down_blocks_{i}_downsamplers_0")(h)
        skips.append(h)
    h = self._resnet(chans[-1], "mid_block_resnets_0")(h, temb)
    h = self._transformer(cfg.heads[-1], "mid_block_attentions_0")(h, context)
    h = self._resnet(chans[-1], "mid_block_resnets_1")(h, temb)
    up_heads = cfg.heads[::-1]
    for i, kind in enumerate(cfg.up_block_types):
      out = chans[::-1][i]
      for j in range(cfg.layers_per_block + 1):
        h = jnp.concatenate([h, skips.pop().astype(dt)], axis=-1)
        h = self._resnet(out, f"up_blocks_{i}_resnets_{j}")(h, temb)
        if kind in _CROSS:
          h = self._transformer(up_heads[i], f"up_blocks_{i}_attentions_{j}")(h, context)
      if i < len(chans) - 1:
        h = sd_layers.Upsample(out, dtype=dt, name=f"up_blocks_{i}_upsamplers_0")(h)
    h = nn.silu(GroupNorm(cfg.norm_num_groups, cfg.norm_eps, dt, name="conv_norm_out")(h))
    return Conv(cfg.out_channels, dtype=dt, name="conv_out")(h)
