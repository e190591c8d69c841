"""VGG16 convolutional features (torchvision's `vgg16().features`) for the perceptual loss.

`VGG16Features` reproduces the 31 layers of torchvision's `features` Sequential, each output
named in `LAYERS` order (`LAYERS[i]` is `features[i]`): `conv1_1, relu1_1, conv1_2, relu1_2,
pool1, conv2_1, ..., relu5_3, pool5`. The perceptual loss of docs/method.md §4 uses relu2_2, i.e.
`features[:9]`, of ImageNet-normalised images.

Params are a dict `{conv1_1: {kernel [3, 3, Cin, Cout], bias [Cout]}, ..., conv5_3: ...}`,
applied as `VGG16Features().apply({"params": params}, x)`. Minimum image size: 1 pixel up to
relu1_2, 2 up to relu2_2, 2**k up to the k-th pool (16 for relu5_3, 32 for pool5); odd sizes
are floored by the 2x2 max pools exactly as in PyTorch.
"""

import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from upzeroir_jax.models import conv as conv_lib
from upzeroir_jax.models import flat_checkpoint, random_init

WIDTHS = ((64, 64), (128, 128), (256, 256, 256), (512, 512, 512), (512, 512, 512))


def _layer_names() -> tuple[str, ...]:
  names = []
  for block, widths in enumerate(WIDTHS, 1):
    for i in range(1, len(widths) + 1):
      names += [f"conv{block}_{i}", f"relu{block}_{i}"]
    names.append(f"pool{block}")
  return tuple(names)


LAYERS = _layer_names()
CONVS = tuple(name for name in LAYERS if name.startswith("conv"))
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
PERCEPTUAL_LAYER = "relu2_2"


CHECKPOINT_FILE = "vgg16.safetensors"


def converter(output: str = CHECKPOINT_FILE) -> str:
  """The command that writes a VGG16 checkpoint to `output` (from torchvision's ImageNet file)."""
  return f"python -m weights.convert_vgg --input=vgg16-397923af.pth --output={output}"


class VGG16Features(nn.Module):
  """torchvision VGG16 `features`, stopping after layer `last` (a name in `LAYERS`).

  `__call__(x [B, H, W, 3])` -> `(out, feats)`: `out` the output of `last`, `feats` a dict of
  every named layer output computed on the way. The input is used as given (no normalisation).
  """

  last: str = "pool5"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    if self.last not in LAYERS:
      raise ValueError(f"unknown VGG16 layer {self.last!r}; choose one of {', '.join(LAYERS)}")
    feats = {}
    x = x.astype(self.dtype)
    for name in LAYERS:
      if name.startswith("conv"):
        block = int(name[4])
        x = conv_lib.Conv(WIDTHS[block - 1][0], 3,
                          kernel_init=nn.initializers.variance_scaling(2.0, "fan_out", "normal"),
                          name=name)(x)
      elif name.startswith("relu"):
        x = nn.relu(x)
      else:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))
      feats[name] = x
      if name == self.last:
        break
    return x, feats


def init_random(key: jax.Array) -> dict:
  """Random VGG16 params (all 13 convs; He-normal kernels, zero biases as torchvision)."""
  example = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  return random_init.conv_net(key, VGG16Features().init, example)["params"]


def abstract_params() -> dict:
  """Shapes of the VGG16 params (`jax.ShapeDtypeStruct` leaves), for checking checkpoints."""
  example = jax.ShapeDtypeStruct((1, 32, 32, 3), jnp.float32)
  return jax.eval_shape(VGG16Features().init, jax.random.key(0), example)["params"]


def load(path: str | os.PathLike) -> dict:
  """Reads VGG16 params from a checkpoint written by `weights/convert_vgg.py`.

  Every tensor is checked against the architecture first (`weights_check`).

  Raises:
    flat_checkpoint.MissingCheckpointError: the file is absent (the message names the path and
      the commands that create it).
    flat_checkpoint.CheckpointError: the file is unreadable, not a VGG16 checkpoint, or a tensor is
      missing, unexpected, misshaped, not float or not finite (one line naming file and key).
  """
  tree, _ = flat_checkpoint.load(path, converter(os.fspath(path)), "vgg16", "VGG16",
                                 lambda _: abstract_params(), CHECKPOINT_FILE)
  return jax.tree.map(jnp.asarray, tree)


def imagenet_normalize(img: jax.Array) -> jax.Array:
  """(img - mean) / std with the ImageNet statistics; img `[..., 3]` in [0, 1]."""
  mean = np.asarray(IMAGENET_MEAN, np.float32)
  std = np.asarray(IMAGENET_STD, np.float32)
  return (img - mean) / std


def perceptual_features(params: dict, img: jax.Array) -> jax.Array:
  """relu2_2 (`features[:9]`) of the ImageNet-normalised image (docs/method.md §4, perceptual loss).

  Args:
    params: VGG16 params (`init_random` or `load`).
    img: `[B, H, W, 3]` float in [0, 1], H and W >= 2.

  Returns:
    `[B, H // 2, W // 2, 128]` float32.
  """
  if img.ndim != 4 or img.shape[-1] != 3:
    raise ValueError(f"expected images [B, H, W, 3], got shape {tuple(img.shape)}")
  out, _ = VGG16Features(last=PERCEPTUAL_LAYER).apply({"params": params},
                                                      imagenet_normalize(img))
  return out
