"""ResNet-50 (torchvision layout, v1.5: stride on the 3x3 conv) as an inference-only encoder.

Used by ARNIQA (`models/arniqa.py`) as its image encoder. The module names follow torchvision's
so that the converters map keys one to one: `conv1`, `bn1`, then blocks `layer{1-4}_{i}` each
with `conv1/bn1/conv2/bn2/conv3/bn3` and, in the first block of a stage,
`downsample_conv/downsample_bn` (torchvision's `downsample.0/.1`). BatchNorm uses its running
statistics (eps 1e-5), so the variables are `{"params": ..., "batch_stats": ...}`.

Any image size >= 1 pixel works (the last stage sees ceil(H / 32) rows; global average pooling
makes the output size independent of the input).
"""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp

from upzeroir_jax.models import random_init

STAGES = ((64, 3, 1), (128, 4, 2), (256, 6, 2), (512, 3, 2))  # (width, blocks, stride)
EXPANSION = 4
_KERNEL_INIT = nn.initializers.variance_scaling(2.0, "fan_out", "normal")


class Bottleneck(nn.Module):
  """torchvision `Bottleneck`: 1x1 -> 3x3 (stride) -> 1x1 (x4 channels), residual, ReLU."""

  width: int
  strides: int = 1
  downsample: bool = False
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    conv = functools.partial(nn.Conv, use_bias=False, dtype=self.dtype, kernel_init=_KERNEL_INIT)
    norm = functools.partial(nn.BatchNorm, use_running_average=True, epsilon=1e-5, dtype=self.dtype)
    y = nn.relu(norm(name="bn1")(conv(self.width, (1, 1), name="conv1")(x)))
    y = conv(self.width, (3, 3), strides=self.strides, padding=((1, 1), (1, 1)), name="conv2")(y)
    y = nn.relu(norm(name="bn2")(y))
    y = norm(name="bn3")(conv(self.width * EXPANSION, (1, 1), name="conv3")(y))
    if self.downsample:
      x = conv(self.width * EXPANSION, (1, 1), strides=self.strides, name="downsample_conv")(x)
      x = norm(name="downsample_bn")(x)
    return nn.relu(x + y)


class ResNet50(nn.Module):
  """torchvision `resnet50` without its classifier.

  `__call__(x [B, H, W, 3])` (already normalised) -> `(pooled [B, 2048], feats)` with `feats`
  holding `stem` (after the max pool), `layer1` ... `layer4` and `pool` (= pooled).
  """

  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    feats = {}
    x = nn.Conv(
      64,
      (7, 7),
      strides=2,
      padding=((3, 3), (3, 3)),
      use_bias=False,
      dtype=self.dtype,
      kernel_init=_KERNEL_INIT,
      name="conv1",
    )(x.astype(self.dtype))
    x = nn.BatchNorm(use_running_average=True, epsilon=1e-5, dtype=self.dtype, name="bn1")(x)
    x = nn.max_pool(nn.relu(x), (3, 3), strides=(2, 2), padding=((1, 1), (1, 1)))
    feats["stem"] = x
    for stage, (width, blocks, strides) in enumerate(STAGES, 1):
      for i in range(blocks):
        x = Bottleneck(
          width,
          strides if i == 0 else 1,
          downsample=i == 0,
          dtype=self.dtype,
          name=f"layer{stage}_{i}",
        )(x)
      feats[f"layer{stage}"] = x
    pooled = jnp.mean(x.astype(jnp.float32), axis=(1, 2))
    feats["pool"] = pooled
    return pooled, feats


def init_random(key: jax.Array) -> dict:
  """Random ResNet-50 variables `{"params", "batch_stats"}` (torchvision's initialisation)."""
  return random_init.conv_net(key, ResNet50().init, jax.ShapeDtypeStruct((1, 32, 32, 3),
                                                                          jnp.float32))
