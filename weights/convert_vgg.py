r"""Converts torchvision's VGG16 state dict to our VGG16 features checkpoint.

  python -m weights.convert_vgg --input=vgg16-397923af.pth --output=vgg16.safetensors

`--input` is torchvision's ImageNet `vgg16` file
(https://download.pytorch.org/models/vgg16-397923af.pth); it is read with `torch.load`
(torchvision is not needed). Only `features.*` is kept; the classifier is dropped.
"""

import os
from collections.abc import Mapping

import numpy as np
from absl import app, flags, logging

from upzeroir_jax.models import flat_checkpoint, vgg
from weights import _torch_utils


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


def main(argv: list[str]) -> None:
  """Converts the files named by the flags."""
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  _torch_utils.require_files(flags.FLAGS.input)
  convert(flags.FLAGS.input, flags.FLAGS.output)


if __name__ == "__main__":
  # Flags are defined here, not at import, so converters can import each other's functions.
  flags.DEFINE_string("input", None, "torchvision vgg16 state dict (.pth).", required=True)
  flags.DEFINE_string("output", "vgg16.safetensors", "Checkpoint to write.")
  app.run(main)
