"""Layers shared by the Stable Diffusion UNet, VAE and text encoder (`unet`, `vae`,
`clip_text`), Flax linen, NHWC.

`Policy` is the numerics of a network: parameters stay float32 and are cast to the compute
dtype where used; group and layer norms compute their statistics in float32; attention runs
through `jax.nn.dot_product_attention` with a selectable implementation ("xla", "cudnn", or None:
JAX chooses).
Convolution kernels are stored `[kh, kw, Cin, Cout]` (HWIO, the layout of the NHWC
convolution) and run through `conv.conv`, whose gradients take the forms XLA:CPU runs fast.

Parameter names follow the PyTorch modules of diffusers / transformers (`down_blocks_0` for
`down_blocks.0`), so `sd_params` maps a state dict onto them by renaming.
"""

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from upzeroir_jax.models import conv as conv_lib


@dataclasses.dataclass(frozen=True)
class Policy:
  """How a network computes.

  Attributes:
    dtype: compute dtype (float32, or bfloat16); parameters stay float32.
    attention: `jax.nn.dot_product_attention` implementation, "xla", "cudnn" or None (JAX
      chooses).
    remat: recompute each block's activations in the backward pass (less memory).
  """

  dtype: Any = jnp.float32
  attention: str | None = "xla"
  remat: bool = False


def remat(cls: type, policy: Policy) -> type:
  """`cls` wrapped in `nn.remat` when the policy asks for per-block rematerialisation."""
  return nn.remat(cls) if policy.remat else cls


class Conv(nn.Module):
  """k×k convolution with a bias: kernel `[k, k, Cin, features]` (HWIO), symmetric padding
  `padding` (default k // 2), or `((top, bottom), (left, right))`."""

  features: int
  kernel: int = 3
  stride: int = 1
  padding: Any = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    k = self.kernel
    w = self.param("kernel", nn.initializers.lecun_normal(), (k, k, x.shape[-1], self.features))
    b = self.param("bias", nn.initializers.zeros, (self.features,))
    pad = k // 2 if self.padding is None else self.padding
    x = x.astype(self.dtype)
    return conv_lib.conv(x, w.astype(self.dtype), self.stride, pad) + b.astype(self.dtype)


class Dense(nn.Module):
  """y = x·W + b with W `[in, features]` stored float32 and cast to `dtype`."""

  features: int
  use_bias: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    w = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    y = x.astype(self.dtype) @ w.astype(self.dtype)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(self.dtype)
    return y


def _normalize(module: nn.Module, x: jax.Array, groups: int, eps: float) -> jax.Array:
  """(x − mean) / √(var + eps) · scale + bias, the statistics per sample over its pixels and the
  channels of each of `groups` channel groups (1 group and no pixel axes: a layer norm over the
  last axis); the module's per-channel `scale` and `bias`; float32 statistics, output in
  `module.dtype`.

  As Flax's norms compute it: the variance is E[x²] − E[x]², and the statistics are spread back
  to the channels before normalising x in its own layout. Its gradient takes about 0.6× the
  time of the two-pass variance normalised in the grouped layout (a 256²×128 GroupNorm on a
  2-core CPU).
  """
  c = x.shape[-1]
  scale = module.param("scale", nn.initializers.ones, (c,))
  bias = module.param("bias", nn.initializers.zeros, (c,))
  x = x.astype(jnp.float32)
  if groups > 1:
    g, axes = x.reshape(*x.shape[:-1], groups, c // groups), (*range(1, x.ndim - 1), x.ndim)
    per_channel = lambda s: jnp.repeat(s.reshape(*s.shape[:-2], groups), c // groups, axis=-1)
  else:
    g, axes, per_channel = x, (x.ndim - 1,), lambda s: s
  mean = g.mean(axes, keepdims=True)
  var = jnp.maximum(jnp.square(g).mean(axes, keepdims=True) - jnp.square(mean), 0.0)
  mul = per_channel(jax.lax.rsqrt(var + eps)) * scale
  return ((x - per_channel(mean)) * mul + bias).astype(module.dtype)


class GroupNorm(nn.Module):
  """Group normalisation over (H, W, C / groups) per group, as `torch.nn.GroupNorm`."""

  groups: int
  eps: float
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return _normalize(self, x, self.groups, self.eps)


class LayerNorm(nn.Module):
  """Layer normalisation over the last axis, as `torch.nn.LayerNorm`."""

  eps: float = 1e-5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return _normalize(self, x, 1, self.eps)


def attention(q: jax.Array, k: jax.Array, v: jax.Array, heads: int, policy: Policy,
              causal: bool = False, upcast: bool = False) -> jax.Array:
  """softmax(q·kᵀ/√d)·v over `heads` heads: q `[B, T, heads·d]`, k, v `[B, S, heads·d]` ->
  `[B, T, heads·d]`. `upcast` runs it in float32 whatever the compute dtype."""
  b, t, _ = q.shape
  dtype = jnp.float32 if upcast else q.dtype
  q, k, v = (a.reshape(a.shape[0], a.shape[1], heads, -1).astype(dtype) for a in (q, k, v))
  out = jax.nn.dot_product_attention(q, k, v, is_causal=causal, implementation=policy.attention)
  return out.reshape(b, t, -1).astype(policy.dtype)


class ResnetBlock(nn.Module):
  """diffusers' `ResnetBlock2D`: GroupNorm–SiLU–conv twice, the timestep embedding (if any)
  added between, and a 1×1 shortcut where the channel count changes."""

  features: int
  groups: int
  eps: float
  policy: Policy

  @nn.compact
  def __call__(self, x: jax.Array, temb: jax.Array | None = None) -> jax.Array:
    dt = self.policy.dtype
    h = Conv(self.features, dtype=dt, name="conv1")(
      nn.silu(GroupNorm(self.groups, self.eps, dt, name="norm1")(x)))
    if temb is not None:
      h = h + Dense(self.features, dtype=dt, name="time_emb_proj")(nn.silu(temb))[:, None, None]
    h = GroupNorm(self.groups, self.eps, dt, name="norm2")(h)
    h = Conv(self.features, dtype=dt, name="conv2")(nn.silu(h))
    if x.shape[-1] != self.features:
      x = Conv(self.features, kernel=1, dtype=dt, name="conv_shortcut")(x)
    return x.astype(dt) + h


class Upsample(nn.Module):
  """Nearest 2× upsampling, then a 3×3 convolution (`upsamplers.0`)."""

  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return Conv(self.features, dtype=self.dtype, name="conv")(conv_lib.upsample_nearest2x(x))


class Downsample(nn.Module):
  """3×3 convolution of stride 2 (`downsamplers.0`): padding 1 on every side (UNet), or only
  bottom and right (`asymmetric`, the VAE encoder's)."""

  features: int
  asymmetric: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    pad = ((0, 1), (0, 1)) if self.asymmetric else 1
    return Conv(self.features, stride=2, padding=pad, dtype=self.dtype, name="conv")(x)
