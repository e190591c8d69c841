"""PCDM, its plain-ResBlocks ablation, and the two discriminators (docs/method.md §4, §5, §8).

PCDM maps the decoded estimate x̂0 `[B, H, W, 3]` to a synthetic degraded image ŷ that should
look like the input y. It is a small conv net whose layers are modulated (FiLM) by the
generalized-Gaussian statistics of x̂0 and y (docs/method.md §4, Eq. 11):

  θ   = [log α, log β of GGD(x̂0) per RGB channel, the same of GGD(y)]        (12 numbers)
  h_k = LeakyReLU(FiLM_k(Conv_k(h_{k−1}), θ)),   FiLM_k(h) = h·(1 + γ_k(θ)) + δ_k(θ)
  ŷ   = Conv1x1(h_3) + x̂0 · w_skip

Choices where docs/method.md is silent [ours]:
- θ holds log α and log β (scale-free, O(1) numbers) rather than α, β themselves.
- "linear layers": Dense(12 → `film_hidden`) – LeakyReLU – Dense(→ Σ 2·width), one shared
  embedding producing every layer's (γ_k, δ_k). The last Dense is zero-initialised, so a fresh
  PCDM is exactly the unconditioned LD-RPS net and the conditioning is learned per image.
- Convs (`models.conv.Conv`, whose gradients run fast in the sampler's loop on XLA:CPU) use
  Kaiming-normal (fan-in, gain √2) kernels and zero biases as LD-RPS; the LeakyReLU
  slope is torch's default 0.01 (`nn.LeakyReLU()` in LD-RPS).
- The discriminators return logits; the sigmoid of docs/method.md §4 is folded into the BCE
  (`losses.bce_with_logits`), the numerically stable form of the same loss.

`ResBlocksNet` is the "w/o PCDM" ablation (docs/method.md §8): a stem conv, plain residual blocks of
width `features[0]`, no GGD conditioning, the same `Conv1x1 + x̂0·w_skip` output; the number of
blocks is chosen so its parameter count is closest to PCDM's (`resblocks_count`).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

from upzeroir_jax.models import conv as conv_lib
from upzeroir_jax.physics import ggd

LEAKY_SLOPE = 0.01
N_STATS = 12  # log α, log β for 3 channels of x̂0 and 3 of y.


def _kaiming() -> nn.initializers.Initializer:
  return nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def _conv(width: int, kernel: int, stride: int = 1, name: str | None = None) -> conv_lib.Conv:
  return conv_lib.Conv(width, kernel, stride, kernel_init=_kaiming(), name=name)


def image_stats(img: jax.Array) -> jax.Array:
  """log α and log β of the per-channel GGD fit of an image (docs/method.md §2), `[B, 6]`.

  img: `[B, H, W, 3]`. The fit is differentiable, so gradients reach img.
  """
  alpha, beta = ggd.fit(img, axis=(1, 2))
  return jnp.concatenate([jnp.log(alpha), jnp.log(beta)], axis=-1)


class PCDM(nn.Module):
  """GGD-conditioned FiLM conv net: (x̂0, θ) -> ŷ (docs/method.md §4, Eq. 11).

  Attributes:
    features: conv widths (64, 128, 256 [docs/method.md §4]).
    film_hidden: width of the conditioning embedding.
    slope: LeakyReLU negative slope.

  `__call__(x [B, H, W, 3], theta [B, 12]) -> ŷ [B, H, W, 3]`; θ from `condition`.
  """

  features: tuple[int, ...] = (64, 128, 256)
  film_hidden: int = 64
  slope: float = LEAKY_SLOPE

  @nn.compact
  def __call__(self, x: jax.Array, theta: jax.Array) -> jax.Array:
    e = nn.leaky_relu(nn.Dense(self.film_hidden, name="embed")(theta), self.slope)
    film = nn.Dense(2 * sum(self.features), kernel_init=nn.initializers.zeros, name="film")(e)
    h, offset = x, 0
    for k, width in enumerate(self.features):
      gamma = film[:, None, None, offset : offset + width]
      delta = film[:, None, None, offset + width : offset + 2 * width]
      offset += 2 * width
      h = _conv(width, 3, name=f"conv{k + 1}")(h)
      h = nn.leaky_relu(h * (1.0 + gamma) + delta, self.slope)
    w_skip = self.param("w_skip", nn.initializers.ones, (3,))
    return _conv(3, 1, name="head")(h) + x * w_skip


def condition(x0: jax.Array, y_stats: jax.Array) -> jax.Array:
  """θ = [stats(x̂0), stats(y)] `[B, 12]` (docs/method.md §4); y_stats `[B, 6]` from
  `image_stats`."""
  return jnp.concatenate([image_stats(x0), y_stats], axis=-1)


class ResBlocksNet(nn.Module):
  """The "w/o PCDM" ablation (docs/method.md §8): plain residual conv blocks, no conditioning.

  `__call__(x [B, H, W, 3], theta) -> ŷ`; theta is accepted for a common signature and ignored.
  Block: `h + Conv3x3(LReLU(Conv3x3(LReLU(h))))` at width `width`.
  """

  width: int = 64
  blocks: int = 6
  slope: float = LEAKY_SLOPE

  @nn.compact
  def __call__(self, x: jax.Array, theta: jax.Array | None = None) -> jax.Array:
    del theta
    h = _conv(self.width, 3, name="stem")(x)
    for b in range(self.blocks):
      r = _conv(self.width, 3, name=f"block{b}_a")(nn.leaky_relu(h, self.slope))
      h = h + _conv(self.width, 3, name=f"block{b}_b")(nn.leaky_relu(r, self.slope))
    w_skip = self.param("w_skip", nn.initializers.ones, (3,))
    return _conv(3, 1, name="head")(nn.leaky_relu(h, self.slope)) + x * w_skip


class Discriminator(nn.Module):
  """Conv(3→64,s2)–LReLU–Conv(64→128,s2)–LReLU–Conv(128→256,s2)–LReLU–Conv1x1(256→1).

  docs/method.md §4 [LD-RPS GANLoss]: 3×3 kernels, stride 2, padding 1. Returns patch logits
  `[B, ⌈H/8⌉, ⌈W/8⌉, 1]` (the sigmoid lives in the loss).
  """

  features: tuple[int, ...] = (64, 128, 256)
  slope: float = LEAKY_SLOPE

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for k, width in enumerate(self.features):
      x = nn.leaky_relu(_conv(width, 3, stride=2, name=f"conv{k + 1}")(x), self.slope)
    return _conv(1, 1, name="head")(x)


def param_count(params) -> int:
  """Number of scalars in a params pytree."""
  return sum(int(p.size) for p in jax.tree.leaves(params))


def resblocks_count(features: tuple[int, ...], film_hidden: int = 64) -> int:
  """Number of residual blocks (width `features[0]`) whose net is closest in size to PCDM."""
  w, cin = features[0], 3
  pcdm = film_hidden * (N_STATS + 1) + (film_hidden + 1) * 2 * sum(features) + 3
  for width in features:
    pcdm += 9 * cin * width + width
    cin = width
  pcdm += 3 * cin + 3
  fixed = 9 * 3 * w + w + 3 * w + 3 + 3
  block = 2 * (9 * w * w + w)
  return max(1, round((pcdm - fixed) / block))


def make(
  variant: str, features: tuple[int, ...] = (64, 128, 256), slope: float = LEAKY_SLOPE
) -> nn.Module:
  """The degradation model of `variant`: "pcdm" (docs/method.md §4) or "resblocks" (docs/method.md
  §8)."""
  if variant == "pcdm":
    return PCDM(features=features, slope=slope)
  if variant == "resblocks":
    return ResBlocksNet(width=features[0], blocks=resblocks_count(features), slope=slope)
  raise ValueError(f"unknown PCDM variant {variant!r}; use 'pcdm' or 'resblocks'")


def init(module: nn.Module, key: jax.Array) -> dict:
  """Fresh params of a degradation model or discriminator (re-initialised per image [LD-RPS])."""
  x = jnp.zeros((1, 8, 8, 3), jnp.float32)
  if isinstance(module, Discriminator):
    return module.init(key, x)["params"]
  return module.init(key, x, jnp.zeros((1, N_STATS), jnp.float32))["params"]
