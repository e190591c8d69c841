r"""Converts torchvision's VGG16 state dict to our VGG16 features checkpoint.

  python -m weights.convert_vgg --input=vgg16-397923af.pth --output=vgg16.safetensors

`--input` is torchvision's ImageNet `vgg16` file
(https://download.pytorch.org/models/vgg16-397923af.pth); it is read with `torch.load`
(torchvision is not needed). Only `features.*` is kept; the classifier is dropped.
"""

import os
import sys
from collections.abc import Mapping, Sequence

import numpy as np
from absl import flags, logging

from upzeroir_jax import cli
from upzeroir_jax.models import flat_checkpoint, vgg
from weights import _torch_utils

PROG = "weights.convert_vgg"
USAGE = __doc__


def convert_features(state: Mapping[str, np.ndarray], prefix: str = "features.") -> dict:
  """torchvision `vgg16` state dict -> `VGG16Features` params (`features.{i}` by layer index)."""
  return {name: _torch_utils.conv(state, f"{prefix}{vgg.LAYERS.index(name)}")
          for name in vgg.CONVS}


def convert(input_path: str | os.PathLike, output_path: str | os.PathLike) -> None:
  """Reads the torchvision `.pth` at `input_path`, writes our checkpoint to `output_path`."""
  params = convert_features(_torch_utils.read_state_dict(input_path))
  flat_checkpoint.save(output_path, params,
                       {"model": "vgg16", "source": os.path.basename(os.fspath(input_path))})
  logging.info("wrote VGG16 features from %s to %s", input_path, output_path)


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of weights.convert_vgg on `fv`."""
  flags.DEFINE_string("input", None, "torchvision vgg16 state dict (.pth).", flag_values=fv,
                      required=True)
  flags.DEFINE_string("output", "vgg16.safetensors", "Checkpoint to write.", flag_values=fv)
  return fv


def _main(fv: flags.FlagValues) -> int:
  _torch_utils.require_files(input=fv.input)
  convert(fv.input, fv.output)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs weights.convert_vgg with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
