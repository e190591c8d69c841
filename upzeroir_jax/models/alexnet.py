"""AlexNet convolutional features (torchvision's `alexnet().features`), the LPIPS-Alex trunk.

`LAYERS[i]` names torchvision's `features[i]`: `conv1 (11x11/4, pad 2), relu1, pool1 (3x3/2),
conv2 (5x5, pad 2), relu2, pool2, conv3, relu3, conv4, relu4, conv5 (3x3, pad 1), relu5,
pool5`. Params: `{conv1: {kernel [kh, kw, Cin, Cout], bias [Cout]}, ..., conv5: ...}`.
Minimum image size: 7 pixels up to relu1, 15 up to relu2, 31 up to relu5 (the 3x3 max pools
have no padding, as in PyTorch).
"""

import flax.linen as nn
import jax
import jax.numpy as jnp

# name -> (channels, kernel, stride, padding) of each conv.
CONVS = {
  "conv1": (64, 11, 4, 2),
  "conv2": (192, 5, 1, 2),
  "conv3": (384, 3, 1, 1),
  "conv4": (256, 3, 1, 1),
  "conv5": (256, 3, 1, 1),
}
LAYERS = (
  "conv1",
  "relu1",
  "pool1",
  "conv2",
  "relu2",
  "pool2",
  "conv3",
  "relu3",
  "conv4",
  "relu4",
  "conv5",
  "relu5",
  "pool5",
)


class AlexNetFeatures(nn.Module):
  """torchvision AlexNet `features`, stopping after layer `last` (a name in `LAYERS`).

  `__call__(x [B, H, W, 3])` -> `(out, feats)`, `feats` every named layer output computed.
  The input is used as given (no normalisation).
  """

  last: str = "pool5"
  dtype: jnp.dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    if self.last not in LAYERS:
      raise ValueError(f"unknown AlexNet layer {self.last!r}; choose one of {', '.join(LAYERS)}")
    feats = {}
    x = x.astype(self.dtype)
    for name in LAYERS:
      if name in CONVS:
        width, kernel, stride, pad = CONVS[name]
        x = nn.Conv(
          width,
          (kernel, kernel),
          strides=stride,
          padding=((pad, pad), (pad, pad)),
          dtype=self.dtype,
          name=name,
        )(x)
      elif name.startswith("relu"):
        x = nn.relu(x)
      else:
        x = nn.max_pool(x, (3, 3), strides=(2, 2))
      feats[name] = x
      if name == self.last:
        break
    return x, feats
