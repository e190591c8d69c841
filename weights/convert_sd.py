r"""Converts a Stable Diffusion checkpoint (diffusers PyTorch) to our orbax format.

  python -m weights.convert_sd --source=stabilityai/stable-diffusion-2-1-base --output=sd21_base
  python -m weights.convert_sd --source=/path/to/diffusers_folder --output=sd21_base

`--source` is a diffusers folder (`unet/`, `vae/`, `text_encoder/`, `tokenizer/`, `scheduler/`;
safetensors or .bin) or a hub id (downloaded by huggingface_hub). `--output` receives
`sd_config.json`, `params/` (orbax) and `tokenizer/`; `upzeroir_jax.models.sd.load(output)` then
needs neither torch nor the network. SD 1.x and 2.x, ε and v prediction.
"""

import pathlib

import jax.numpy as jnp
from absl import app, flags

from upzeroir_jax.models import sd, sd_convert


def convert(source: str, output: str | pathlib.Path, dtype: str = "float32") -> None:
  """Reads the PyTorch checkpoint `source` and writes our checkpoint folder `output`.

  Args:
    source: diffusers folder or hub id.
    output: folder to write.
    dtype: "float32", or "bfloat16" to store the parameters at half the size.

  Raises:
    sd.WeightsError: `source` cannot be read (one line says what to pass instead).
  """
  path = pathlib.Path(source).expanduser()
  folder = path if path.is_dir() else sd_convert.download(source)
  config, params, tokenizer = sd_convert.read_diffusers(folder)
  if dtype != "float32":
    params = sd.cast(params, jnp.dtype(dtype))
  sd_convert.write_checkpoint(output, config, params, tokenizer)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {argv[1:]}")
  try:
    convert(flags.FLAGS.source, flags.FLAGS.output, flags.FLAGS.dtype)
  except sd.WeightsError as e:
    raise app.UsageError(str(e)) from None
  print(f"wrote {flags.FLAGS.output}")


if __name__ == "__main__":
  # Flags are defined here, not at import, so converters can import each other's functions.
  flags.DEFINE_string("source", None, "diffusers folder or hub id.", required=True)
  flags.DEFINE_string("output", None, "Folder for the converted checkpoint.", required=True)
  flags.DEFINE_enum("dtype", "float32", ["float32", "bfloat16"], "Stored parameter dtype.")
  app.run(main)
