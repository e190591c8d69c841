r"""Builds an LPIPS checkpoint: a torchvision trunk plus the `lpips` package's linear layers.

  python -m weights.convert_lpips --net=vgg --backbone=vgg16-397923af.pth \
      --output=lpips_vgg.safetensors
  python -m weights.convert_lpips --net=alex --backbone=alexnet-owt-7be5be79.pth \
      --output=lpips_alex.safetensors

`--backbone` is torchvision's ImageNet state dict
(https://download.pytorch.org/models/vgg16-397923af.pth,
https://download.pytorch.org/models/alexnet-owt-7be5be79.pth — the trunks `lpips.LPIPS`
loads through torchvision), read with `torch.load`. `--linear` defaults to the v0.1 linear
weights shipped inside the installed `lpips` package (`lpips/weights/v0.1/<net>.pth`, state
dict `lin<k>.model.1.weight [1, C, 1, 1]`); the package is located, never imported (importing
it imports torchvision).
"""

import importlib.util
import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np
from absl import flags, logging

from upzeroir_jax import cli
from upzeroir_jax.metrics import lpips
from upzeroir_jax.models import alexnet, flat_checkpoint
from weights import _torch_utils, convert_vgg

PROG = "weights.convert_lpips"
USAGE = __doc__


def package_linear_weights(net: str) -> str:
  """Path of `lpips/weights/v0.1/<net>.pth` in the installed `lpips` package."""
  spec = importlib.util.find_spec("lpips")
  if spec is None or not spec.submodule_search_locations:
    raise flat_checkpoint.MissingCheckpointError(
        "the lpips package is not installed; `pip install --no-deps lpips==0.1.4` or pass --linear")
  package_dir = next(iter(spec.submodule_search_locations))
  return os.path.join(package_dir, "weights", "v0.1", f"{net}.pth")


def convert_alexnet(state: Mapping[str, np.ndarray], prefix: str = "features.") -> dict:
  """torchvision `alexnet` state dict -> `AlexNetFeatures` params."""
  return {name: _torch_utils.conv(state, f"{prefix}{alexnet.LAYERS.index(name)}")
          for name in alexnet.CONVS}


def convert_linear(state: Mapping[str, np.ndarray], net: str) -> dict:
  """`lin<k>.model.1.weight [1, C, 1, 1]` -> `{"lin<k>": [C]}`, checked against `net`."""
  lin = {}
  for k, channels in enumerate(lpips.NETS[net][1]):
    weight = np.reshape(state[f"lin{k}.model.1.weight"], -1)
    if weight.shape != (channels,):
      raise ValueError(f"lin{k} has {weight.size} channels, LPIPS-{net} expects {channels}")
    lin[f"lin{k}"] = weight
  return lin


def convert(net: str, backbone: str, output: str, linear: str | None = None) -> None:
  """Writes the LPIPS-`net` checkpoint from a torchvision trunk and the linear weights."""
  linear = linear or package_linear_weights(net)
  state = _torch_utils.read_state_dict(backbone)
  trunk = convert_vgg.convert_features(state) if net == "vgg" else convert_alexnet(state)
  params = {"net": trunk, "lin": convert_linear(_torch_utils.read_state_dict(linear), net)}
  flat_checkpoint.save(output, params, {"model": "lpips", "net": net, "version": "0.1",
                                        "backbone": os.path.basename(backbone),
                                        "linear": os.path.basename(linear)})
  logging.info("wrote LPIPS-%s (%s + %s) to %s", net, backbone, linear, output)


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of weights.convert_lpips on `fv`."""
  flags.DEFINE_enum("net", "vgg", list(lpips.NETS), "LPIPS trunk.", flag_values=fv)
  flags.DEFINE_string("backbone", None, "torchvision vgg16 / alexnet state dict (.pth).",
                      flag_values=fv, required=True)
  flags.DEFINE_string("linear", None,
                      "LPIPS linear weights (.pth); default: the lpips package's v0.1.",
                      flag_values=fv)
  flags.DEFINE_string("output", None, "Checkpoint to write; default lpips_<net>.safetensors.",
                      flag_values=fv)
  return fv


def _main(fv: flags.FlagValues) -> int:
  _torch_utils.require_files(backbone=fv.backbone, linear=fv.linear)
  convert(fv.net, fv.backbone, fv.output or f"lpips_{fv.net}.safetensors", fv.linear)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs weights.convert_lpips with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
