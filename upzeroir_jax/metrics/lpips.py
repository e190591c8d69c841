"""LPIPS v0.1 (Zhang et al., CVPR 2018), VGG16 and AlexNet variants, as the `lpips` package.

For images `a`, `b` in [0, 1] (the reported LPIPS of docs/method.md §9), following `lpips.LPIPS`
(version 0.1, `normalize=True`):
1. map to [-1, 1] (`2x - 1`), then the scaling layer `(x - shift) / scale` with
   shift (-0.030, -0.088, -0.188), scale (0.458, 0.448, 0.450);
2. trunk activations at five taps (VGG16: relu1_2, relu2_2, relu3_3, relu4_3, relu5_3;
   AlexNet: relu1 ... relu5);
3. unit-normalise each activation over channels, `f / (||f|| + 1e-10)`;
4. per tap, the 1x1 linear layer (no bias) on the squared difference, averaged over space;
5. sum over the five taps.

Params: `{"net": trunk params (models/vgg.py or models/alexnet.py layout),
"lin": {"lin0": [C0], ..., "lin4": [C4]}}`. Minimum image size: 16 (vgg) / 31 (alex) pixels.
"""

import os

import jax
import jax.numpy as jnp
import numpy as np

from upzeroir_jax.metrics import common
from upzeroir_jax.models import alexnet, flat_checkpoint, random_init, vgg

SHIFT = (-0.030, -0.088, -0.188)
SCALE = (0.458, 0.448, 0.450)
# net -> (taps, channels per tap, minimum image size)
NETS = {
  "vgg": (("relu1_2", "relu2_2", "relu3_3", "relu4_3", "relu5_3"), (64, 128, 256, 512, 512), 16),
  "alex": (("relu1", "relu2", "relu3", "relu4", "relu5"), (64, 192, 384, 256, 256), 31),
}
CHECKPOINT_FILE = "lpips_vgg.safetensors"


def converter(output: str = CHECKPOINT_FILE) -> str:
  """The command that writes an LPIPS-VGG checkpoint to `output` (`--net=alex
  --backbone=alexnet-owt-7be5be79.pth` writes the AlexNet variant)."""
  return ("python -m weights.convert_lpips --net=vgg --backbone=vgg16-397923af.pth "
          f"--output={output}")


def _check_net(net: str) -> None:
  if net not in NETS:
    raise ValueError(f"unknown LPIPS net {net!r}; choose one of {', '.join(NETS)}")


def _trunk(net: str):
  last = NETS[net][0][-1]
  return vgg.VGG16Features(last=last) if net == "vgg" else alexnet.AlexNetFeatures(last=last)


def init_random(key: jax.Array, net: str = "vgg") -> dict:
  """LPIPS params with a random trunk and random non-negative linear weights (for tests)."""
  _check_net(net)
  trunk_key, lin_key = jax.random.split(key)
  size = NETS[net][2]
  trunk = random_init.conv_net(trunk_key, _trunk(net).init,
                               jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32))["params"]
  rng = random_init.numpy_rng(lin_key)
  lin = {f"lin{i}": jnp.asarray(rng.random(c, np.float32) / c)
         for i, c in enumerate(NETS[net][1])}
  return {"net": trunk, "lin": lin}


def abstract_params(net: str = "vgg") -> dict:
  """Shapes of the LPIPS params of `net` (`jax.ShapeDtypeStruct` leaves), for checking files."""
  _check_net(net)
  size = NETS[net][2]
  example = jax.ShapeDtypeStruct((1, size, size, 3), jnp.float32)
  trunk = jax.eval_shape(_trunk(net).init, jax.random.key(0), example)["params"]
  lin = {f"lin{i}": jax.ShapeDtypeStruct((c,), jnp.float32) for i, c in enumerate(NETS[net][1])}
  return {"net": trunk, "lin": lin}


def _expected(path: str | os.PathLike, metadata: dict[str, str]) -> dict:
  if metadata.get("net") not in NETS:
    raise flat_checkpoint.CheckpointError(
        f"{os.fspath(path)}: LPIPS checkpoint for an unknown net {metadata.get('net')!r}; "
        f"rebuild it with `{converter(os.fspath(path))}`")
  return abstract_params(metadata["net"])


def load(path: str | os.PathLike) -> dict:
  """Reads LPIPS params written by `weights/convert_lpips.py`, checked against the architecture.

  Raises:
    flat_checkpoint.MissingCheckpointError: the file is absent (the message names the path and
      the commands that create it).
    flat_checkpoint.CheckpointError: the file is unreadable, not an LPIPS checkpoint, or a tensor
      is missing, unexpected, misshaped, not float or not finite (one line naming file and key).
  """
  tree, _ = flat_checkpoint.load(path, converter(os.fspath(path)), "lpips", "LPIPS",
                                 lambda meta: _expected(path, meta), CHECKPOINT_FILE)
  return jax.tree.map(jnp.asarray, tree)


def _unit_normalize(f: jax.Array) -> jax.Array:
  return f / (jnp.sqrt(jnp.sum(f * f, axis=-1, keepdims=True)) + 1e-10)


def lpips(params: dict, a: jax.Array, b: jax.Array, net: str = "vgg") -> jax.Array:
  """LPIPS distance between image batches (lower is more similar), `[B]`.

  Args:
    params: `init_random(key, net)` or `load(path)` of the same `net`.
    a: `[B, H, W, 3]` float in [0, 1].
    b: same shape as `a`.
    net: "vgg" or "alex" (static under jit).

  Raises:
    common.MetricInputError: images of different shapes, wrong rank or below the minimum size.
    ValueError: unknown `net`, or params of the other net.
  """
  _check_net(net)
  taps, channels, min_size = NETS[net]
  if a.shape != b.shape or a.ndim != 4 or a.shape[-1] != 3:
    raise common.MetricInputError(f"expected two images [B, H, W, 3] of one shape, got "
                                  f"{tuple(a.shape)} and {tuple(b.shape)}")
  if min(a.shape[1:3]) < min_size:
    raise common.MetricInputError(f"LPIPS-{net} needs images of at least {min_size}x{min_size} "
                                  f"pixels, got {a.shape[1]}x{a.shape[2]}")
  if params["lin"]["lin1"].shape != (channels[1],):
    raise ValueError(f"these LPIPS params are not for net={net!r}")
  x = jnp.concatenate([a, b]).astype(jnp.float32) * 2.0 - 1.0
  x = (x - np.asarray(SHIFT, np.float32)) / np.asarray(SCALE, np.float32)
  _, feats = _trunk(net).apply({"params": params["net"]}, x)
  total = jnp.zeros(a.shape[0], jnp.float32)
  for i, tap in enumerate(taps):
    fa, fb = jnp.split(feats[tap].astype(jnp.float32), 2)
    diff = (_unit_normalize(fa) - _unit_normalize(fb)) ** 2
    total = total + jnp.mean(diff @ params["lin"][f"lin{i}"], axis=(1, 2))
  return total
